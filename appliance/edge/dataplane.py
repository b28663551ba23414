"""The edge between the daemon and the kernel fast path: compiling and loading
the programs (BCC), attaching them (pyroute2 tc), and reading/writing maps.

TC filters hold their own reference to the programs and maps, so forwarding
continues on the last written state if the daemon dies or stops: fail
static. The maps are pinned (appliance.edge.pins), so the next daemon
compiles against the same state and replaces each program in place (tc
replace: there is no moment without one).
"""
from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
from dataclasses import dataclass

from bcc import BPF
from pyroute2 import IPRoute

from appliance import layout
from appliance.core.classify import compile_rules
from appliance.core.config import Config
from appliance.core.links import WakeBounds
from appliance.edge import bpfsys, probesender
from appliance.edge.bpfsource import assemble
from appliance.edge.netlink import (
    TC_EGRESS,
    TC_INGRESS,
    attach_bpf,
    attach_xdp,
    detach_bpf,
    detach_xdp,
    ifindex,
    remove_clsact_if_empty,
    tc_filter_prog_id,
)
from appliance.edge.pins import PinDir, declared_maps

PROBE_IDENT = 0x7470        # ICMP echo identifier of twinpath probes ("tp")
FILTER_PRIO = 0x7470        # our tc filter priority, so detach removes only ours
SOL_RAW, ICMP_FILTER = 255, 1  # linux/icmp.h; Python's socket module lacks them
GATEWAY_SOURCES = ["steer.c", "steer_xdp.c", "heartbeat.c"]


def compile_gateway(interval_ns: int, dead_ns: int, ident: int = PROBE_IDENT, pins: PinDir | None = None) -> BPF:
    """Steer and heartbeat programs in one BCC module, sharing their maps.
    Timers are compile-time constants: no per-packet config lookup. With
    `pins`, the maps are the pinned ones (see load_pinned)."""
    defines = {"TP_INTERVAL_NS": f"{interval_ns}ULL", "TP_DEAD_NS": f"{dead_ns}ULL", "TP_PROBE_IDENT": ident}
    return load_pinned(GATEWAY_SOURCES, defines, pins)[0]


def load_pinned(sources: list[str], defines: dict, pins: PinDir | None) -> tuple[BPF, dict[str, int]]:
    """A BCC module whose maps are pinned in `pins` (reused, created, or
    migrated from an older layout: appliance.edge.pins), and the entries
    migrated per map. Without pins, a module with maps of its own."""
    if pins is None:
        return BPF(text=assemble(sources, defines).encode()), {}
    text = assemble(sources, {**defines, "TP_PIN_DIR": f'"{pins.path}"'})
    declared = declared_maps(text)
    plan = pins.plan(declared)
    bpf = BPF(text=text.encode())
    return bpf, pins.adopt(bpf, declared, plan)


def addr_u32(addr: ipaddress.IPv4Address | None) -> int:
    """An IPv4 address as the u32 a BPF program reads from a packet (network order)."""
    return int.from_bytes(addr.packed, "little") if addr else 0


@dataclass
class LinkState:
    """What the daemon knows of a link from the config and netlink."""
    ifindex: int
    src_mac: str
    dst_mac: str | None = None
    carrier: bool = False
    local: ipaddress.IPv4Address | None = None    # probes leave from it
    target: ipaddress.IPv4Address | None = None   # replies must come from it
    ttl_security: bool = False
    xdp_target: bool = False   # the device takes XDP redirects (netlink.XdpTargets)

    def to_map(self) -> layout.Link:
        flags = (layout.LINK_CARRIER if self.carrier else 0) | (layout.LINK_NEXTHOP if self.dst_mac else 0) | \
            (layout.LINK_TTL_SECURITY if self.ttl_security else 0) | (layout.LINK_XDP_XMIT if self.xdp_target else 0)
        return layout.Link(ifindex=self.ifindex, flags=flags,
                           src_mac=layout.mac_array(self.src_mac), dst_mac=layout.mac_array(self.dst_mac),
                           local=addr_u32(self.local), target=addr_u32(self.target))


class Gateway:
    """The loaded gateway programs and their maps, for one configuration."""

    def __init__(self, cfg: Config, bpf: BPF | None = None, pins: PinDir | None = None):
        self.cfg = cfg
        self.pins = pins
        self.migrated: dict[str, int] = {}
        if bpf is None:
            bpf, self.migrated = load_pinned(GATEWAY_SOURCES, {
                "TP_INTERVAL_NS": f"{cfg.heartbeat.interval_us * 1000}ULL",
                "TP_DEAD_NS": f"{cfg.heartbeat.dead_ns}ULL", "TP_PROBE_IDENT": PROBE_IDENT}, pins)
        self.bpf = bpf
        self.steer = self.bpf.load_func("tp_steer", BPF.SCHED_CLS)
        self.steer_xdp = self.bpf.load_func("tp_steer_xdp", BPF.XDP)
        self.hb_egress = self.bpf.load_func("tp_hb_egress", BPF.SCHED_CLS)
        self.hb_ingress = self.bpf.load_func("tp_hb_ingress", BPF.SCHED_CLS)
        self._attached: list[tuple[int, str]] = []
        self._xdp_attached: int | None = None
        # The maps the daemon reads every probe period, from its tick and its
        # pair thread, and the gate a takeover opens.
        n_links = len(cfg.links)
        self._health = self._array("tp_health", layout.Health, n_links)
        self._rings = self._array("tp_rtt_ring", layout.RttRing, n_links)
        self._active = self._array("tp_active", ctypes.c_uint64, len(cfg.classes))
        self._gate = self._array("tp_pair", layout.Pair, 1)
        self._wake = self._array("tp_wake", layout.Wake, n_links)

    def _array(self, name: str, value_type: type, n: int) -> bpfsys.ArrayMap:
        table = self.bpf[name]
        return bpfsys.ArrayMap(table.map_fd, value_type, n, ctypes.sizeof(table.Leaf))

    # -- maps -------------------------------------------------------------
    def write_link(self, link_id: int, state: LinkState) -> None:
        self.bpf["tp_links"][ctypes.c_uint32(link_id)] = state.to_map()

    def pinned_nexthop(self, link_id: int, ifindex: int) -> str | None:
        """The next-hop MAC the link's (pinned) entry holds for this device, or None."""
        entry = self.bpf["tp_links"][ctypes.c_uint32(link_id)]
        if entry.ifindex != ifindex or not entry.flags & layout.LINK_NEXTHOP:
            return None
        return ":".join(f"{b:02x}" for b in entry.dst_mac)

    def write_keys(self, keys) -> None:
        """Heartbeat MAC keys (appliance.edge.keys.HeartbeatKey): the first signs,
        all verify. Slots left over are emptied."""
        if not 1 <= len(keys) <= layout.KEY_SLOTS:
            raise ValueError(f"need 1..{layout.KEY_SLOTS} heartbeat keys, got {len(keys)}")
        table = self.bpf["tp_keys"]
        for slot in range(layout.KEY_SLOTS):
            value = layout.Key()
            if slot < len(keys):
                k = keys[slot]
                value = layout.Key(k0=int.from_bytes(k.key[:8], "little"), k1=int.from_bytes(k.key[8:], "little"),
                                   id=k.id)
            table[ctypes.c_uint32(slot)] = value

    def class_value(self, class_id: int) -> layout.Class:
        """A class's tp_classes entry as the config has it."""
        ids = [self.cfg.link_index(n) for n in self.cfg.classes[class_id].links]
        return layout.Class(n_links=len(ids), links=(ctypes.c_uint32 * layout.MAX_LINKS)(*ids))

    def write_policy(self, active: list[int]) -> None:
        """Classes, each class's current link (`active`: the preferred
        links, or those of the data path a restart adopted) and the rule
        trie, from the config."""
        for cid in range(len(self.cfg.classes)):
            self.write_class(cid, active[cid])
        self.write_rules()

    def write_class(self, class_id: int, link_id: int) -> None:
        """A class's links from the config, and its current link."""
        self.bpf["tp_classes"][ctypes.c_uint32(class_id)] = self.class_value(class_id)
        self.set_active(class_id, link_id)

    def write_rules(self) -> None:
        """The rules as the config has them, in the trie and, while they fit,
        in the small table steer reads first (lib/layout.h). The trie: every
        prefix written, then the prefixes it no longer has (a pinned trie's,
        or before a reload) deleted. The table: the spare one filled, then
        made live. A packet meanwhile matches either rule set, never none."""
        compiled = {prefix: self._prefix_rules(rules) for prefix, rules in compile_rules(self.cfg).items()}
        trie = self.bpf["tp_rules"]
        keep = set()
        for prefix, value in compiled.items():
            key = layout.LpmKey(prefixlen=prefix.prefixlen,
                                addr=int.from_bytes(prefix.network_address.packed, "little"))
            trie[key] = value
            keep.add(bytes(key))
        for key in [k for k in trie.keys() if bytes(k) not in keep]:
            del trie[key]
        self._write_prefix_table(compiled)

    @staticmethod
    def _prefix_rules(rules) -> layout.PrefixRules:
        value = layout.PrefixRules(n_rules=len(rules))
        for i, r in enumerate(rules):
            value.rules[i] = layout.Rule(proto=r.proto, class_id=r.class_id, port_lo=r.port_lo, port_hi=r.port_hi)
        return value

    def _write_prefix_table(self, compiled: dict) -> None:
        tables, head_key = self.bpf["tp_prefix_table"], ctypes.c_uint32(0)
        head = tables[head_key]
        if len(compiled) > layout.SMALL_PREFIXES:
            head.live = 0
        else:
            spare = 2 if head.live == 1 else 1
            table = layout.PrefixTable(n=len(compiled))
            for slot, prefix in zip(table.slots, sorted(compiled, key=lambda p: -p.prefixlen)):
                slot.addr = int.from_bytes(prefix.network_address.packed, "little")
                slot.mask = int.from_bytes(prefix.netmask.packed, "little")
                slot.rules = compiled[prefix]
            tables[ctypes.c_uint32(spare)] = table
            head.live = spare
        tables[head_key] = head

    def preferred_active(self) -> list[int]:
        return [self.cfg.link_index(c.links[0]) for c in self.cfg.classes]

    def reset_probe_rounds(self, last_seq: int) -> None:
        """Before a new sender's first round (its sequences continue from
        `last_seq`): no link owes the previous sender's rounds (lib/reflex.h's
        missed-round rule reads stamped_seq against tp_probe_round)."""
        health, zero = self.bpf["tp_health"], ctypes.c_uint32(0)
        for i in range(len(self.cfg.links)):
            h = health[ctypes.c_uint32(i)]   # BCC's own view: the whole value, whatever this build's layout
            h.unanswered, h.stamped_seq = 0, last_seq
            health[ctypes.c_uint32(i)] = h
        rounds = self.bpf["tp_probe_round"]
        r = rounds[zero]
        r.seq, r.started_ns = last_seq, 0   # the egress program stamps our first round
        rounds[zero] = r

    def previous_active(self, ipr: IPRoute) -> list[int] | None:
        """Each class's link as the steer program already attached (a previous
        daemon's, still forwarding on its last state) has it; None when there
        is none, or its maps' layout or classes differ from the config's: a
        changed configuration starts from the preferred links. Read before
        write_policy, which writes the pinned maps that program may share."""
        idx = ifindex(ipr, self.cfg.steer.ingress)
        prog_id = tc_filter_prog_id(ipr, idx, TC_INGRESS, FILTER_PRIO)
        if not prog_id:
            return None
        try:
            prog_fd = bpfsys.prog_fd_by_id(prog_id)
        except FileNotFoundError:
            return None
        try:
            maps = bpfsys.prog_maps(prog_fd)
        finally:
            os.close(prog_fd)
        try:
            classes, active = maps.get("tp_classes"), maps.get("tp_active")
            if not classes or not active or classes[1:] != (4, ctypes.sizeof(layout.Class)) or \
                    active[1:] != (4, ctypes.sizeof(ctypes.c_uint64)):
                return None
            links = []
            for cid in range(len(self.cfg.classes)):
                theirs, where = layout.Class(), ctypes.c_uint64()
                bpfsys.map_lookup(classes[0], ctypes.c_uint32(cid), theirs)
                bpfsys.map_lookup(active[0], ctypes.c_uint32(cid), where)
                if bytes(theirs) != bytes(self.class_value(cid)) or where.value not in theirs.links[:theirs.n_links]:
                    return None
                links.append(where.value)
            return links
        finally:
            for fd, _, _ in maps.values():
                os.close(fd)

    def set_active(self, class_id: int, link_id: int) -> None:
        self.bpf["tp_active"][ctypes.c_uint32(class_id)] = ctypes.c_uint64(link_id)

    def active(self) -> list[int]:
        return [v.value for v in self._active.read()]

    def pair(self) -> layout.Pair:
        return self._gate.read()[0]

    def write_pair(self, mode: int, token: int) -> None:
        """The gate's mode and token; its fenced counter carries on."""
        gate = self.pair()
        gate.mode, gate.token = mode, token
        self._gate.write(0, gate)

    def health(self) -> list[layout.Health]:
        return self._health.read()

    def arm_wake(self, wakes: list[WakeBounds]) -> None:
        """Each link's bounds beyond which its next accepted reply wakes
        the daemon (ebpf/lib/wake.h): one event, which disarms it."""
        self._wake.write_all([layout.Wake(*wake, armed=1) for wake in wakes])

    def rtt_rings(self) -> list[layout.RttRing]:
        """Each link's last TP_RTT_RING accepted replies (one map read each)."""
        return self._rings.read()

    def rtt_histogram(self, link_id: int) -> list[int]:
        t = self.bpf["tp_rtt_hist"]
        base = link_id * layout.HIST_BUCKETS
        return [sum(t[ctypes.c_uint32(base + b)]) for b in range(layout.HIST_BUCKETS)]

    def counters(self, class_id: int, link_id: int) -> dict[str, int]:
        per_cpu = self.bpf["tp_steer_stats"][ctypes.c_uint32(class_id * layout.MAX_LINKS + link_id)]
        return {f: sum(getattr(c, f) for c in per_cpu) for f, _ in layout.Counters._fields_}

    def global_stats(self) -> dict[str, int]:
        t = self.bpf["tp_gstats"]
        return {name: sum(t[ctypes.c_uint32(i)]) for i, name in enumerate(layout.STATS)}

    def open_events(self, callback) -> None:
        """callback(layout.Event) for each reflex failover and each wake
        (cause layout.CAUSE_WAKE); poll() delivers."""
        def _raw(_ctx, data, _size):
            callback(ctypes.cast(data, ctypes.POINTER(layout.Event)).contents)
        self.bpf["tp_events"].open_ring_buffer(_raw)

    def poll(self, timeout_ms: int) -> None:
        self.bpf.ring_buffer_poll(timeout_ms)

    # -- attachment -------------------------------------------------------
    def attach_heartbeats(self, ipr: IPRoute) -> None:
        """Heartbeat programs on every link: the first half of a start."""
        for link in self.cfg.links:
            self._attach_one(ipr, link.dev, TC_EGRESS, self.hb_egress)
            self._attach_one(ipr, link.dev, TC_INGRESS, self.hb_ingress)

    def attach_steer(self, ipr: IPRoute) -> None:
        """Steering on the ingress, once every link has answered (or the
        daemon stopped waiting): the reflex then starts from real replies,
        never moving a class because one link's first reply beat another's.
        Until then a previous daemon's steer program, if any, keeps
        forwarding on its last state (its links all age together, so it
        switches nothing), or traffic takes kernel routing.

        Then, with steer.xdp, the XDP program in front of it (TC first: XDP
        passes TC whatever it does not forward). Returns why XDP steering is
        off, or None: a device without native XDP keeps TC steering alone."""
        self._attach_one(ipr, self.cfg.steer.ingress, TC_INGRESS, self.steer)
        if not self.cfg.steer.xdp:
            return "steer.xdp = false"
        try:
            self._xdp_attached = attach_xdp(ipr, self.cfg.steer.ingress, self.steer_xdp)
        except OSError as e:
            return f"{self.cfg.steer.ingress}: no native XDP ({e})"
        if self.pins:
            self.pins.pin_program("xdp", self._xdp_attached, self.steer_xdp.fd)
        return None

    def attachments(self) -> set[tuple[str, int]]:
        """(hook, ifindex) of every program this gateway attached, as pinned."""
        ours = {(TC_HOOKS[parent], int(idx)) for idx, parent in self._attached}
        if self._xdp_attached is not None:
            ours.add(("xdp", int(self._xdp_attached)))
        return ours

    def _attach_one(self, ipr: IPRoute, dev: str, parent: str, fn) -> None:
        attached = attach_bpf(ipr, dev, parent, fn, FILTER_PRIO)
        if self.pins:
            self.pins.pin_program(TC_HOOKS[parent], attached, fn.fd)
            if attached.created_qdisc:
                self.pins.note_qdisc(attached)
        self._attached.append((attached, parent))


TC_HOOKS = {TC_INGRESS: "tc-ingress", TC_EGRESS: "tc-egress"}


def detach_all(ipr: IPRoute, pins: PinDir) -> list[str]:
    """Everything twinpath added to this gateway, as its pins record it:
    the probe sender, each program still attached where it was pinned from (one another tool
    has put there since is left), each clsact qdisc twinpath created once no
    filter is left on it, and the pins. Returns what was removed."""
    if not pins.path.is_dir():
        return []
    pins.open()
    removed = []
    sender = probesender.stop_recorded(pins)
    if sender:
        removed.append(f"probe sender pid {sender}")
    for hook, idx, prog_id in pins.programs():
        if _detach_pinned(ipr, hook, idx, prog_id):
            removed.append(f"{hook} program {prog_id} on ifindex {idx}")
    for idx in pins.qdiscs():
        if remove_clsact_if_empty(ipr, idx):
            removed.append(f"clsact qdisc on ifindex {idx}")
    removed.append(f"{len(pins.pins())} pinned maps and programs under {pins.path}")
    pins.remove()
    return removed


def detach_stale(ipr: IPRoute, pins: PinDir, ours: set[tuple[str, int]], tail_calls: set[str]) -> list[str]:
    """A previous daemon's programs where this one attached none (a device
    the config no longer names, arbitration or XDP steering turned off), and
    tail-call tables no program of ours uses: detached (matched by program
    id) and unpinned. Left attached, they went on forwarding and arbitrating
    on the old config. Call it once every program of ours is attached."""
    removed = []
    for hook, idx, prog_id in pins.programs():
        if (hook, idx) in ours:
            continue
        if _detach_pinned(ipr, hook, idx, prog_id):
            removed.append(f"{hook} program {prog_id} on ifindex {idx}")
        pins.unpin_program(hook, idx)
    for table in pins.tail_call_tables() - tail_calls:
        pins.unpin_tail_calls(table)
        removed.append(f"tail-call table {table}")
    return removed


def _detach_pinned(ipr: IPRoute, hook: str, idx: int, prog_id: int) -> bool:
    """Removes the pinned program `prog_id` from where it was attached, if it
    is still there; another tool's program in its place is left."""
    if hook == "xdp":
        return detach_xdp(ipr, idx, prog_id)
    parent = next(p for p, h in TC_HOOKS.items() if h == hook)
    return detach_bpf(ipr, idx, parent, FILTER_PRIO, prog_id)


def open_probe_socket(dev: str, local: ipaddress.IPv4Address, target: ipaddress.IPv4Address) -> socket.socket:
    """A raw ICMP socket that sends only on `dev`, from `local` (the address
    the egress program signs and the ingress program expects replies to),
    and receives nothing: replies are consumed by tp_hb_ingress before the
    stack sees them."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
    s.bind((str(local), 0))
    s.setsockopt(SOL_RAW, ICMP_FILTER, (0xFFFFFFFF).to_bytes(4, "little"))  # deliver no ICMP type
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, 6)  # ahead of bulk traffic in qdiscs
    s.connect((str(target), 0))
    return s
