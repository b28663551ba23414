"""A colo in five network namespaces, for running twinpath against real kernel paths.

    trader ── int ── gw (twinpath) ── link A ── carA ── exch
                                    └─ link B ── carB ──┘

Namespaces are named f"{lab}-{role}", where a lab name is "tp" + 4 hex digits
(e.g. "tp3f9a"), so several labs can coexist and leftovers are recognisable.
Everything lives in 198.18.0.0/15 (RFC 2544 benchmarking space), plus the
exchange destinations 198.19.0.0/24 with the order gateway at 198.19.0.10 on
exch's loopback.

gw routes the exchange prefix via A (metric 100) and B (metric 200); that is
what plain kernel routing does with anything twinpath does not steer.

Return-path symmetry in exch: an exchange answers on the handoff a request
arrived on. nftables in exch stamps each connection with the handoff its
packets last arrived on (prerouting: ct mark 1 for iif hA, 2 for iif hB), and a
`type route` output chain copies the ct mark into the packet mark, which
re-routes the reply: fwmark 1 -> table 101 (trader net via hA), fwmark 2 ->
table 102 (trader net via hB). So once the gateway fails traffic over to B,
exch's UDP replies, TCP ACKs and ICMP replies follow on B as well, instead of
going back over the main table's route via A.

Market data flows the other way, exch -> trader, on both lines at once: the
publisher sends line A from FEED_SOURCES["A"] and line B from
FEED_SOURCES["B"] (both on exch's loopback), and source rules (from A's
address -> table 101, from B's -> table 102) put each line on its own
handoff. gw forwards both to the trader by plain routing (rp_filter is 0, so
the unrouted sources pass), unless twinpath arbitrates between them.

Carriers answer heartbeats (ICMP echo to their gw-facing address) at up to
5000/s per link, so their ICMP rate limits are lifted. The fault injector
(faults.py) sits on each carrier's gw-facing veth, which keeps gw's own links
up during a gray failure.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute, netns

from appliance.edge import gatelock
from appliance.edge.netlink import ifindex
from lab import faults
from lab.colo import (
    BPFFS_ROOT,
    EXCHANGE_ADDR,
    EXCHANGE_NET,
    FEED_DST,
    FEED_PORTS,
    FEED_SOURCES,
    GW_INT_ADDR,
    INGRESS_DEV,
    LINKS,
    ROLES,
    TRADER_ADDR,
    TRADER_DEV,
    TRADER_NET,
    Lab,
    LabError,
    LabNames,
    carrier_routes_via_gw,
)

NETNS_RUN_DIR = Path("/run/netns")   # where `ip netns` (and pyroute2) mount named namespaces

NAMES = LabNames("tp", ROLES, "python -m lab down")

FRR_RUN_ROOT = Path("/var/run/frr")


@dataclass(frozen=True)
class Veth:
    role: str
    ifname: str
    cidr: str
    peer_role: str
    peer_ifname: str
    peer_cidr: str


VETHS = (
    Veth("trader", TRADER_DEV, f"{TRADER_ADDR}/24", "gw", INGRESS_DEV, f"{GW_INT_ADDR}/24"),
    *(
        Veth("gw", link.gw_dev, f"{link.gw_addr}/30", link.carrier, link.carrier_dev, f"{link.target}/30")
        for link in LINKS.values()
    ),
    *(
        Veth(link.carrier, f"ex{link.name}", f"{link.carrier_exch_addr}/30",
             "exch", link.handoff, f"{link.handoff_addr}/30")
        for link in LINKS.values()
    ),
)

# Heartbeat-only links gw <-> carA, added on demand (add_spare_links) so the
# daemon can be measured at its full 8 links; no class uses them.
SPARE_LINKS = {
    name: Veth("gw", f"lnk{name}", f"198.18.{12 + i}.1/30", "carA", f"gw{name}", f"198.18.{12 + i}.2/30")
    for i, name in enumerate("CDEFGH")
}

CARRIER_ROLES = tuple(link.carrier for link in LINKS.values())
FORWARDING_ROLES = ("gw", *CARRIER_ROLES)


def up(name: str | None = None) -> Lab:
    """Build a lab, attach the fault injector, check trader reaches the exchange."""
    lab = Lab(NAMES.check(name) if name else NAMES.fresh())
    NAMES.claim(lab)
    try:
        _build(lab)
        faults.attach(lab)
        _wait_reachable(lab)
        write_config(lab)
        _write_state(lab)
    except BaseException:
        down(lab.name)
        raise
    return lab


def down(name: str) -> None:
    """Remove a lab and everything it left behind; a no-op for what is already gone."""
    lab = Lab(NAMES.check(name))
    namespaces = {lab.ns(role) for role in ROLES} & set(netns.listnetns())
    _kill_processes(namespaces)
    if lab.ns("gw") in namespaces:
        remove_daemon_leftovers(lab.ns("gw"))
    for ns in namespaces:
        try:
            netns.remove(ns)
        except FileNotFoundError:
            pass
    _remove_tree(lab.pin_dir)
    # A bfdd killed with its namespace (lab.bfd) leaves its FRR pathspace directory.
    for frr_dir in FRR_RUN_ROOT.glob(f"{lab.name}-*"):
        _remove_tree(frr_dir)
    try:
        # rmdir first: it refuses a mount point, so rmtree can't wander into a bpffs.
        lab.bpffs_stage.rmdir()
    except FileNotFoundError:
        pass
    _remove_tree(lab.dir)


def remove_daemon_leftovers(ns: str) -> None:
    """What a daemon in namespace ns keeps per namespace inode outside the lab's
    own directories, and a killed one cannot remove: its pins when run with the
    default pin directory (pins.default_pin_dir), its control socket and its
    gateway lock file. Call before the namespace goes (its inode names them)."""
    inode = os.stat(NETNS_RUN_DIR / ns).st_ino
    _remove_tree(BPFFS_ROOT / f"gw-{inode}")
    for path in (gatelock.LOCK_DIR / f"control-{inode}.sock", gatelock.lock_path(inode=inode)):
        path.unlink(missing_ok=True)


def down_all() -> list[str]:
    """down() every lab that has a run directory, a namespace or pins; returns their names."""
    names = sorted(NAMES.known())
    for name in names:
        down(name)
    return names


def load(name: str) -> Lab:
    lab = Lab(NAMES.check(name))
    if not lab.state_path.exists():
        raise LabError(f"no lab {name} (no {lab.state_path}); run `python -m lab up`")
    return lab


def status(name: str | None = None) -> dict:
    """One lab's namespaces, interfaces and active faults; all known labs' if name is None."""
    if name is None:
        return {lab_name: status(lab_name) for lab_name in sorted(NAMES.known())}
    lab = Lab(NAMES.check(name))
    present = set(netns.listnetns())
    namespaces = {role: lab.ns(role) in present for role in ROLES}
    interfaces = {}
    for role in ROLES:
        if namespaces[role]:
            with lab.iproute(role) as ipr:
                interfaces[role] = {
                    link.get("IFLA_IFNAME"): {
                        "admin_up": bool(link["flags"] & 1),
                        "oper": link.get("IFLA_OPERSTATE"),
                        "carrier": link.get("IFLA_CARRIER"),
                    }
                    for link in ipr.get_links()
                }
    injector_present = all(namespaces[role] for role in CARRIER_ROLES) and all(
        faults.cfg_pin(lab, link).exists() for link in LINKS)
    return {
        "name": lab.name,
        "namespaces": namespaces,
        "interfaces": interfaces,
        "faults": faults.active(lab) if injector_present else {},
    }


def write_config(lab: Lab, interval_us: int = 1000, multiplier: int = 3, holddown_ms: int = 1000,
                 feeds: bool = False, spare_links: int = 0, damping: bool = True, steer_xdp: bool = False) -> Path:
    """Write the daemon config for this lab (atomically: a running daemon may
    re-read it), with the daemon's pins in the lab's own bpffs directory, so
    down() removes them. (The control socket's default already differs per
    network namespace.)"""
    _write_atomically(lab.config_path, render_config(interval_us, multiplier, holddown_ms, feeds, spare_links,
                                                     damping, steer_xdp) + lab_state_config(lab))
    return lab.config_path


def lab_state_config(lab: Lab) -> str:
    return f"""
[state]
pin_dir = "{lab.gw_pin_dir}"
"""


def render_config(interval_us: int = 1000, multiplier: int = 3, holddown_ms: int = 1000,
                  feeds: bool = False, spare_links: int = 0, damping: bool = True, steer_xdp: bool = False) -> str:
    """The daemon config for the lab topology (also the packet fixtures'
    config); with `feeds`, XDP arbitration of the lab's two market-data feeds.
    The failover tests run without: see the README's known limits.
    `spare_links` adds that many of SPARE_LINKS (see add_spare_links).
    Without `damping`, a link that fails again and again is never held out
    (for benches that inject a fresh failure every second).
    With `steer_xdp`, orders are steered at XDP too (steer.xdp): to a link
    whose carrier end runs GRO or XDP (a veth's condition for taking XDP frames).
    Classes: orders (active-backup, A then B), marketdata (active-backup,
    B then A) and quotes (lowest-latency over A and B)."""
    link_a, link_b = LINKS["A"], LINKS["B"]
    spares = "".join(f"""
[[links]]
name = "{name}"
dev = "{veth.ifname}"
target = "{veth.peer_cidr.split('/')[0]}"
""" for name, veth in list(SPARE_LINKS.items())[:spare_links])
    return f"""\
[heartbeat]
interval_us = {int(interval_us)}
multiplier = {int(multiplier)}
holddown_ms = {int(holddown_ms)}

[steer]
ingress = "{INGRESS_DEV}"
xdp = {str(bool(steer_xdp)).lower()}

[[links]]
name = "{link_a.name}"
dev = "{link_a.gw_dev}"
target = "{link_a.target}"

[[links]]
name = "{link_b.name}"
dev = "{link_b.gw_dev}"
target = "{link_b.target}"
{spares}
[[classes]]
name = "orders"
links = ["A", "B"]

[[classes]]
name = "marketdata"
links = ["B", "A"]

[[classes]]
name = "quotes"
links = ["A", "B"]
policy = "lowest-latency"

[[rules]]
class = "orders"
dst = "{EXCHANGE_NET}"
proto = "any"
ports = "9000-9099"

[[rules]]
class = "marketdata"
dst = "{EXCHANGE_NET}"
proto = "udp"
ports = "9100-9199"

[[rules]]
class = "quotes"
dst = "{EXCHANGE_NET}"
proto = "udp"
ports = "9200-9299"
""" + ("" if damping else "\n[damping]\nenabled = false\n") + (FEEDS_CONFIG if feeds else "")


FEEDS_CONFIG = f"""
[arbitration]
lines = ["A", "B"]

[[feeds]]
name = "itch"
protocol = "moldudp64"
dst = "{FEED_DST}"
port = {FEED_PORTS["moldudp64"]}

[[feeds]]
name = "mdp3"
protocol = "mdp3"
dst = "{FEED_DST}"
port = {FEED_PORTS["mdp3"]}
"""


def _build(lab: Lab) -> None:
    handles: dict[str, IPRoute] = {}
    try:
        for role in ROLES:
            handles[role] = IPRoute(netns=lab.ns(role), flags=os.O_CREAT | os.O_EXCL)
        for veth in VETHS:
            _add_veth(lab, handles, veth)
        # Before any link comes up: interfaces then never see rp_filter or IPv6 traffic.
        for role in ROLES:
            _sysctl(lab, role, handles[role])
        for veth in VETHS:
            _configure_end(handles[veth.role], veth.ifname, veth.cidr)
            _configure_end(handles[veth.peer_role], veth.peer_ifname, veth.peer_cidr)
        for role in ROLES:
            handles[role].link("set", index=ifindex(handles[role], "lo"), state="up")
        _add_exchange_service(handles["exch"])
        _add_routes(handles)
        _add_return_path(lab, handles["exch"])
        _make_veths_behave_like_nics(lab)
    finally:
        for ipr in handles.values():
            ipr.close()


def add_spare_links(lab: Lab) -> None:
    """Create SPARE_LINKS in a running lab (once; later calls do nothing)."""
    with lab.iproute("gw") as gw, lab.iproute("carA") as car:
        if gw.link_lookup(ifname=next(iter(SPARE_LINKS.values())).ifname):
            return
        handles = {"gw": gw, "carA": car}
        for veth in SPARE_LINKS.values():
            _add_veth(lab, handles, veth)
            _configure_end(gw, veth.ifname, veth.cidr)
            _configure_end(car, veth.peer_ifname, veth.peer_cidr)


def _make_veths_behave_like_nics(lab: Lab) -> None:
    """Two veth artefacts that a physical NIC does not have, undone so that
    gw's XDP sees and sends what it would on real links:
    - a veth accepts frames redirected by XDP only when its peer runs NAPI,
      which GRO turns on: so the trader's int0 gets GRO;
    - a veth sender leaves UDP checksums to "offload" (only a pseudo-header
      sum on the packet), which XDP forwards as is: so exch's handoffs and
      the trader's int0 put complete checksums on the wire, as a NIC does."""
    set_features(lab, "trader", "int0", {"rx-gro": True, "tx-checksum-ip-generic": False})
    for link in LINKS.values():
        set_features(lab, "exch", link.handoff, {"tx-checksum-ip-generic": False})


def set_features(lab: Lab, role: str, dev: str, features: dict[str, bool]) -> None:
    # The ethtool ioctl works in the caller's namespace, so run it in there.
    script = ("import sys, json\nfrom pyroute2.ethtool import Ethtool\ne = Ethtool()\n"
              "f = e.get_features(sys.argv[1])\n"
              "for name, on in json.loads(sys.argv[2]).items():\n    f.features[name].enable = on\n"
              "e.set_features(sys.argv[1], f)\n")
    _ns_exec(lab.ns(role), [sys.executable, "-c", script, dev, json.dumps(features)])


def napi_threads() -> dict[int, str]:
    """Every threaded-NAPI kernel thread on the host, pid -> name (napi/<dev>-<id>)."""
    out = {}
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            name = comm.read_text().strip()
        except OSError:
            continue
        if name.startswith("napi/"):
            out[int(comm.parent.name)] = name
    return out


def threaded_napi(lab: Lab, ends: list[tuple[str, str]], features: dict[str, bool] | None = None) -> dict[str, int]:
    """Threaded NAPI on each (role, dev) veth, after setting `features` on it
    (a veth has NAPI only with XDP or GRO on); returns the new NAPI threads,
    name -> pid. Raises unless every device got one."""
    before = napi_threads()
    for role, dev in ends:
        if features:
            set_features(lab, role, dev, features)
        lab.run(role, ["sh", "-c", f"echo 1 > /sys/class/net/{dev}/threaded"])
    threads = {name: pid for pid, name in napi_threads().items() if pid not in before}
    missing = [dev for _, dev in ends if not any(name.startswith(f"napi/{dev}-") for name in threads)]
    if missing:
        raise RuntimeError(f"threaded NAPI did not start on {', '.join(missing)}: got {sorted(threads)}")
    return threads


def _add_veth(lab: Lab, handles: dict[str, IPRoute], veth: Veth) -> None:
    # Creating the peer straight in its namespace avoids name clashes in the
    # root namespace between concurrent labs (every lab uses the same ifnames).
    peer_ns_fd = os.open(f"/run/netns/{lab.ns(veth.peer_role)}", os.O_RDONLY)
    try:
        handles[veth.role].link(
            "add", ifname=veth.ifname, kind="veth",
            peer={"ifname": veth.peer_ifname, "net_ns_fd": peer_ns_fd},
        )
    finally:
        os.close(peer_ns_fd)


def _sysctl(lab: Lab, role: str, ipr: IPRoute) -> None:
    ifnames = [link.get("IFLA_IFNAME") for link in ipr.get_links()]
    settings = {
        "net.ipv6.conf.all.disable_ipv6": 1,
        "net.ipv6.conf.default.disable_ipv6": 1,
        **{f"net.ipv4.conf.{scope}.rp_filter": 0 for scope in ("all", "default", *ifnames)},
    }
    if role in FORWARDING_ROLES:
        settings["net.ipv4.ip_forward"] = 1
    if role in CARRIER_ROLES:
        settings["net.ipv4.icmp_ratelimit"] = 0
        settings["net.ipv4.icmp_msgs_per_sec"] = 100000
    _ns_exec(lab.ns(role), ["sysctl", "-q", "-w", *(f"{key}={value}" for key, value in settings.items())])


def _configure_end(ipr: IPRoute, ifname: str, cidr: str) -> None:
    iface = ipaddress.ip_interface(cidr)
    index = ifindex(ipr, ifname)
    ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    ipr.link("set", index=index, state="up")


def _add_exchange_service(exch: IPRoute) -> None:
    for address in (EXCHANGE_ADDR, *FEED_SOURCES.values()):
        exch.addr("add", index=ifindex(exch, "lo"), address=address, prefixlen=32)


def _add_routes(handles: dict[str, IPRoute]) -> None:
    handles["trader"].route("add", dst="0.0.0.0/0", gateway=GW_INT_ADDR)
    for link in LINKS.values():
        handles["gw"].route("add", dst=EXCHANGE_NET, gateway=link.target, priority=link.metric)
        carrier = handles[link.carrier]
        for route in carrier_routes_via_gw(link):
            carrier.route("add", **route)
        carrier.route("add", dst=EXCHANGE_NET, gateway=link.handoff_addr)


def _add_return_path(lab: Lab, exch: IPRoute) -> None:
    route_replies_by_handoff(lab.ns("exch"), exch, list(LINKS.values()), LINKS["A"])
    for link in LINKS.values():
        # After the fwmark rules: a feed line leaves on its own handoff whatever the main table says.
        exch.rule("add", src=FEED_SOURCES[link.name], src_len=32, table=100 + link.fwmark,
                  priority=1100 + link.fwmark)


def route_replies_by_handoff(exch_ns: str, exch: IPRoute, links: list, main) -> None:
    """exch answers each connection over the handoff its packets last
    arrived on (the module's "return-path symmetry"): the trader net via
    main in the main table, via each link's handoff in table 100 + its
    fwmark, and nftables stamping the ct mark per handoff and copying it
    into each reply's packet mark. links: each with handoff, fwmark and
    carrier_exch_addr."""
    exch.route("add", dst=TRADER_NET, gateway=main.carrier_exch_addr, oif=ifindex(exch, main.handoff))
    for link in links:
        table = 100 + link.fwmark
        exch.route("add", dst=TRADER_NET, gateway=link.carrier_exch_addr,
                   oif=ifindex(exch, link.handoff), table=table)
        exch.rule("add", fwmark=link.fwmark, table=table, priority=1000 + link.fwmark)
    marks = "\n".join(f'        iifname "{link.handoff}" ct mark set {link.fwmark}' for link in links)
    ruleset = f"""\
table ip twinpath_lab {{
    chain handoff_mark {{
        type filter hook prerouting priority mangle; policy accept;
{marks}
    }}
    chain reply_route {{
        type route hook output priority mangle; policy accept;
        meta mark set ct mark
    }}
}}
"""
    _ns_exec(exch_ns, ["nft", "-f", "-"], input=ruleset)


def _wait_reachable(lab: Lab, attempts: int = 3) -> None:
    for _ in range(attempts):
        ping = subprocess.run(["ip", "netns", "exec", lab.ns("trader"), "ping", "-c1", "-W1", "-q", EXCHANGE_ADDR],
                              capture_output=True, text=True, timeout=5)
        if ping.returncode == 0:
            return
    raise LabError(f"lab {lab.name}: trader cannot reach {EXCHANGE_ADDR} after {attempts} pings: {ping.stdout.strip()}")


def _write_state(lab: Lab) -> None:
    state = {
        "name": lab.name,
        "created_unix": time.time(),
        "namespaces": {role: lab.ns(role) for role in ROLES},
        "config": str(lab.config_path),
        "fault_pins": {name: {"cfg": str(faults.cfg_pin(lab, name)), "stats": str(faults.stats_pin(lab, name))}
                       for name in LINKS},
    }
    _write_atomically(lab.state_path, json.dumps(state, indent=2) + "\n")


def _kill_processes(namespaces: set[str], grace_s: float = 2.0) -> None:
    def remaining() -> list[int]:
        return [pid for ns, pids in netns.ns_pids().items() if ns in namespaces for pid in pids]

    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 1.0)):
        pids = remaining()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        # Exited processes leave the namespace at once, even while still unreaped zombies.
        deadline = time.monotonic() + wait_s
        while remaining() and time.monotonic() < deadline:
            time.sleep(0.05)


def _ns_exec(ns: str, argv: list[str], input: str | None = None) -> None:
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], input=input, capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(argv[:2])} in {ns} failed ({proc.returncode}): {proc.stderr.strip()}")


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _remove_tree(path: Path) -> None:
    def ignore_vanished(func, failed_path, exc_info):
        if not issubclass(exc_info[0], FileNotFoundError):
            raise exc_info[1]

    shutil.rmtree(path, onerror=ignore_vanished)
