"""An HA pair of gateways in ten network namespaces: the lab for twinpath's
pair mode, its etcd witness and the keepalived comparison.

    trader ── brl ──┬── gw1 ── c1a, c1b ──┐
                    └── gw2 ── c2a, c2b ──┴── exch
    gw1 ── brx ── gw2                      (crosslink)
    gw1, gw2, witness ── brm               (management; etcd on witness)

brl, brx and brm are Linux bridges in one switch namespace, sw. Lab names are
"tq" + 4 hex digits (e.g. "tq3f9a"), apart from the single-gateway labs'
"tp...." and their clean-up; namespaces are f"{lab}-{role}".

The trader's default route is the virtual gateway address VIP, which nobody
holds at build time: the product (or keepalived) puts it on the active
gateway's int. Each gateway has two macvlans on int, pl (its LAN heartbeat
to the peer) and pa (its anchor heartbeat to the trader), so one gateway has
three addresses in the LAN; arp_ignore/arp_announce keep each of them
answering and announcing only its own.

Each gateway has carriers of its own (A metric 100, B metric 200, as in the
single-gateway lab), all four meeting at exch. exch stamps each connection
with the handoff it arrived on (ct mark 1..4) and routes replies back over
it (fwmark k -> table 100 + k), so a reply follows the gateway and carrier
its request came through, whichever gateway is active.

Faults are nftables netdev tables dropping everything both ways on a switch
port or a carrier's gateway-facing port: gray cuts, the gateway keeps its
carrier. Nothing is installed in gw1 or gw2 for a fault: the product runs
there.
"""
from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute, netns

from appliance.edge.netlink import TC_EGRESS, TC_INGRESS, ifindex
from lab import faults, labbpf, libbpf
from lab import layout as lab_layout
from lab.colo import (
    EXCHANGE_ADDR,
    EXCHANGE_NET,
    TRADER_ADDR,
    TRADER_DEV,
    TRADER_NET,
    LabError,
    LabHandle,
    LabNames,
)
from lab.topology import (
    NETNS_RUN_DIR,
    set_features,
    _kill_processes,
    _ns_exec,
    _remove_tree,
    _write_atomically,
    remove_daemon_leftovers,
    route_replies_by_handoff,
)

NODES = ("gw1", "gw2")
CARRIERS = ("c1a", "c1b", "c2a", "c2b")
ROLES = ("trader", "sw", "gw1", "gw2", "witness", "exch", *CARRIERS)

NAMES = LabNames("tq", ROLES, "python -m lab pair down")

VIP = "198.18.1.254"
LAN_PREFIXLEN = 24
INGRESS_DEV = "int"
PEER_LAN_DEV = "pl"
ANCHOR_DEV = "pa"
CROSSLINK_DEV = "xl"
MGMT_DEV = "mg"
WITNESS_ADDR = "198.18.41.100"
WITNESS_PORT = 2379
# The switch's bridges and which of its ports each holds.
BRIDGES = {"brl": ("pt", "p1", "p2"), "brx": ("x1", "x2"), "brm": ("m1", "m2", "mw")}
CARRIER_GW_DEV = "gw"  # a carrier's gateway-facing veth: where links_down cuts
BRIDGE_NF_SYSCTLS = Path("/proc/sys/net/bridge")  # present (in every namespace) while br_netfilter is loaded

KEEPALIVED_VRID = 51
TEARDOWN_AFTER_S = 0.2  # kill_host: a dead host's interfaces go down this long after it went silent


def node_number(node: str) -> int:
    if node not in NODES:
        raise ValueError(f"unknown node {node!r}; expected gw1 or gw2")
    return NODES.index(node) + 1


def peer_of(node: str) -> str:
    return NODES[2 - node_number(node)]


def int_addr(node: str) -> str:
    return f"198.18.1.{1 + node_number(node)}"


def peer_lan_addr(node: str) -> str:
    return f"198.18.1.{11 + node_number(node)}"


def anchor_addr(node: str) -> str:
    return f"198.18.1.{21 + node_number(node)}"


def crosslink_addr(node: str) -> str:
    return f"198.18.42.{node_number(node)}"


def mgmt_addr(node: str) -> str:
    return f"198.18.41.{node_number(node)}"


@dataclass(frozen=True)
class CarrierLink:
    """One of a gateway's carrier paths to exch."""

    node: str
    name: str  # "A" or "B", as the node's config calls it
    carrier: str  # carrier namespace role
    gw_addr: str  # on the node's lnk{name}
    target: str  # the carrier's gateway-facing address: the heartbeat target
    metric: int  # the node's kernel route metric towards the exchange
    carrier_exch_addr: str  # the carrier's address on the exchange handoff
    handoff: str  # exch's interface towards this carrier
    handoff_addr: str
    fwmark: int  # exch's ct mark / fwmark for this handoff; routing table 100 + fwmark

    @property
    def gw_dev(self) -> str:
        return f"lnk{self.name}"


def _carrier_links() -> dict[tuple[str, str], CarrierLink]:
    links = {}
    for k, (node, name) in enumerate((node, name) for node in NODES for name in "AB"):
        suffix = f"{node_number(node)}{name.lower()}"
        links[node, name] = CarrierLink(
            node=node, name=name, carrier=f"c{suffix}",
            gw_addr=f"198.18.{10 + k}.1", target=f"198.18.{10 + k}.2", metric=100 if name == "A" else 200,
            carrier_exch_addr=f"198.18.20.{4 * k + 1}", handoff=f"h{suffix}", handoff_addr=f"198.18.20.{4 * k + 2}",
            fwmark=k + 1,
        )
    return links


CARRIER_LINKS = _carrier_links()


@dataclass(frozen=True)
class Wire:
    """A veth; an end without an address is a switch port."""

    role: str
    ifname: str
    cidr: str | None
    peer_role: str
    peer_ifname: str
    peer_cidr: str | None


WIRES = (
    Wire("trader", TRADER_DEV, f"{TRADER_ADDR}/{LAN_PREFIXLEN}", "sw", "pt", None),
    *(wire for node in NODES for wire in (
        Wire(node, INGRESS_DEV, f"{int_addr(node)}/{LAN_PREFIXLEN}", "sw", f"p{node_number(node)}", None),
        Wire(node, CROSSLINK_DEV, f"{crosslink_addr(node)}/24", "sw", f"x{node_number(node)}", None),
        Wire(node, MGMT_DEV, f"{mgmt_addr(node)}/24", "sw", f"m{node_number(node)}", None),
    )),
    Wire("witness", "mg0", f"{WITNESS_ADDR}/24", "sw", "mw", None),
    *(wire for link in CARRIER_LINKS.values() for wire in (
        Wire(link.node, link.gw_dev, f"{link.gw_addr}/30", link.carrier, CARRIER_GW_DEV, f"{link.target}/30"),
        Wire(link.carrier, "ex", f"{link.carrier_exch_addr}/30", "exch", link.handoff, f"{link.handoff_addr}/30"),
    )),
)

# Each gateway's macvlans on int and their addresses.
MACVLANS = {PEER_LAN_DEV: peer_lan_addr, ANCHOR_DEV: anchor_addr}


@dataclass(frozen=True)
class PairLab(LabHandle):
    def ns(self, role: str) -> str:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        return f"{self.name}-{role}"

    def node_pin_dir(self, node: str) -> Path:
        """A node's daemon pins (its config's state.pin_dir)."""
        node_number(node)
        return self.pin_dir / node

    def config_path(self, node: str) -> Path:
        node_number(node)
        return self.dir / f"{node}.toml"


def up(name: str | None = None) -> PairLab:
    """Build a pair lab, check its paths, write both nodes' configs."""
    lab = PairLab(NAMES.check(name) if name else NAMES.fresh())
    NAMES.claim(lab)
    try:
        _build(lab)
        _wait_reachable(lab)
        for node in NODES:
            _attach_host_switch(lab, node)
        for node in NODES:
            write_config(lab, node)
        _write_state(lab)
    except BaseException:
        down(lab.name)
        raise
    return lab


def down(name: str) -> None:
    """Remove a pair lab and everything it left behind; a no-op for what is already gone."""
    lab = PairLab(NAMES.check(name))
    namespaces = {lab.ns(role) for role in ROLES} & set(netns.listnetns())
    _kill_processes(namespaces)
    for node in NODES:
        if lab.ns(node) in namespaces:
            remove_daemon_leftovers(lab.ns(node))
    for ns in namespaces:
        try:
            netns.remove(ns)
        except FileNotFoundError:
            pass
    _remove_tree(lab.pin_dir)
    try:
        # rmdir first: it refuses a mount point, so rmtree can't wander into a bpffs.
        lab.bpffs_stage.rmdir()
    except FileNotFoundError:
        pass
    _remove_tree(lab.dir)


def down_all() -> list[str]:
    """down() every pair lab that has a run directory, a namespace or pins; returns their names."""
    names = sorted(NAMES.known())
    for name in names:
        down(name)
    return names


def load(name: str) -> PairLab:
    lab = PairLab(NAMES.check(name))
    if not lab.state_path.exists():
        raise LabError(f"no pair lab {name} (no {lab.state_path}); run `python -m lab pair up`")
    return lab


def status(name: str) -> dict:
    """The lab's namespaces, interfaces, cuts and who holds the VIP."""
    lab = PairLab(NAMES.check(name))
    present = set(netns.listnetns())
    namespaces = {role: lab.ns(role) in present for role in ROLES}
    interfaces = {}
    for role in ROLES:
        if namespaces[role]:
            with lab.iproute(role) as ipr:
                interfaces[role] = {
                    link.get("IFLA_IFNAME"): {"admin_up": bool(link["flags"] & 1), "oper": link.get("IFLA_OPERSTATE")}
                    for link in ipr.get_links()
                }
    return {
        "name": lab.name,
        "namespaces": namespaces,
        "interfaces": interfaces,
        "cuts": {role: tables for role in ("sw", *CARRIERS) if namespaces[role] and (tables := _cut_tables(lab, role))},
        "vip": [node for node in NODES if namespaces[node] and vip_holder(lab, node)],
    }


def exch_gateways(lab: PairLab) -> dict[int, str]:
    """exch's ifindex of each handoff -> the gateway whose carrier it faces."""
    return {index: node for index, (node, _) in exch_handoff_links(lab).items()}


def exch_handoff_links(lab: PairLab) -> dict[int, tuple[str, str]]:
    """exch's ifindex of each handoff -> (gateway, link name)."""
    with lab.iproute("exch") as ipr:
        return {ifindex(ipr, link.handoff): (link.node, link.name) for link in CARRIER_LINKS.values()}


def vip_holder(lab: PairLab, node: str) -> bool:
    """Whether the VIP is on the node's int."""
    with lab.iproute(node) as ipr:
        return _holds_vip(ipr)


def _holds_vip(ipr: IPRoute) -> bool:
    return any(addr.get("IFA_ADDRESS") == VIP for addr in ipr.get_addr(index=ifindex(ipr, INGRESS_DEV)))


def reaches(lab: PairLab, role: str, target: str, via: str | None = None, attempts: int = 3) -> bool:
    """Whether role pings target within `attempts` one-second pings; `via`: a
    source address or interface (ping -I)."""
    argv = ["ping", "-c1", "-W1", "-q", *(["-I", via] if via else []), target]
    return any(lab.run(role, argv, check=False).returncode == 0 for _ in range(attempts))


# -- node config ----------------------------------------------------------------

def write_config(lab: PairLab, node: str, interval_us: int = 1000, multiplier: int = 3, holddown_ms: int = 1000,
                 preempt: bool = False, hold_down_ms: int = 5000, lease_s: int = 2) -> Path:
    """Write the node's daemon config (atomically: a running daemon may re-read it)."""
    peer = peer_of(node)
    link_a, link_b = CARRIER_LINKS[node, "A"], CARRIER_LINKS[node, "B"]
    config = f"""\
[heartbeat]
interval_us = {int(interval_us)}
multiplier = {int(multiplier)}
holddown_ms = {int(holddown_ms)}

[steer]
ingress = "{INGRESS_DEV}"

[[links]]
name = "A"
dev = "{link_a.gw_dev}"
target = "{link_a.target}"

[[links]]
name = "B"
dev = "{link_b.gw_dev}"
target = "{link_b.target}"

[[links]]
name = "peer-lan"
dev = "{PEER_LAN_DEV}"
target = "{int_addr(peer)}"

[[links]]
name = "peer-xl"
dev = "{CROSSLINK_DEV}"
target = "{crosslink_addr(peer)}"

[[links]]
name = "anchor"
dev = "{ANCHOR_DEV}"
target = "{TRADER_ADDR}"

[[classes]]
name = "orders"
links = ["A", "B"]

[[rules]]
class = "orders"
dst = "{EXCHANGE_NET}"
proto = "any"
ports = "9000-9099"

[pair]
node = "{node}"
peer = "{peer}"
vip = "{VIP}/{LAN_PREFIXLEN}"
peer_links = ["peer-lan", "peer-xl"]
lan_links = ["peer-lan", "anchor"]
witness = ["{witness_url(lab)}"]
prefix = "/twinpath/{lab.name}"
lease_s = {int(lease_s)}
preempt = {str(bool(preempt)).lower()}
hold_down_ms = {int(hold_down_ms)}

[state]
pin_dir = "{lab.node_pin_dir(node)}"
"""
    path = lab.config_path(node)
    _write_atomically(path, config)
    return path


# -- the witness ------------------------------------------------------------------

def witness_url(lab: PairLab) -> str:
    return f"http://{WITNESS_ADDR}:{WITNESS_PORT}"


def start_witness(lab: PairLab, timeout_s: float = 20.0) -> subprocess.Popen:
    """etcd (a one-member cluster) in the witness namespace, once it answers /health."""
    url = witness_url(lab)
    peer_url = "http://127.0.0.1:2380"
    # The data dir is on tmpfs (/run), so etcd's fsync of every write is cheap.
    argv = ["etcd", "--name", "witness", "--data-dir", str(lab.dir / "etcd"),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"witness={peer_url}", "--logger", "zap", "--log-level", "warn"]
    with open(lab.dir / "etcd.log", "ab") as log:
        proc = lab.spawn("witness", argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    health = ("import sys, urllib.request\n"
              "print(urllib.request.urlopen(sys.argv[1] + '/health', timeout=1).read().decode())\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"etcd exited ({proc.returncode}); see {lab.dir / 'etcd.log'}")
        answer = lab.run("gw1", [sys.executable, "-c", health, url], check=False)
        if answer.returncode == 0 and '"health":"true"' in answer.stdout:
            return proc
        time.sleep(0.2)
    stop_witness(lab)
    raise LabError(f"etcd at {url} not healthy after {timeout_s:g} s; see {lab.dir / 'etcd.log'}")


def stop_witness(lab: PairLab) -> None:
    """Stop etcd: the one thing that runs in the witness namespace."""
    _kill_processes({lab.ns("witness")})


# -- faults -------------------------------------------------------------------------

def cut(lab: PairLab, what: str, node: str | None = None) -> int:
    """Drop everything both ways on a switch port: "lan" (node's LAN port),
    "crosslink", "witness" (the witness's own port, or only node's management port)."""
    return _apply_nft(lab, [("sw", _cut_ruleset(_switch_port(what, node)))])


def heal(lab: PairLab, what: str, node: str | None = None) -> int:
    """Undo cut(lab, what, node); a no-op where there is no such cut."""
    return _apply_nft(lab, [("sw", _heal_ruleset(_switch_port(what, node)))])


def links_down(lab: PairLab, node: str) -> int:
    """Black-hole both of node's carrier links at the carriers (both at once)."""
    return _apply_nft(lab, [(link.carrier, _cut_ruleset(CARRIER_GW_DEV)) for link in _node_links(node)])


def links_up(lab: PairLab, node: str) -> int:
    """Undo links_down(lab, node)."""
    return _apply_nft(lab, [(link.carrier, _heal_ruleset(CARRIER_GW_DEV)) for link in _node_links(node)])


def heal_all(lab: PairLab) -> int:
    """Remove every cut, on the switch and on the carriers."""
    return _apply_nft(lab, [(role, "".join(f"delete table netdev {table}\n" for table in tables))
                       for role in ("sw", *CARRIERS) if (tables := _cut_tables(lab, role))])


def kill_host(lab: PairLab, node: str, timeout_s: float = 5.0, teardown_after_s: float = TEARDOWN_AFTER_S) -> int:
    """The node dies: its three switch ports (LAN, crosslink, management)
    go silent at one instant, the moment returned: one write to the fault
    program they share (an nft transaction commits milliseconds after it is
    written, and links set down one netlink call at a time die that far
    apart, which a peer watching both paths would see). Every process in it
    stops at once (SIGSTOP); teardown_after_s later its own interfaces go
    down and its processes are SIGKILLed. The teardown waits because on
    this 2-core lab its kernel work (links down, sockets and programs freed)
    would run on the survivor's CPUs during the survivor's detection
    window, which no dead host's teardown does."""
    namespace = lab.ns(node)
    pids = netns.ns_pids().get(namespace, ())   # before: the scan of /proc takes milliseconds of CPU
    stamp = _set_host_switch(lab, node, faults.MODE_BLACKHOLE)
    _signal_all(pids, signal.SIGSTOP)
    time.sleep(teardown_after_s)
    with lab.iproute(node) as ipr:
        indexes = [link["index"] for link in ipr.get_links() if link.get("IFLA_IFNAME") != "lo"]
        for index in indexes:
            ipr.link("set", index=index, state="down")
    deadline = time.monotonic() + timeout_s
    # Exited processes leave the namespace at once, even while still unreaped zombies.
    while pids := netns.ns_pids().get(namespace):
        if time.monotonic() > deadline:
            raise LabError(f"processes {pids} in {namespace} survived SIGKILL for {timeout_s:g} s")
        _signal_all(pids, signal.SIGKILL)
        time.sleep(0.01)
    return stamp


def _signal_all(pids, sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def revive_host(lab: PairLab, node: str) -> int:
    """The node as a reboot leaves it: no pins, no BPF on its interfaces, no
    VIP; interfaces up and its exchange routes back."""
    _remove_tree(lab.node_pin_dir(node))
    remove_daemon_leftovers(lab.ns(node))   # a reboot's fresh /run
    _set_host_switch(lab, node, faults.MODE_PASS)
    with lab.iproute(node) as ipr:
        links = [link for link in ipr.get_links() if link.get("IFLA_IFNAME") != "lo"]
        for link in links:
            _detach_all_bpf(ipr, link)
        int_index = ifindex(ipr, INGRESS_DEV)
        if _holds_vip(ipr):
            ipr.addr("del", index=int_index, address=VIP, prefixlen=LAN_PREFIXLEN)
        stamp = time.monotonic_ns()
        # The lower device first: a macvlan cannot come up while its int is down.
        for link in sorted(links, key=lambda link: link["index"] != int_index):
            ipr.link("set", index=link["index"], state="up")
        _add_exchange_routes(ipr, node)
    return stamp


# XDP detach flags per attach mode (linux/if_link.h XDP_FLAGS_SKB_MODE / XDP_FLAGS_DRV_MODE).
XDP_MODE_FLAGS = {"xdpgeneric": 1 << 1, "xdp": 1 << 2}


def _detach_all_bpf(ipr: IPRoute, link) -> None:
    xdp = link.get("IFLA_XDP")
    mode = xdp.get("IFLA_XDP_ATTACHED") if xdp else None
    if mode in XDP_MODE_FLAGS:
        ipr.link("set", index=link["index"], xdp={"attrs": [("IFLA_XDP_FD", -1),
                                                            ("IFLA_XDP_FLAGS", XDP_MODE_FLAGS[mode])]})
    if any(qdisc.get("TCA_KIND") == "clsact" for qdisc in ipr.get_qdiscs(index=link["index"])):
        ipr.tc("del", "clsact", link["index"])


def _switch_port(what: str, node: str | None) -> str:
    if what == "lan":
        if node is None:
            raise ValueError("a lan cut needs a node (gw1 or gw2)")
        return f"p{node_number(node)}"
    if what == "crosslink":  # one wire: cut at x1 unless a node's end is named
        return f"x{node_number(node) if node else 1}"
    if what == "witness":
        return f"m{node_number(node)}" if node else "mw"
    raise ValueError(f"unknown cut {what!r}; expected lan, crosslink or witness")


def _host_switch_pin(lab: PairLab, node: str) -> Path:
    return lab.pin_dir / f"host_{node}_cfg"


def _attach_host_switch(lab: PairLab, node: str) -> None:
    """lab/ebpf/fault.c attached to the node's three switch ports, one map
    for all three: kill_host's single switch. On a switch port, ingress is
    what the gateway sends and egress what goes to it, as on a carrier's."""
    labbpf.attach_pinned(lab, "fault.c", {TC_INGRESS: "fault_from_gw", TC_EGRESS: "fault_to_gw"},
                         {"fault_cfg": _host_switch_pin(lab, node)}, "sw", *_host_ports(node))


def _set_host_switch(lab: PairLab, node: str, mode: int) -> int:
    with labbpf.pinned(_host_switch_pin(lab, node), "is the pair lab up?") as fd:
        stamp = time.monotonic_ns()
        libbpf.map_update(fd, ctypes.c_uint32(0), lab_layout.FaultConfig(mode))
    return stamp


def _host_ports(node: str) -> list[str]:
    return [_switch_port(what, node) for what in ("lan", "crosslink", "witness")]


def _node_links(node: str) -> list[CarrierLink]:
    node_number(node)
    return [link for link in CARRIER_LINKS.values() if link.node == node]


def _cut_ruleset(port: str) -> str:
    # netdev ingress and egress on the port itself: the gateway's end keeps
    # its carrier, as in a gray failure of a real switch port or cable.
    return f"""\
table netdev cut_{port} {{
    chain ingress {{
        type filter hook ingress device "{port}" priority -500; policy drop;
    }}
    chain egress {{
        type filter hook egress device "{port}" priority -500; policy drop;
    }}
}}
"""


def _heal_ruleset(port: str) -> str:
    # Adding the table first makes the delete a no-op when it is not cut (nft 1.0.6 has no `destroy`).
    return f"add table netdev cut_{port}\ndelete table netdev cut_{port}\n"


def _cut_tables(lab: PairLab, role: str) -> list[str]:
    listing = lab.run(role, ["nft", "-j", "list", "tables", "netdev"]).stdout
    return [item["table"]["name"] for item in json.loads(listing)["nftables"]
            if "table" in item and item["table"]["name"].startswith("cut_")]


def _apply_nft(lab: PairLab, changes: list[tuple[str, str]]) -> int:
    """Apply each (role, ruleset) with nft in that role's namespace; returns
    time.monotonic_ns() taken just before they take effect. Every nft is
    started first and left waiting for its ruleset on stdin, so the stamp
    leaves out the ~10 ms it takes to start one, and the changes land together."""
    procs = [subprocess.Popen(["ip", "netns", "exec", lab.ns(role), "nft", "-f", "-"], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for role, _ in changes]
    try:
        for proc in procs:
            _wait_reading_stdin(proc)
        stamp = time.monotonic_ns()
        for proc, (_, ruleset) in zip(procs, changes):
            proc.stdin.write(ruleset)
            proc.stdin.close()
        for proc, (role, _) in zip(procs, changes):
            error = proc.stderr.read()
            if proc.wait(timeout=10) != 0:
                raise LabError(f"nft in {lab.ns(role)} failed ({proc.returncode}): {error.strip()}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return stamp


def _wait_reading_stdin(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    # Once `ip netns exec` has become nft, nft blocks in a read of its stdin pipe.
    proc_dir = Path(f"/proc/{proc.pid}")
    deadline = time.monotonic() + timeout_s
    while (proc_dir / "comm").read_text() != "nft\n" or not (proc_dir / "wchan").read_text().endswith("pipe_read"):
        if proc.poll() is not None:  # our child: its /proc entry stays until it is reaped
            raise LabError(f"nft exited ({proc.returncode}) before its ruleset: {proc.stderr.read().strip()}")
        if time.monotonic() > deadline:
            raise LabError(f"nft (pid {proc.pid}) did not wait for its ruleset within {timeout_s:g} s")
        time.sleep(0.001)


# -- keepalived, for comparison --------------------------------------------------------

def keepalived_start(lab: PairLab, node: str, priority: int, advert_s: float = 0.01,
                     preempt: bool = True) -> subprocess.Popen:
    """keepalived (VRRPv3) in node, holding the VIP on int while master; both
    nodes start as BACKUP and the priorities decide. Its own process group,
    so keepalived_stop() can signal it and its VRRP child at once."""
    if round(advert_s * 100) < 1:
        # VRRPv3 counts in centiseconds; keepalived would log the interval as invalid and advertise every 1 s.
        raise ValueError(f"advert_s {advert_s:g}: keepalived's shortest VRRPv3 interval is 0.01 s")
    nopreempt = "" if preempt else "    nopreempt\n"
    carrier_devs = "".join(f"        {link.gw_dev}\n" for link in _node_links(node))
    config = f"""\
global_defs {{
    vrrp_version 3
    # Real-time, as twinpath's pair thread (9, one below its probe sender):
    # keepalived at its fastest, not held off the CPU on the loaded lab.
    vrrp_rt_priority 9
}}

vrrp_instance twinpath {{
    state BACKUP
    interface {INGRESS_DEV}
    virtual_router_id {KEEPALIVED_VRID}
    priority {int(priority)}
    advert_int {advert_s:g}
{nopreempt}\
    track_interface {{
{carrier_devs}\
    }}
    virtual_ipaddress {{
        {VIP}/{LAN_PREFIXLEN} dev {INGRESS_DEV}
    }}
}}
"""
    config_path = lab.dir / f"keepalived-{node}.conf"
    _write_atomically(config_path, config)
    # Pid files of its own per instance: several keepalived coexist on one host.
    pid_files = (lab.dir / f"keepalived-{node}.pid", lab.dir / f"keepalived-{node}-vrrp.pid")
    _clear_pid_files(node, pid_files)
    argv = ["keepalived", "--dont-fork", "--log-console", "--no-syslog", "--vrrp", "-f", str(config_path),
            "-p", str(pid_files[0]), "-r", str(pid_files[1])]
    with open(lab.dir / f"keepalived-{node}.log", "ab") as log:
        return lab.spawn(node, argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)


def keepalived_stop(lab: PairLab, node: str, sig: int = signal.SIGTERM) -> int:
    """Signal node's keepalived and its VRRP child together (so SIGKILL is an
    abrupt death, with no priority-0 advert); returns time.monotonic_ns() taken
    just before. Found in the namespace, not by pid file: a keepalived started a
    moment ago may not have written its own yet."""
    groups = set()
    for pid in netns.ns_pids().get(lab.ns(node), []):
        try:
            if Path(f"/proc/{pid}/comm").read_text() == "keepalived\n":
                groups.add(os.getpgid(pid))
        except (FileNotFoundError, ProcessLookupError):
            pass
    if not groups:
        raise LabError(f"no keepalived runs in {lab.ns(node)}")
    stamp = time.monotonic_ns()
    for group in groups:
        os.killpg(group, sig)
    return stamp


def _clear_pid_files(node: str, pid_files: tuple[Path, ...], timeout_s: float = 5.0) -> None:
    """Remove an earlier instance's pid files once its processes are gone.
    keepalived refuses to start while a pid file names a process, zombies
    included, and the VRRP child of one killed with SIGKILL is an orphan that
    stays a zombie until init reaps it (over a second where init is slow to)."""
    deadline = time.monotonic() + timeout_s
    for path in pid_files:
        try:
            pid = int(path.read_text())
        except FileNotFoundError:
            continue
        while _running(pid):
            if time.monotonic() > deadline:
                raise LabError(f"keepalived already runs in {node} (pid {pid} in {path})")
            time.sleep(0.05)
        path.unlink()


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# -- building ---------------------------------------------------------------------------

def _build(lab: PairLab) -> None:
    handles: dict[str, IPRoute] = {}
    try:
        for role in ROLES:
            handles[role] = IPRoute(netns=lab.ns(role), flags=os.O_CREAT | os.O_EXCL)
        _add_bridges(handles["sw"])
        for wire in WIRES:
            _add_veth(lab, handles[wire.role], wire)
        for node in NODES:
            _add_macvlans(handles[node])
        # Before any link comes up: interfaces then never see rp_filter or IPv6 traffic.
        for role in ROLES:
            _sysctl(lab, role, handles[role])
        for wire in WIRES:
            _configure_end(handles[wire.role], wire.ifname, wire.cidr)
            _configure_end(handles[wire.peer_role], wire.peer_ifname, wire.peer_cidr)
        sw = handles["sw"]
        for bridge, ports in BRIDGES.items():
            for port in ports:
                sw.link("set", index=ifindex(sw, port), master=ifindex(sw, bridge))
            sw.link("set", index=ifindex(sw, bridge), state="up")
        for node in NODES:
            for dev, addr in MACVLANS.items():
                _configure_end(handles[node], dev, f"{addr(node)}/{LAN_PREFIXLEN}")
        for role in ROLES:
            handles[role].link("set", index=ifindex(handles[role], "lo"), state="up")
        handles["exch"].addr("add", index=ifindex(handles["exch"], "lo"), address=EXCHANGE_ADDR, prefixlen=32)
        _add_routes(handles)
        route_replies_by_handoff(lab.ns("exch"), handles["exch"], list(CARRIER_LINKS.values()),
                                 CARRIER_LINKS["gw1", "A"])
        # As topology._make_veths_behave_like_nics: XDP-redirected frames reach the trader (NAPI on
        # its int0), and exch puts complete UDP checksums on the wire.
        set_features(lab, "trader", TRADER_DEV, {"rx-gro": True})
        for link in CARRIER_LINKS.values():
            set_features(lab, "exch", link.handoff, {"tx-checksum-ip-generic": False})
    finally:
        for ipr in handles.values():
            ipr.close()


def _add_bridges(sw: IPRoute) -> None:
    # No STP, so a port forwards as soon as it is up; no multicast snooping,
    # so multicast (VRRP adverts) floods; and link-local groups forwarded as
    # far as the kernel allows (it keeps STP, pause and LACP frames).
    for bridge in BRIDGES:
        sw.link("add", ifname=bridge, kind="bridge", br_stp_state=0, br_mcast_snooping=0, br_group_fwd_mask=0xFFF8)


def _add_veth(lab: PairLab, ipr: IPRoute, wire: Wire) -> None:
    # Creating the peer straight in its namespace avoids name clashes in the
    # root namespace between concurrent labs (every lab uses the same ifnames).
    peer_ns_fd = os.open(NETNS_RUN_DIR / lab.ns(wire.peer_role), os.O_RDONLY)
    try:
        ipr.link("add", ifname=wire.ifname, kind="veth", peer={"ifname": wire.peer_ifname, "net_ns_fd": peer_ns_fd})
    finally:
        os.close(peer_ns_fd)


def _add_macvlans(ipr: IPRoute) -> None:
    lower = ifindex(ipr, INGRESS_DEV)
    for dev in MACVLANS:
        ipr.link("add", ifname=dev, kind="macvlan", link=lower, macvlan_mode="bridge")


def _sysctl(lab: PairLab, role: str, ipr: IPRoute) -> None:
    scopes = ("all", "default", *(link.get("IFLA_IFNAME") for link in ipr.get_links()))
    settings = {
        "net.ipv6.conf.all.disable_ipv6": 1,
        "net.ipv6.conf.default.disable_ipv6": 1,
        **{f"net.ipv4.conf.{scope}.rp_filter": 0 for scope in scopes},
    }
    # Heartbeat targets (carriers, the trader as anchor, the peer) answer probes at 1 kHz and more.
    icmp_unlimited = {"net.ipv4.icmp_ratelimit": 0, "net.ipv4.icmp_msgs_per_sec": 100000}
    if role in NODES:
        settings["net.ipv4.ip_forward"] = 1
        settings.update(icmp_unlimited)
        # Three addresses in one subnet (int, pl, pa): each answers ARP only for
        # itself and announces only its own address.
        for scope in scopes:
            settings[f"net.ipv4.conf.{scope}.arp_ignore"] = 1
            settings[f"net.ipv4.conf.{scope}.arp_announce"] = 2
    elif role in CARRIERS:
        settings["net.ipv4.ip_forward"] = 1
        settings.update(icmp_unlimited)
    elif role == "trader":
        settings.update(icmp_unlimited)
    elif role == "exch":
        settings["net.ipv4.ip_forward"] = 0
    elif role == "sw" and BRIDGE_NF_SYSCTLS.is_dir():
        # With br_netfilter loaded, bridged frames would go through the IP layer's hooks: the switch is L2 only.
        settings.update({f"net.bridge.bridge-nf-call-{family}": 0 for family in ("iptables", "ip6tables", "arptables")})
    _ns_exec(lab.ns(role), ["sysctl", "-q", "-w", *(f"{key}={value}" for key, value in settings.items())])


def _configure_end(ipr: IPRoute, ifname: str, cidr: str | None) -> None:
    index = ifindex(ipr, ifname)
    if cidr:
        iface = ipaddress.ip_interface(cidr)
        ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    ipr.link("set", index=index, state="up")


def _add_routes(handles: dict[str, IPRoute]) -> None:
    handles["trader"].route("add", dst="0.0.0.0/0", gateway=VIP)
    for node in NODES:
        _add_exchange_routes(handles[node], node)
    for link in CARRIER_LINKS.values():
        carrier = handles[link.carrier]
        carrier.route("add", dst=TRADER_NET, gateway=link.gw_addr)
        carrier.route("add", dst=EXCHANGE_NET, gateway=link.handoff_addr)


def _add_exchange_routes(ipr: IPRoute, node: str) -> None:
    # replace: revive_host() puts back what the kernel dropped, whatever is left.
    for link in _node_links(node):
        ipr.route("replace", dst=EXCHANGE_NET, gateway=link.target, priority=link.metric)


def _wait_reachable(lab: PairLab) -> None:
    # A gateway pings the exchange from its int address: exch routes only the
    # trader net back (over the handoff the request came in on).
    paths = [
        *(("trader", int_addr(node), None) for node in NODES),
        *((node, EXCHANGE_ADDR, int_addr(node)) for node in NODES),
        ("gw1", crosslink_addr("gw2"), None),
        ("gw1", mgmt_addr("gw2"), None),
        *((node, WITNESS_ADDR, None) for node in NODES),
    ]
    unreached = [f"{role} -> {target}" for role, target, via in paths if not reaches(lab, role, target, via)]
    if unreached:
        raise LabError(f"pair lab {lab.name}: no ping reply on {', '.join(unreached)}")


def _write_state(lab: PairLab) -> None:
    state = {
        "name": lab.name,
        "created_unix": time.time(),
        "namespaces": {role: lab.ns(role) for role in ROLES},
        "configs": {node: str(lab.config_path(node)) for node in NODES},
        "witness": witness_url(lab),
    }
    _write_atomically(lab.state_path, json.dumps(state, indent=2) + "\n")
