"""The edge between the daemon and the kernel fast path: compiling and loading
the programs (BCC), attaching them (pyroute2 tc), and reading/writing maps.

TC filters hold their own reference to the programs and maps, so forwarding
continues on the last written state if the daemon dies: fail static.
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
from appliance.edge import bpfsys
from appliance.edge.bpfsource import assemble
from appliance.edge.netlink import TC_EGRESS, TC_INGRESS, attach_bpf, detach_bpf, ifindex, tc_filter_prog_id

PROBE_IDENT = 0x7470        # ICMP echo identifier of twinpath probes ("tp")
FILTER_PRIO = 0x7470        # our tc filter priority, so detach removes only ours
SOL_RAW, ICMP_FILTER = 255, 1  # linux/icmp.h; Python's socket module lacks them
GATEWAY_SOURCES = ["steer.c", "heartbeat.c"]


def compile_gateway(interval_ns: int, dead_ns: int, ident: int = PROBE_IDENT) -> BPF:
    """Steer and heartbeat programs in one BCC module, sharing their maps.
    Timers are compile-time constants: no per-packet config lookup."""
    defines = {"TP_INTERVAL_NS": f"{interval_ns}ULL", "TP_DEAD_NS": f"{dead_ns}ULL", "TP_PROBE_IDENT": ident}
    return BPF(text=assemble(GATEWAY_SOURCES, defines).encode())


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

    def to_map(self) -> layout.Link:
        flags = (layout.LINK_CARRIER if self.carrier else 0) | (layout.LINK_NEXTHOP if self.dst_mac else 0) | \
            (layout.LINK_TTL_SECURITY if self.ttl_security else 0)
        return layout.Link(ifindex=self.ifindex, flags=flags,
                           src_mac=layout.mac_array(self.src_mac), dst_mac=layout.mac_array(self.dst_mac),
                           local=addr_u32(self.local), target=addr_u32(self.target))


class Gateway:
    """The loaded gateway programs and their maps, for one configuration."""

    def __init__(self, cfg: Config, bpf: BPF | None = None):
        self.cfg = cfg
        self.bpf = bpf or compile_gateway(cfg.heartbeat.interval_us * 1000, cfg.heartbeat.dead_ns)
        self.steer = self.bpf.load_func("tp_steer", BPF.SCHED_CLS)
        self.hb_egress = self.bpf.load_func("tp_hb_egress", BPF.SCHED_CLS)
        self.hb_ingress = self.bpf.load_func("tp_hb_ingress", BPF.SCHED_CLS)
        self._attached: list[tuple[int, str]] = []

    # -- maps -------------------------------------------------------------
    def write_link(self, link_id: int, state: LinkState) -> None:
        self.bpf["tp_links"][ctypes.c_uint32(link_id)] = state.to_map()

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

    def write_policy(self) -> None:
        """Classes, their preferred links and the rule trie, from the config."""
        cfg = self.cfg
        classes, active = self.bpf["tp_classes"], self.bpf["tp_active"]
        for cid, c in enumerate(cfg.classes):
            ids = [cfg.link_index(n) for n in c.links]
            classes[ctypes.c_uint32(cid)] = layout.Class(
                n_links=len(ids), links=(ctypes.c_uint32 * layout.MAX_LINKS)(*ids))
            active[ctypes.c_uint32(cid)] = ctypes.c_uint64(ids[0])
        trie = self.bpf["tp_rules"]
        for prefix, rules in compile_rules(cfg).items():
            value = layout.PrefixRules(n_rules=len(rules))
            for i, r in enumerate(rules):
                value.rules[i] = layout.Rule(proto=r.proto, class_id=r.class_id,
                                             port_lo=r.port_lo, port_hi=r.port_hi)
            key = layout.LpmKey(prefixlen=prefix.prefixlen,
                                addr=int.from_bytes(prefix.network_address.packed, "little"))
            trie[key] = value

    def previous_active(self, ipr: IPRoute) -> list[int] | None:
        """Each class's link as the steer program already attached (a previous
        daemon's, still forwarding on its last state) has it; None when there
        is none, or its maps' layout or classes differ from ours: a changed
        configuration starts from the preferred links."""
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
            ours = self.bpf["tp_classes"]
            links = []
            for cid in range(len(self.cfg.classes)):
                theirs, where = layout.Class(), ctypes.c_uint64()
                bpfsys.map_lookup(classes[0], ctypes.c_uint32(cid), theirs)
                bpfsys.map_lookup(active[0], ctypes.c_uint32(cid), where)
                if bytes(theirs) != bytes(ours[ctypes.c_uint32(cid)]) or where.value not in theirs.links[:theirs.n_links]:
                    return None
                links.append(where.value)
            return links
        finally:
            for fd, _, _ in maps.values():
                os.close(fd)

    def set_active(self, class_id: int, link_id: int) -> None:
        self.bpf["tp_active"][ctypes.c_uint32(class_id)] = ctypes.c_uint64(link_id)

    def active(self) -> list[int]:
        t = self.bpf["tp_active"]
        return [t[ctypes.c_uint32(c)].value for c in range(len(self.cfg.classes))]

    def health(self) -> list[layout.Health]:
        t = self.bpf["tp_health"]
        return [layout.Health.from_buffer_copy(t[ctypes.c_uint32(i)]) for i in range(len(self.cfg.links))]

    def rtt_ring(self, link_id: int) -> layout.RttRing:
        """The link's last TP_RTT_RING accepted replies (one map read)."""
        return layout.RttRing.from_buffer_copy(self.bpf["tp_rtt_ring"][ctypes.c_uint32(link_id)])

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
        """callback(layout.Event) for each reflex failover; poll() delivers."""
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
        switches nothing), or traffic takes kernel routing."""
        self._attach_one(ipr, self.cfg.steer.ingress, TC_INGRESS, self.steer)

    def _attach_one(self, ipr: IPRoute, dev: str, parent: str, fn) -> None:
        self._attached.append((attach_bpf(ipr, dev, parent, fn, FILTER_PRIO), parent))

    def detach(self, ipr: IPRoute) -> None:
        """Removes our filters only; traffic returns to kernel routing."""
        for idx, parent in reversed(self._attached):
            detach_bpf(ipr, idx, parent, FILTER_PRIO)
        self._attached.clear()


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
