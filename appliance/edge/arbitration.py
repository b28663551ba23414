"""The edge to the arbitration program (ebpf/arbitrate.c): compiling it,
attaching it to both lines (XDP, pyroute2), writing feeds, reading counters
and events. Decisions about what the numbers mean live in appliance.core.feeds.

XDP programs stay attached when the daemon dies or stops, and keep
arbitrating on the state they have: fail static. The state (feeds, claims,
windows, counters) is pinned (appliance.edge.pins): the next daemon's
programs replace these in place and carry on from the same claims, so a
sequence delivered before a restart is not delivered again after it. A feed whose receiver MAC is unknown passes to
kernel routing (both copies reach the trader, whose handler skips repeats).
"""
from __future__ import annotations

import ctypes
import ipaddress
import threading
import time

from bcc import BPF
from pyroute2 import IPRoute

from appliance import layout
from appliance.edge.dataplane import load_pinned
from appliance.edge.netlink import attach_xdp
from appliance.edge.pins import PinDir

ARB_SOURCES = ["arbitrate.c"]
LINE_PROGRAMS = ("tp_arb_line_a", "tp_arb_line_b")  # line A = 0, line B = 1
TAIL_CALLS = "tp_arb_progs"      # the line programs' tail-call table (ebpf/lib/feed_maps.h)
CLEAR_PROGRAM = "tp_arb_clear"  # tp_arb_progs[2]: the rare paths' claim clearing (ebpf/lib/feed_maps.h)


def compile_arbiter(hb_dedup_ns: int, pins: PinDir | None = None) -> tuple[BPF, dict[str, int]]:
    """The dedup window is a compile-time constant, like the gateway's timers:
    no per-packet config lookup. Returns the module and the entries migrated
    per map (dataplane.load_pinned)."""
    return load_pinned(ARB_SOURCES, {"TP_HB_DEDUP_NS": f"{int(hb_dedup_ns)}ULL"}, pins)


def multicast_mac(group: ipaddress.IPv4Address) -> str:
    """RFC 1112: 01:00:5e + the group's low 23 bits."""
    low = int(group) & 0x7FFFFF
    return "01:00:5e:%02x:%02x:%02x" % (low >> 16, (low >> 8) & 0xFF, low & 0xFF)


def mono_to_real_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC, from the tightest of a few paired
    reads, so the data path can age MDP3 SendingTime with its one clock read."""
    best = None
    for _ in range(5):
        m0 = time.monotonic_ns()
        r = time.time_ns()
        m1 = time.monotonic_ns()
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, r - (m0 + m1) // 2)
    return best[1]


class Arbiter:
    """The loaded arbitration program and its maps."""

    def __init__(self, hb_dedup_ns: int, pins: PinDir | None = None):
        self.pins = pins
        self.bpf, self.migrated = compile_arbiter(hb_dedup_ns, pins)
        self.lines = [self.bpf.load_func(name, BPF.XDP) for name in LINE_PROGRAMS]
        self.clear = self.bpf.load_func(CLEAR_PROGRAM, BPF.XDP)
        # Tail-call targets: a session switch, a believed far-ahead sequence
        # or a claim sweep runs tp_arb_clear and the packet again on its line.
        progs = self.bpf[TAIL_CALLS]
        for i, fn in enumerate([*self.lines, self.clear]):
            progs[ctypes.c_int(i)] = ctypes.c_int(fn.fd)
        self._attached: list[int] = []
        # write_feed runs on the netlink thread (a receiver learnt) and on a
        # reload's: one rebuild of tp_feed_index at a time, or two could
        # fill the same spare table while one of them makes it live.
        self._index_lock = threading.Lock()

    # -- maps -------------------------------------------------------------
    @staticmethod
    def feed_key(addr: ipaddress.IPv4Address, port: int) -> layout.FeedKey:
        return layout.FeedKey(addr=int.from_bytes(addr.packed, "little"),
                              port=int.from_bytes(port.to_bytes(2, "big"), "little"))

    def write_feed(self, feed_id: int, protocol: str, addr: ipaddress.IPv4Address, port: int,
                   ifindex: int = 0, src_mac: str = "00:00:00:00:00:00", dst_mac: str | None = None) -> None:
        """A feed and where its winners go; without dst_mac it passes to the stack."""
        self.bpf["tp_feeds"][self.feed_key(addr, port)] = layout.Feed(
            id=feed_id, proto=layout.FEED_PROTOCOLS[protocol], ifindex=ifindex if dst_mac else 0,
            src_mac=layout.mac_array(src_mac), dst_mac=layout.mac_array(dst_mac))
        self._write_index()

    def _write_index(self) -> None:
        """tp_feed_index from tp_feeds: the spare table is filled, then made
        live, so a packet meets the old feeds or the new ones, never half of
        them."""
        with self._index_lock:
            feeds = [(layout.feed_index_key(k), layout.Feed.from_buffer_copy(v))
                     for k, v in self.bpf["tp_feeds"].items()]
            mult = layout.feed_index_mult([k for k, _ in feeds])
            tables, head_key = self.bpf["tp_feed_index"], ctypes.c_uint32(0)
            head = tables[head_key]
            spare = 2 if head.live == 1 else 1
            table = layout.FeedIndex(mult=mult)
            for key, feed in feeds:
                slot = table.slots[layout.feed_index_slot(key, mult)]
                slot.key, slot.feed = key | layout.FEED_SLOT_USED, feed
            tables[ctypes.c_uint32(spare)] = table
            head.live = spare
            tables[head_key] = head

    def feed_mac(self, addr: ipaddress.IPv4Address, port: int) -> str | None:
        """The receiver MAC a feed's entry holds (a pinned one: a previous
        daemon's), or None."""
        try:
            feed = self.bpf["tp_feeds"][self.feed_key(addr, port)]
        except KeyError:
            return None
        return ":".join(f"{b:02x}" for b in feed.dst_mac) if feed.ifindex else None

    def prune_feeds(self, keep: list[tuple[ipaddress.IPv4Address, int]]) -> list[str]:
        """Removes feeds a pinned map still has but the config does not;
        returns them as "addr:port"."""
        wanted = {bytes(self.feed_key(a, p)) for a, p in keep}
        table, gone = self.bpf["tp_feeds"], []
        for key in [k for k in table.keys() if bytes(k) not in wanted]:
            gone.append(f"{ipaddress.IPv4Address(key.addr.to_bytes(4, 'little'))}:"
                        f"{int.from_bytes(key.port.to_bytes(2, 'little'), 'big')}")
            del table[key]
        if gone:
            self._write_index()
        return gone

    def sync_clock(self) -> None:
        """Re-pairs CLOCK_REALTIME with CLOCK_MONOTONIC (NTP may step the first)."""
        self.bpf["tp_arb_config"][ctypes.c_uint32(0)] = layout.ArbConfig(mono_to_real_ns=mono_to_real_ns())

    def state(self, feed_id: int) -> layout.FeedState:
        return layout.FeedState.from_buffer_copy(self.bpf["tp_feed_state"][ctypes.c_uint32(feed_id)])

    def line_stats(self, feed_id: int, line: int) -> layout.LineStats:
        """Summed over CPUs."""
        total = layout.LineStats()
        for per_cpu in self.bpf["tp_line_stats"][ctypes.c_uint32(feed_id * layout.ARB_LINES + line)]:
            for name, _ in layout.LineStats._fields_:
                mine = getattr(per_cpu, name)
                if isinstance(mine, int):
                    setattr(total, name, getattr(total, name) + mine)
                else:
                    hist = getattr(total, name)
                    for i, n in enumerate(mine):
                        hist[i] += n
        return total

    def line_counters(self, feed_id: int, line: int, names) -> dict[str, int]:
        """The named scalar counters of one line, summed over CPUs: cheaper
        than line_stats() (no histograms), for frequent reads."""
        per_cpu = self.bpf["tp_line_stats"][ctypes.c_uint32(feed_id * layout.ARB_LINES + line)]
        return {name: sum(getattr(c, name) for c in per_cpu) for name in names}

    def global_stats(self) -> dict[str, dict[str, int]]:
        t = self.bpf["tp_arb_gstats"]
        n = len(layout.ARB_STATS)
        return {"AB"[line]: {name: sum(t[ctypes.c_uint32(line * n + i)]) for i, name in enumerate(layout.ARB_STATS)}
                for line in range(layout.ARB_LINES)}

    def open_events(self, callback) -> None:
        """callback(layout.ArbEvent) per gap, fill, session, session candidate,
        far-ahead or far-behind run and resync (layout.ARB_EVENTS); poll() delivers."""
        def _raw(_ctx, data, _size):
            callback(layout.ArbEvent.from_buffer_copy(ctypes.cast(data, ctypes.POINTER(layout.ArbEvent)).contents))
        self.bpf["tp_arb_events"].open_ring_buffer(_raw)

    def poll(self, timeout_ms: int) -> None:
        self.bpf.ring_buffer_poll(timeout_ms)

    # -- attachment -------------------------------------------------------
    def attach(self, ipr: IPRoute, line_devs: list[str]) -> None:
        for prog, dev in zip(self.lines, line_devs):
            self._attached.append(attach_xdp(ipr, dev, prog))
            if self.pins:
                self.pins.pin_program("xdp", self._attached[-1], prog.fd)
        if self.pins:
            self.pins.pin_tail_calls(TAIL_CALLS, self.bpf[TAIL_CALLS].map_fd)

    def attachments(self) -> set[tuple[str, int]]:
        """(hook, ifindex) of every program this arbiter attached, as pinned."""
        return {("xdp", int(idx)) for idx in self._attached}
