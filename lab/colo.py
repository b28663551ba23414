"""The lab colo's fixed shape: its namespace roles, address plan and two
carrier links, and Lab, the handle on one running instance.

A leaf of the lab: topology builds and removes instances; the fault injector,
the reflector and the lab's BPF loaders act on one through this, without
depending on how it is built.
"""
from __future__ import annotations

import re
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute, netns

from appliance.edge.netlink import ifindex

ROLES = ("trader", "gw", "carA", "carB", "exch")

RUN_ROOT = Path("/run/twinpath/labs")
BPFFS_ROOT = Path("/sys/fs/bpf/twinpath")

TRADER_NET = "198.18.1.0/24"
TRADER_ADDR = "198.18.1.1"
TRADER_DEV = "int0"
GW_INT_ADDR = "198.18.1.254"
INGRESS_DEV = "int"
EXCHANGE_NET = "198.19.0.0/24"
EXCHANGE_ADDR = "198.19.0.10"
# The market-data publisher's source address per line, on exch's loopback;
# a /24 of its own, clear of every link and of the exchange prefix.
FEED_SOURCES = {"A": "198.18.30.1", "B": "198.18.30.2"}
FEED_DST = TRADER_ADDR
FEED_PORTS = {"moldudp64": 26400, "mdp3": 26401}  # the lab config's two arbitrated feeds
# A veth pair in each carrier namespace, made by the first delay fault there: the
# fault injector redirects into the first, the delay line (lab.delayline) reads the second.
DELAY_VETH = ("dly0", "dly1")


@dataclass(frozen=True)
class LinkSpec:
    """One carrier path between gw and exch."""

    name: str  # "A": what the daemon config and the fault API call it
    gw_dev: str  # gw's interface on this link
    gw_addr: str
    target: str  # carrier's gw-facing address: the heartbeat target
    metric: int  # gw's kernel route metric towards the exchange
    carrier: str  # carrier namespace role
    carrier_dev: str  # carrier's gw-facing veth: where faults are injected
    carrier_exch_addr: str  # carrier's address on the exchange handoff
    handoff: str  # exch's interface towards this carrier
    handoff_addr: str
    fwmark: int  # exch's ct mark / fwmark for this handoff; routing table 100 + fwmark


LINKS = {
    "A": LinkSpec(
        name="A", gw_dev="lnkA", gw_addr="198.18.10.1", target="198.18.10.2", metric=100,
        carrier="carA", carrier_dev="gwA", carrier_exch_addr="198.18.20.1",
        handoff="hA", handoff_addr="198.18.20.2", fwmark=1,
    ),
    "B": LinkSpec(
        name="B", gw_dev="lnkB", gw_addr="198.18.11.1", target="198.18.11.2", metric=200,
        carrier="carB", carrier_dev="gwB", carrier_exch_addr="198.18.21.1",
        handoff="hB", handoff_addr="198.18.21.2", fwmark=2,
    ),
}


def carrier_routes_via_gw(link: LinkSpec) -> list[dict]:
    """The carrier's static routes through its gw-facing veth.

    The kernel deletes these when that veth goes admin down (carrier-down), so
    faults.clear() puts them back.
    """
    return [{"dst": TRADER_NET, "gateway": link.gw_addr}]


class LabError(RuntimeError):
    pass


@dataclass(frozen=True)
class LabNames:
    """How a lab shape names its instances ("tp" or "tq" + 4 hex digits, so
    leftovers are recognisable and shapes never collide), finds them, and
    takes a fresh name."""

    prefix: str
    roles: tuple[str, ...]
    down_command: str         # how an operator removes one, for error messages

    @property
    def name_re(self) -> re.Pattern:
        return re.compile(rf"^{self.prefix}[0-9a-f]{{4}}$")

    @property
    def ns_re(self) -> re.Pattern:
        return re.compile(rf"^({self.prefix}[0-9a-f]{{4}})-({'|'.join(map(re.escape, self.roles))})$")

    def check(self, name: str) -> str:
        if not self.name_re.match(name):
            raise LabError(f"invalid lab name {name!r}: expected {self.prefix!r} + 4 hex digits, "
                           f"e.g. {self.prefix}3f9a")
        return name

    def fresh(self) -> str:
        taken = self.known()
        while (name := self.prefix + secrets.token_hex(2)) in taken:
            pass
        return name

    def known(self) -> set[str]:
        """Every instance with a namespace, a run directory or pins."""
        names = {m.group(1) for ns in netns.listnetns() if (m := self.ns_re.match(ns))}
        for root in (RUN_ROOT, BPFFS_ROOT):
            if root.is_dir():
                names.update(p.name for p in root.iterdir() if self.name_re.match(p.name))
        return names

    def claim(self, lab: LabHandle) -> None:
        """Take the lab's name; mkdir is atomic, so two concurrent up()s cannot both own it."""
        exists = f"lab {lab.name} already exists; run `{self.down_command} {lab.name}`"
        if {lab.ns(role) for role in self.roles} & set(netns.listnetns()) or lab.pin_dir.exists():
            raise LabError(exists)
        RUN_ROOT.mkdir(parents=True, exist_ok=True)
        try:
            lab.dir.mkdir()
        except FileExistsError:
            raise LabError(exists) from None
        lab.bpffs_stage.mkdir()


@dataclass(frozen=True)
class LabHandle:
    """What every lab shape's handle shares: its run and pin directories, and
    running things in its namespaces. A subclass names the namespaces (ns)."""

    name: str

    def ns(self, role: str) -> str:
        raise NotImplementedError

    @property
    def dir(self) -> Path:
        return RUN_ROOT / self.name

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    @property
    def pin_dir(self) -> Path:
        return BPFFS_ROOT / self.name

    @property
    def bpffs_stage(self) -> Path:
        """Where spawn() binds the host's bpffs on its way into a namespace."""
        return self.dir / "bpffs"

    def iproute(self, role: str) -> IPRoute:
        # flags=0: pyroute2's default (O_CREAT) would silently create a missing namespace.
        return IPRoute(netns=self.ns(role), flags=0)

    def spawn(self, role: str, argv: list[str], **popen_kwargs) -> subprocess.Popen:
        """Start argv inside the role's namespace, with /sys/fs/bpf still the host's bpffs."""
        return subprocess.Popen(self._exec_argv(role, argv), **popen_kwargs)

    def run(self, role: str, argv: list[str], timeout: float = 10.0, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess:
        proc = self.spawn(role, argv, text=True, stdin=subprocess.PIPE if input is not None else None,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, argv, stdout, stderr)
        return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)

    def ifindex(self, role: str, ifname: str) -> int:
        with self.iproute(role) as ipr:
            return ifindex(ipr, ifname)

    def _exec_argv(self, role: str, argv: list[str]) -> list[str]:
        # `ip netns exec` remounts /sys for the namespace, which hides /sys/fs/bpf
        # and every pin in it (the daemon's, the fault maps). So bind the host
        # bpffs to a staging directory in a private mount namespace first, and
        # bind it back over the fresh /sys/fs/bpf once inside. The staging mount
        # is dropped again, so down() run from inside a lab can never recurse
        # into the host bpffs through it.
        outer = (
            'stage=$1; ns=$2; shift 2; mount --bind /sys/fs/bpf "$stage" && '
            "exec ip netns exec \"$ns\" sh -c "
            "'mount --bind \"$0\" /sys/fs/bpf && umount \"$0\" && exec \"$@\"' \"$stage\" \"$@\""
        )
        return ["unshare", "--mount", "--propagation", "slave", "--",
                "sh", "-c", outer, "twinpath-lab-exec", str(self.bpffs_stage), self.ns(role), *argv]


@dataclass(frozen=True)
class Lab(LabHandle):
    def ns(self, role: str) -> str:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        return f"{self.name}-{role}"

    @property
    def config_path(self) -> Path:
        return self.dir / "twinpath.toml"

    @property
    def gw_pin_dir(self) -> Path:
        """The daemon's pins (its config's state.pin_dir)."""
        return self.pin_dir / "gw"
