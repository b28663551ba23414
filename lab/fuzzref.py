"""Pure-Python references of the product BPF programs, for the fuzz harness
(lab/fuzz.py): given a frame, the maps' state and the kernel
clock's bounds around the call, what the program must return, what bytes it
must leave, and which counters it must move.

Written from the specification, not from the C: each reference reads only the
bytes the specification says matter, so a mutation of anything else must not
change the outcome. No kernel, no BCC: everything here runs unprivileged.

Conventions:
  - an Expect says the verdict, the output bytes (None: untouched) or a
    function that checks an output the reference cannot predict byte for
    byte (egress: the kernel's tx_ns), and the counter the frame moves;
  - `before`/`after` are CLOCK_MONOTONIC just before and after the
    BPF_PROG_TEST_RUN call, so the kernel's `now` lies between them. A rule
    whose outcome depends on where in that interval `now` fell is reported as
    ambiguous and resolved by looking at the kernel's state (rare: the
    generators keep clear of the boundaries).
"""
from __future__ import annotations

import ctypes
import ipaddress
import struct
from dataclasses import dataclass
from typing import Callable

from appliance import layout
from lab.siphash import siphash24_words

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
XDP_DROP, XDP_PASS, XDP_REDIRECT = 1, 2, 4
VERDICT_NAMES = {"tc": {0: "TC_ACT_OK", 2: "TC_ACT_SHOT", 7: "TC_ACT_REDIRECT"},
                 "xdp": {1: "XDP_DROP", 2: "XDP_PASS", 4: "XDP_REDIRECT"}}
REFUSED = -1                # BPF_PROG_TEST_RUN refused the frame (EINVAL) before any program ran

ETH_HLEN = 14
IP_OFF = 14
M64 = (1 << 64) - 1
MAX_LINKS = layout.MAX_LINKS
PROBE_MAGIC = layout.C["TP_PROBE_MAGIC"]
PROBE_VERSION = layout.C["TP_PROBE_VERSION"]
REPLAY_WINDOW = layout.REPLAY_WINDOW

# The probe frame: Ethernet, a 20-byte IPv4 header, the 8-byte echo header,
# struct tp_probe (native little-endian). Offsets in the frame.
ICMP_OFF = 34
PROBE_OFF = ICMP_OFF + 8
PROBE = struct.Struct("<IHHQQB7sQ")         # magic version link seq tx_ns key_id _pad mac
assert PROBE.size == ctypes.sizeof(layout.Probe) == 40
PROBE_FRAME_LEN = PROBE_OFF + PROBE.size    # 82
PROBE_IP_LEN = 20 + 8 + PROBE.size          # 68: tot_len of every probe
OFF_MAGIC, OFF_VERSION, OFF_LINK = PROBE_OFF, PROBE_OFF + 4, PROBE_OFF + 6
OFF_SEQ, OFF_TX, OFF_KEY_ID, OFF_PAD, OFF_MAC = PROBE_OFF + 8, PROBE_OFF + 16, PROBE_OFF + 24, PROBE_OFF + 25, \
    PROBE_OFF + 32
_U16BE = struct.Struct(">H")
_U16LE = struct.Struct("<H")
_U32LE = struct.Struct("<I")
_U64LE = struct.Struct("<Q")
_HDR_WORDS = {n: struct.Struct(f">{n}H") for n in range(1, 64)}   # up to 126-byte sums
_ICMP_WORDS = struct.Struct(">24H")


# -- checksums ----------------------------------------------------------------
def fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ones_sum(buf, off: int, length: int) -> int:
    """The folded one's complement sum of `length` (even) bytes at `off`."""
    n = length // 2
    st = _HDR_WORDS.get(n) or struct.Struct(f">{n}H")
    return fold(sum(st.unpack_from(buf, off)))


def csum_ok(buf, off: int, length: int) -> bool:
    return ones_sum(buf, off, length) == 0xFFFF


def csum_fill(buf: bytearray, off: int, length: int, check_off: int) -> None:
    """Writes the Internet checksum of buf[off:off+length] (with the field at
    check_off zeroed first) into that field."""
    buf[check_off] = buf[check_off + 1] = 0
    _U16BE.pack_into(buf, check_off, ~ones_sum(buf, off, length) & 0xFFFF)


# -- the shared IPv4 validation (lib/parse.h) ---------------------------------
IP_OK, IP_NOT_IPV4, IP_MALFORMED, IP_OPTIONS = 0, 1, 2, 3

# The one rule for IP options (lib/parse.h): a header with options is never
# fast-pathed, and its checksum is not checked (the stack does that); only
# version and lengths are.


def ipv4_status(f, n: int) -> int:
    """What lib/parse.h's tp_ipv4() says of the frame: not IPv4, a header
    ip_rcv() rejects (version, IHL, lengths, checksum), options (left to
    the stack), or OK (a valid 20-byte header)."""
    if n < ETH_HLEN or f[12] != 0x08 or f[13] != 0x00:
        return IP_NOT_IPV4
    if n < ETH_HLEN + 20:
        return IP_MALFORMED
    vihl = f[14]
    ihl4 = (vihl & 15) * 4
    tot = (f[16] << 8) | f[17]
    if vihl >> 4 != 4 or ihl4 < 20 or tot < ihl4 or tot > n - ETH_HLEN:
        return IP_MALFORMED
    if ihl4 != 20:
        return IP_OPTIONS
    return IP_OK if csum_ok(f, IP_OFF, 20) else IP_MALFORMED


def is_fragment(f) -> bool:
    return bool(((f[20] << 8) | f[21]) & 0x3FFF)


def test_run_refuses(hook: str, frame) -> bool:
    """Whether BPF_PROG_TEST_RUN returns EINVAL before running the program
    (measured on 6.x: every hook needs an Ethernet header; for skb programs
    eth_type_trans() + the test-run's header pull need a whole IPv4 or IPv6
    header after it)."""
    n = len(frame)
    if n < ETH_HLEN:
        return True
    if hook == "tc":
        et = (frame[12] << 8) | frame[13]
        if (et == 0x0800 and n < 34) or (et == 0x86DD and n < 54):
            return True
    return False


# -- map models ---------------------------------------------------------------
@dataclass
class LinkModel:
    """tp_links[i] as the fixture writes it."""
    ifindex: int = 0
    flags: int = 0
    src_mac: bytes = bytes(6)
    dst_mac: bytes = bytes(6)
    local: bytes = bytes(4)      # network order, as in the packet
    target: bytes = bytes(4)

    def to_map(self) -> layout.Link:
        u8x6 = layout.u8 * 6
        return layout.Link(ifindex=self.ifindex, flags=self.flags, src_mac=u8x6(*self.src_mac),
                           dst_mac=u8x6(*self.dst_mac), local=int.from_bytes(self.local, "little"),
                           target=int.from_bytes(self.target, "little"))


@dataclass
class KeyModel:
    """tp_keys[slot]: id 0 is an empty slot."""
    id: int = 0
    key: bytes = bytes(16)

    @property
    def words(self) -> tuple[int, int]:
        return int.from_bytes(self.key[:8], "little"), int.from_bytes(self.key[8:], "little")

    def to_map(self) -> layout.Key:
        k0, k1 = self.words
        return layout.Key(k0=k0, k1=k1, id=self.id)


class MacCache:
    """SipHash-2-4 of probe MACs, memoised: mutations mostly leave the MAC'd
    fields alone, so a frame's MAC is usually one already computed."""

    def __init__(self, limit: int = 200_000):
        self._cache: dict = {}
        self._limit = limit

    def mac(self, k0: int, k1: int, local: bytes, target: bytes, link: int, key_id: int,
            seq: int, tx_ns: int) -> int:
        m0 = int.from_bytes(local + target, "little")
        m1 = link | key_id << 16 | PROBE_VERSION << 24
        key = (k0, k1, m0, m1, seq, tx_ns)
        v = self._cache.get(key)
        if v is None:
            if len(self._cache) >= self._limit:
                self._cache.clear()
            v = self._cache[key] = siphash24_words(k0, k1, m0, m1, seq, tx_ns)
        return v


@dataclass
class Expect:
    verdict: int
    out: bytes | None = None                     # None: the output must equal the input
    stat: str | None = None                      # tp_gstats / tp_arb_gstats counter the frame moves
    out_check: Callable[[bytes], str | None] | None = None   # instead of `out`: None if acceptable
    ambiguous: object = None                     # resolved by the harness (see the module docstring)
    extra_check: Callable[[], str | None] | None = None   # after the call: state the kernel must show
    extra: object = None                         # reference detail for the harness (arbitration: feed, line, events)
    why: str = ""                                # which rule decided, for mismatch reports

    def describe(self, hook: str) -> dict:
        d = {"verdict": "either" if self.verdict == ANY else VERDICT_NAMES[hook].get(self.verdict, self.verdict),
             "rule": self.why}
        if self.stat:
            d["stat"] = self.stat
        if self.out_check is None:
            d["out"] = "untouched" if self.out is None else self.out.hex()
        return d


# -- tp_steer -----------------------------------------------------------------
class FastClassifier:
    """appliance.core.classify.lookup() on a compiled table, without ipaddress
    objects in the loop (tests/unit checks the two agree)."""

    def __init__(self, table: dict):
        rows = []
        for prefix, rules in table.items():
            mask = (0xFFFFFFFF << (32 - prefix.prefixlen)) & 0xFFFFFFFF
            rows.append((prefix.prefixlen, int(prefix.network_address), mask,
                         tuple((r.proto, r.class_id, r.port_lo, r.port_hi) for r in rules)))
        rows.sort(key=lambda r: -r[0])
        self._rows = [r[1:] for r in rows]

    def lookup(self, dst: int, proto: int, dport: int) -> int | None:
        port = dport if proto in (6, 17) else 0
        for net, mask, rules in self._rows:
            if dst & mask == net:
                for rproto, cid, lo, hi in rules:
                    if (rproto == 0 or rproto == proto) and lo <= port <= hi:
                        return cid
                return None
        return None


class SteerRef:
    """tp_steer: classification, reflex link choice and the router's hop.

    The reflex (lib/reflex.h) is modelled for the static health the harness
    keeps (every link's last reply written at one instant, refreshed well
    inside the dead interval), so its outcome is a function of the flags.
    The sender's first round (tp_round.started_ns, stamped by the egress
    cases) only ever moves a silence's start later, so with every reply
    fresh it changes nothing here; tests/kernel/test_steer.py covers it."""

    def __init__(self, table: dict, links: list[LinkModel], classes: list[list[int]], active: list[int],
                 dead_ns: int, interval_ns: int):
        self.cls = FastClassifier(table)
        self.links = links
        self.classes = classes
        self.active = list(active)
        self.dead_ns = dead_ns
        self.lead_ns = dead_ns - interval_ns
        multiple = dead_ns // interval_ns
        self.missed_probes = multiple - 1 if multiple > 2 else 2
        self.last_reply = [0] * MAX_LINKS        # tp_health[i].last_reply_ns, as the harness wrote it
        self.unanswered = [0] * MAX_LINKS        # tp_health[i].unanswered, likewise
        self.stats = dict.fromkeys(layout.STATS, 0)
        self.steer_stats: dict[tuple[int, int], list[int]] = {}   # (class, link) -> packets bytes redirects failovers
        self.failover_events: list[tuple[int, int, int]] = []

    def _fresh(self, link: int, now: int, current: bool = False) -> tuple[bool, int]:
        """(fresh, cause) as tp_link_fresh; cause 1 heartbeat, 2 carrier."""
        l = self.links[link]
        last = self.last_reply[link]
        if not l.flags & layout.LINK_CARRIER:
            return False, 2
        if not l.flags & layout.LINK_NEXTHOP:
            return False, 1
        if last and now - last <= self.dead_ns:
            return True, 1
        return current and self.unanswered[link] < self.missed_probes, 1

    def _select(self, class_id: int, before: int, after: int) -> int:
        outcome = {self._select_at(class_id, t) for t in (before, after)}
        if len(outcome) != 1:
            raise AssertionError(f"steer reference: link freshness changed during one call "
                                 f"(class {class_id}); the harness must refresh health sooner")
        link, stale, failover = outcome.pop()
        if failover is not None:
            frm, to = failover
            self.active[class_id] = to
            self._counter(class_id, frm)[3] += 1
            self.failover_events.append((class_id, frm, to))
        if stale:
            self.stats["all_stale"] += 1
        return link

    def _select_at(self, class_id: int, now: int):
        cur = self.active[class_id]
        fresh, cause = self._fresh(cur, now, current=True)
        if fresh:
            return cur, False, None
        cur_last = self.last_reply[cur]
        for cand in self.classes[class_id]:
            if cand == cur or not self._fresh(cand, now)[0]:
                continue
            if cause == 1 and self.last_reply[cand] < cur_last + self.lead_ns:
                continue
            return cand, False, (cur, cand)
        return cur, True, None

    def _counter(self, class_id: int, link: int) -> list[int]:
        c = self.steer_stats.get((class_id, link))
        if c is None:
            c = self.steer_stats[(class_id, link)] = [0, 0, 0, 0]
        return c

    def expect(self, f: bytes, before: int, after: int) -> Expect:
        n = len(f)
        st = ipv4_status(f, n)
        if st == IP_NOT_IPV4:
            self.stats["not_ipv4"] += 1
            return Expect(TC_ACT_OK, stat="not_ipv4", why="not an IPv4 ethertype")
        if st == IP_MALFORMED:
            self.stats["malformed"] += 1
            return Expect(TC_ACT_OK, stat="malformed", why="IPv4 header ip_rcv() rejects")
        if st == IP_OPTIONS:
            self.stats["unparsed"] += 1
            return Expect(TC_ACT_OK, stat="unparsed", why="IP options")
        if is_fragment(f):
            self.stats["unparsed"] += 1
            return Expect(TC_ACT_OK, stat="unparsed", why="fragment")
        proto = f[23]
        tot = (f[16] << 8) | f[17]
        if proto in (6, 17) and tot < 24:
            self.stats["unparsed"] += 1
            return Expect(TC_ACT_OK, stat="unparsed", why="ports not inside tot_len")
        dport = (f[36] << 8) | f[37] if proto in (6, 17) else 0
        class_id = self.cls.lookup(int.from_bytes(f[30:34], "big"), proto, dport)
        if class_id is None:
            self.stats["no_rule"] += 1
            return Expect(TC_ACT_OK, stat="no_rule", why="no rule matches")
        if f[22] <= 1:
            self.stats["ttl_expired"] += 1
            return Expect(TC_ACT_OK, stat="ttl_expired", why="TTL <= 1")
        link = self._select(class_id, before, after)
        c = self._counter(class_id, link)
        c[0] += 1
        c[1] += n
        l = self.links[link]
        if not l.flags & layout.LINK_NEXTHOP:
            self.stats["no_nexthop"] += 1
            return Expect(TC_ACT_OK, stat="no_nexthop", why=f"class {class_id} -> link {link} without next hop")
        c[2] += 1
        out = bytearray(f)
        out[0:6] = l.dst_mac
        out[6:12] = l.src_mac
        out[22] -= 1
        csum_fill(out, IP_OFF, 20, 24)
        return Expect(TC_ACT_REDIRECT, out=bytes(out), why=f"class {class_id} -> link {link}")


# -- heartbeat: shared parsing -------------------------------------------------
def probe_shaped(f, n: int, icmp_type: int, ident: int) -> bool:
    """tp_find_probe(): an echo of `icmp_type` with our identifier and magic
    in a frame long enough for a probe after a 20-byte IPv4 header."""
    return (n >= PROBE_FRAME_LEN and f[12] == 0x08 and f[13] == 0x00 and f[14] & 15 == 5 and f[23] == 1
            and f[34] == icmp_type and f[35] == 0 and ((f[38] << 8) | f[39]) == ident
            and _U32LE.unpack_from(f, OFF_MAGIC)[0] == PROBE_MAGIC)


def probe_well_formed(f, n: int) -> bool:
    """tp_probe_well_formed(): valid unfragmented IPv4 of exactly a probe's
    length, probe version 2. (ihl == 5 was checked by probe_shaped.)"""
    return (ipv4_status(f, n) == IP_OK and not is_fragment(f) and ((f[16] << 8) | f[17]) == PROBE_IP_LEN
            and _U16LE.unpack_from(f, OFF_VERSION)[0] == PROBE_VERSION)


class HealthModel:
    """What the reference knows of tp_health[link] and tp_rtt_hist."""

    def __init__(self):
        self.probes = 0
        self.unanswered = 0
        self.stamped_seq = 0
        self.replies = 0
        self.hist_base = 0           # RTT samples from before the harness last zeroed the entry
        self.seq_top = 0
        self.seq_seen = 0
        self.last_reply = None       # (before, after) of the call that last accepted a reply
        self.rtt_bounds = None       # (lo, hi) of that reply's RTT

    def replay_ok(self, seq: int) -> bool:
        """Whether the anti-replay window would take `seq` (no state change)."""
        if seq > self.seq_top:
            return True
        back = self.seq_top - seq
        return back < REPLAY_WINDOW and not (self.seq_seen >> back) & 1

    def replay_accept(self, seq: int) -> None:
        if seq > self.seq_top:
            shift = seq - self.seq_top
            self.seq_seen = 1 if shift >= REPLAY_WINDOW else ((self.seq_seen << shift) | 1) & M64
            self.seq_top = seq
        else:
            self.seq_seen |= 1 << (self.seq_top - seq)


class _HeartbeatRef:
    def __init__(self, links: list[LinkModel], keys: list[KeyModel], ident: int, test_run_ifindex: int = 1,
                 macs: MacCache | None = None):
        self.links = links
        self.keys = keys
        self.ident = ident
        self.ifindex = test_run_ifindex
        self.macs = macs or MacCache()
        self.stats = dict.fromkeys(layout.STATS, 0)
        self.health = [HealthModel() for _ in range(MAX_LINKS)]

    def mac_of(self, f, key: KeyModel, l: LinkModel) -> int:
        link = _U16LE.unpack_from(f, OFF_LINK)[0]
        seq = _U64LE.unpack_from(f, OFF_SEQ)[0]
        tx = _U64LE.unpack_from(f, OFF_TX)[0]
        k0, k1 = key.words
        return self.macs.mac(k0, k1, l.local, l.target, link, f[OFF_KEY_ID], seq, tx)


class HbEgressRef(_HeartbeatRef):
    """tp_hb_egress: stamp and sign probes leaving their own link."""

    def expect(self, f: bytes, before: int, after: int) -> Expect:
        n = len(f)
        if not probe_shaped(f, n, 8, self.ident) or not probe_well_formed(f, n):
            return Expect(TC_ACT_OK, why="not a probe")
        link = _U16LE.unpack_from(f, OFF_LINK)[0]
        l = self.links[link] if link < MAX_LINKS else None
        key = self.keys[0]
        if l is None or not key.id or l.ifindex != self.ifindex or f[26:30] != l.local or f[30:34] != l.target:
            self.stats["probe_foreign"] += 1
            return Expect(TC_ACT_OK, stat="probe_foreign", why="probe not from its link's device and addresses")
        self.stats["probe_stamped"] += 1
        self.health[link].probes += 1
        self.health[link].unanswered += 1
        self.health[link].stamped_seq = _U64LE.unpack_from(f, OFF_SEQ)[0]
        in_sum = ones_sum(f, ICMP_OFF, 48)

        def check(out: bytes) -> str | None:
            if len(out) != n:
                return f"output length {len(out)} != {n}"
            tx = _U64LE.unpack_from(out, OFF_TX)[0]
            if not before <= tx <= after:
                return f"tx_ns {tx} outside the call [{before}, {after}]"
            want = bytearray(f)
            want[OFF_TX:OFF_TX + 8] = out[OFF_TX:OFF_TX + 8]
            want[OFF_KEY_ID] = key.id & 0xFF
            _U64LE.pack_into(want, OFF_MAC, self.mac_of(want, key, l))
            # The ICMP checksum is updated incrementally: a valid one stays
            # valid; an invalid one stays exactly as wrong (RFC 1624), so a
            # probe corrupted before egress is still caught by its receiver.
            want[36:38] = out[36:38]
            if bytes(want) != out:
                return diff_positions(want, out)
            if ones_sum(out, ICMP_OFF, 48) % 0xFFFF != in_sum % 0xFFFF:
                return (f"ICMP checksum {out[36:38].hex()} is not the input's updated "
                        f"(input {'valid' if in_sum == 0xFFFF else 'invalid'})")
            return None
        return Expect(TC_ACT_OK, out_check=check, stat="probe_stamped", why=f"probe of link {link} signed")


class HbIngressRef(_HeartbeatRef):
    """tp_hb_ingress: accept a reply only if everything a genuine one must be
    holds; consume every probe-shaped echo reply."""

    def __init__(self, *args, dead_ns: int, **kw):
        super().__init__(*args, **kw)
        self.dead_ns = dead_ns

    def key_for(self, key_id: int) -> KeyModel | None:
        if key_id == 0:
            return None
        for k in self.keys:
            if k.id and k.id == key_id:
                return k
        return None

    def _bad(self, f, n: int) -> str | None:
        if not probe_well_formed(f, n):
            return "not a well-formed probe (IPv4 header, fragment, tot_len or version)"
        link = _U16LE.unpack_from(f, OFF_LINK)[0]
        if link >= MAX_LINKS:
            return "no such link"
        l = self.links[link]
        if l.ifindex != self.ifindex:
            return "link's ifindex is not the arrival interface"
        if f[26:30] != l.target or f[30:34] != l.local:
            return "addresses are not the link's target -> local"
        if l.flags & layout.LINK_TTL_SECURITY and f[22] != 255:
            return "GTSM: TTL != 255"
        if not csum_ok(f, ICMP_OFF, 48):
            return "ICMP checksum"
        return None

    def expect(self, f: bytes, before: int, after: int) -> Expect:
        n = len(f)
        if not probe_shaped(f, n, 0, self.ident):
            return Expect(TC_ACT_OK, why="not probe-shaped")
        bad = self._bad(f, n)
        if bad:
            self.stats["reply_bad"] += 1
            return Expect(TC_ACT_SHOT, stat="reply_bad", why=bad)
        link = _U16LE.unpack_from(f, OFF_LINK)[0]
        l = self.links[link]
        key = self.key_for(f[OFF_KEY_ID])
        if key is None:
            self.stats["reply_forged"] += 1
            return Expect(TC_ACT_SHOT, stat="reply_forged", why="key id names no key")
        if self.mac_of(f, key, l) != _U64LE.unpack_from(f, OFF_MAC)[0]:
            self.stats["reply_forged"] += 1
            return Expect(TC_ACT_SHOT, stat="reply_forged", why="MAC mismatch")
        tx = _U64LE.unpack_from(f, OFF_TX)[0]
        seq = _U64LE.unpack_from(f, OFF_SEQ)[0]
        h = self.health[link]
        # Time rules, at the earliest and the latest `now` the call can have seen.
        verdicts = {self._time_rule(tx, now) for now in (before, after)}
        if verdicts == {None}:
            if not h.replay_ok(seq):
                self.stats["reply_replayed"] += 1
                return Expect(TC_ACT_SHOT, stat="reply_replayed", why="sequence outside the window or seen")
            self._accept(h, seq, tx, before, after)
            return Expect(TC_ACT_SHOT, stat="reply_ok", why=f"accepted on link {link}")
        if None not in verdicts:
            self.stats["reply_replayed"] += 1
            return Expect(TC_ACT_SHOT, stat="reply_replayed", why=verdicts.pop())
        # `now` was on a boundary: the harness reads the link's reply count
        # and tells; either outcome is right, as long as the window agrees.
        def resolve(accepted: bool) -> str | None:
            if not accepted:
                self.stats["reply_replayed"] += 1
                return None
            if not h.replay_ok(seq):
                self.stats["reply_ok"] += 1
                return f"accepted seq {seq} that the anti-replay window rejects"
            self._accept(h, seq, tx, before, after)
            return None
        return Expect(TC_ACT_SHOT, ambiguous=(link, resolve), why="tx_ns on a time boundary")

    def _time_rule(self, tx: int, now: int) -> str | None:
        if tx == 0:
            return "tx_ns == 0"
        if tx > now:
            return "tx_ns in the future"
        if now - tx > self.dead_ns:
            return "tx_ns older than the dead interval"
        return None

    def _accept(self, h: HealthModel, seq: int, tx: int, before: int, after: int) -> None:
        h.replay_accept(seq)
        h.replies += 1
        h.unanswered = 0
        h.last_reply = (before, after)
        h.rtt_bounds = (max(before - tx, 0), after - tx)
        self.stats["reply_ok"] += 1


def diff_positions(want: bytes, got: bytes, limit: int = 12) -> str:
    if len(want) != len(got):
        return f"length {len(got)} != expected {len(want)}"
    diffs = [i for i in range(len(want)) if want[i] != got[i]]
    shown = ", ".join(f"[{i}] {want[i]:02x}->{got[i]:02x}" for i in diffs[:limit])
    return f"{len(diffs)} byte(s) differ: {shown}" + (" ..." if len(diffs) > limit else "")


def addr(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


# -- arbitration: tp_arb_line_a / tp_arb_line_b ---------------------------------
# Written from the rules in ebpf/arbitrate.c's header comment, lib/claim.h and
# lib/feedparse.h. The model is single-threaded (BPF_PROG_TEST_RUN runs one
# packet at a time), so every compare-and-exchange succeeds; per-session words
# are kept as the kernel keeps them (gtag << 56 | sequence), claim words
# exactly (gtag:8 | block:24 | bits:32), so that generation and block tags
# wrap as they do in the kernel.
ANY = -2                                   # Expect.verdict: decided by Expect.ambiguous(verdict, out)
ARB_SEQ_BITS = layout.C["TP_ARB_SEQ_BITS"]
ARB_SEQ_MASK = (1 << ARB_SEQ_BITS) - 1
ARB_SEQ_LIMIT = 1 << ARB_SEQ_BITS
ARB_CONFIRM = layout.C["TP_ARB_CONFIRM"]
ARB_FAR = layout.C["TP_ARB_FAR"]
ARB_BEHIND = layout.C["TP_ARB_BEHIND"]
ARB_SWEEP = layout.C["TP_ARB_SWEEP"]
ARB_NEWGEN = layout.C["TP_ARB_NEWGEN"]
ARB_SLOTS = layout.ARB_SLOTS
ARB_COPIES = layout.ARB_COPIES
ARB_MAX_MSGS = layout.ARB_MAX_MSGS
CLAIM_WORDS = (ARB_MAX_MSGS + 30) // 32 + 1
PROTO_MOLD, PROTO_MDP3 = layout.FEED_PROTOCOLS["moldudp64"], layout.FEED_PROTOCOLS["mdp3"]
MOLD_HEARTBEAT, MOLD_END = 0, 0xFFFF


def _feedparse_constant(name: str) -> int:
    import re

    from appliance.edge.bpfsource import EBPF_DIR
    text = (EBPF_DIR / "lib" / "feedparse.h").read_text()
    return int(re.search(rf"^#define\s+{name}\s+(\d+)", text, re.M).group(1))


MAX_PAYLOAD = _feedparse_constant("TP_MAX_PAYLOAD")
# arbitrate.c: tp_feed_state.hb_last = 1 << 63 | (ns >> 12) & (2^36 - 1), 0: none
HB_TIME_SHIFT, HB_TIME_MASK, HB_FORWARDED = 12, (1 << 36) - 1, 1 << 63
ARB_EVENT = {name: kind for kind, name in layout.ARB_EVENTS.items()}
LINE_FIELDS = [name for name, ctype in layout.LineStats._fields_ if ctype is layout.u64]
KIND_DATA, KIND_HEARTBEAT, KIND_END = 1, 2, 3


@dataclass
class FeedDef:
    """A tp_feeds entry as the fixture writes it."""
    id: int
    proto: int
    addr: bytes                 # network order
    port: int
    ifindex: int = 0            # 0: no receiver MAC yet
    src_mac: bytes = bytes(6)
    dst_mac: bytes = bytes(6)


def _tagged(gtag: int, seq: int) -> int:
    return ((gtag << ARB_SEQ_BITS) | seq) & M64


def _newer(a: int, b: int) -> bool:
    return 0 < ((a - b) & 0xFF) < 0x80


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def left_session(k: layout.FeedState) -> bytes | None:
    """The session a feed's kernel state says it last left (TP_PREV_SESSION
    marks one), or None."""
    return layout.session_name(k.prev_session) if k.prev_session[1] & layout.C["TP_PREV_SESSION"] else None


class FeedModel:
    """tp_feed_state[feed] and tp_feed_claims[feed].claims and .copies."""

    def __init__(self):
        self.gen = 0
        self.session = bytes(10)
        self.cand = bytes(10)
        self.cand_count = self.cand_lines = self.cand_ended = self.cand_told = 0
        self.prev: bytes | None = None      # prev_session: the session the feed last left; None: none yet
        self.far_count = [0, 0]
        self.far_seq = [0, 0]
        self.next_seq = 0
        self.line_next_seq = [0, 0]
        self.hb = None              # (flag bits of hb_last, t_lo, t_hi): time known to within the call
        self.end_seq = 0
        self.swept_seq = 0
        self.claims = [0] * ARB_SLOTS
        self.copies = [0] * ARB_COPIES

    @property
    def gtag(self) -> int:
        return (self.gen >> 1) & 0xFF

    def adopt(self, k: layout.FeedState, claims: layout.FeedClaims) -> None:
        """Takes the kernel's state (after a mismatch: one wrong decision
        is then reported once, not again on every later packet)."""
        self.gen = k.gen
        self.session = layout.session_name(k.session)
        self.cand = layout.session_name(k.cand)
        self.prev = left_session(k)
        meta = k.cand_meta
        self.cand_count, self.cand_lines = meta & 0xFF, (meta >> 8) & 3
        self.cand_ended, self.cand_told = (meta >> 10) & 3, (meta >> 12) & 3
        self.far_count, self.far_seq = list(k.far_count), list(k.far_seq)
        self.next_seq, self.line_next_seq = k.next_seq, list(k.line_next_seq)
        t = k.hb_last & HB_TIME_MASK
        self.hb = (k.hb_last & ~HB_TIME_MASK, t, t) if k.hb_last else None
        self.end_seq, self.swept_seq = k.end_seq, k.swept_seq
        self.claims, self.copies = list(claims.claims), list(claims.copies)

    def clear_claims(self, gtag: int, floor_block: int, sweep: bool) -> None:
        claims = self.claims
        for i, v in enumerate(claims):
            if not v:
                continue
            tag = v >> 32
            if (tag >> 24) == gtag and (not sweep or _s32(((tag - floor_block) & 0xFFFFFFFF) << 8) >= 0):
                continue
            claims[i] = 0

    def claim_word(self, slot: int, gtag: int, block: int, mask: int) -> tuple[int, bool]:
        """(bits this claim set, stale) as tp_claim_word."""
        tag = ((gtag & 0xFF) << 24) | (block & 0xFFFFFF)
        old = self.claims[slot]
        old_tag, old_bits = old >> 32, old & 0xFFFFFFFF
        if old_tag == tag:
            got = mask & ~old_bits
            if not got:
                return 0, False
            self.claims[slot] = old | mask
            return got, False
        if (not old_bits or _newer(gtag, old_tag >> 24)
                or ((old_tag >> 24) == (gtag & 0xFF) and _s32(((block - old_tag) & 0xFFFFFFFF) << 8) > 0)):
            self.claims[slot] = (tag << 32) | mask
            return mask, False
        return 0, True

    def copy_seen(self, gtag: int, s: int, e: int) -> bool:
        """As tp_copy_seen: whether [s, e) spans claim words and an identical
        packet of this generation recorded its claim; else records this one."""
        if s >> 5 == (e - 1) >> 5:
            return False
        slot = (s >> 5) & (ARB_COPIES - 1)
        mine = 1 << 63 | (gtag & 0xFF) << 55 | ((e - s - 1) & 0x7F) << 48 | (s & ((1 << 48) - 1))
        if self.copies[slot] == mine:
            return True
        self.copies[slot] = mine
        return False

    def claim_range(self, gtag: int, s: int, e: int) -> tuple[int, bool, bool]:
        """(first_new, partial, stale) as tp_claim_range for [s, e)."""
        first_new, partial, stale = 0, False, False
        first, last = s >> 5, (e - 1) >> 5
        for w in range(CLAIM_WORDS):
            block = first + w
            if block > last:
                break
            lo = max(block << 5, s)
            hi = min((block + 1) << 5, e)
            mask = (((1 << ((hi - lo) & 63)) - 1) << (lo & 31)) & 0xFFFFFFFF
            got, st = self.claim_word(block & (ARB_SLOTS - 1), gtag, block, mask)
            stale |= st
            if got != mask:
                partial = True
            if got and not first_new:
                first_new = (block << 5) + ((got & -got).bit_length() - 1)
        return first_new, partial, stale

    def advance(self, gtag: int, e: int) -> tuple[int, bool]:
        old = self.next_seq
        if old >> ARB_SEQ_BITS != gtag:
            return 0, False
        old &= ARB_SEQ_MASK
        if e <= old:
            return old, False
        self.next_seq = _tagged(gtag, e)
        return old, True

    def raise_mark(self, line: int, gtag: int, e: int) -> None:
        v = self.line_next_seq[line]
        t = v >> ARB_SEQ_BITS
        if ((v & ARB_SEQ_MASK) < e) if t == gtag else _newer(gtag, t):
            self.line_next_seq[line] = _tagged(gtag, e)


@dataclass
class FeedPacket:
    kind: int
    session: bytes
    seq: int
    count: int


class _Rerun(Exception):
    pass


class ArbRef:
    """Both line programs over the shared feed state."""

    def __init__(self, feeds: list[FeedDef], hb_dedup_ns: int):
        self.feeds = {(f.addr, f.port): f for f in feeds}
        self.state = {f.id: FeedModel() for f in feeds}
        self.line_stats = {(f.id, line): dict.fromkeys(LINE_FIELDS, 0) for f in feeds for line in (0, 1)}
        self.gstats = [dict.fromkeys(layout.ARB_STATS, 0) for _ in (0, 1)]
        self.hb_window = hb_dedup_ns >> HB_TIME_SHIFT
        self.event_counts: dict[int, int] = {}

    # rule 0 --------------------------------------------------------------
    def expect(self, line: int, f: bytes, before: int, after: int) -> Expect:
        n = len(f)
        st = ipv4_status(f, n)
        if st == IP_NOT_IPV4:
            return self._pass(line, "not_ipv4", "not IPv4")
        if st == IP_OPTIONS:
            return self._pass(line, "ip_options", "IP options")
        if st == IP_MALFORMED:
            return self._pass(line, "truncated", "IPv4 header ip_rcv() rejects")
        if f[23] != 17:
            return self._pass(line, "not_feed", "not UDP")
        if is_fragment(f):
            return self._pass(line, "fragment", "fragment")
        ihl4 = 20
        udp = 14 + ihl4
        if udp + 8 > n:
            return self._pass(line, "truncated", "UDP header past the frame")
        feed = self.feeds.get((bytes(f[30:34]), (f[udp + 2] << 8) | f[udp + 3]))
        if feed is None:
            return self._pass(line, "not_feed", "not a configured feed")
        if not feed.ifindex:
            return self._pass(line, "no_output", "feed without receiver MAC")
        if f[22] <= 1:
            return self._pass(line, "ttl_expired", "feed packet with TTL <= 1")
        ls = self.line_stats[(feed.id, line)]
        pkt, why = self._parse(feed, f, n, ihl4, udp)
        if pkt is None:
            ls["malformed"] += 1
            return Expect(XDP_DROP, why=f"malformed: {why}", extra=(feed.id, line, []))
        ls["packets"] += 1
        if pkt.kind != KIND_DATA:
            ls["heartbeats"] += 1
        st = self.state[feed.id]
        events: list[tuple] = []
        for _ in range(8):          # reruns: a switch, a believed far sequence, a sweep
            try:
                e = self._judge(feed, st, ls, line, pkt, f, events, before, after)
            except _Rerun:
                continue
            e.extra = (feed.id, line, events)
            for ev in events:
                self.event_counts[ev[0]] = self.event_counts.get(ev[0], 0) + 1
            return e
        raise AssertionError("arbitration reference: a packet ran again more than 8 times")

    def _pass(self, line: int, stat: str, why: str) -> Expect:
        self.gstats[line][stat] += 1
        return Expect(XDP_PASS, stat=stat, why=why, extra=(None, line, []))

    def _parse(self, feed: FeedDef, f, n: int, ihl4: int, udp: int) -> tuple[FeedPacket | None, str]:
        udp_len = (f[udp + 4] << 8) | f[udp + 5]
        tot = (f[16] << 8) | f[17]
        if not (8 <= udp_len <= MAX_PAYLOAD and udp + udp_len <= n and tot >= ihl4 + udp_len):
            return None, "UDP length"
        p, length = udp + 8, udp_len - 8
        if feed.proto == PROTO_MOLD:
            if length < 20:
                return None, "short MoldUDP64 header"
            session = bytes(f[p:p + 10])
            seq = int.from_bytes(f[p + 10:p + 18], "big")
            count = (f[p + 18] << 8) | f[p + 19]
            if count in (MOLD_HEARTBEAT, MOLD_END):
                if seq >= ARB_SEQ_LIMIT:
                    return None, "announced sequence >= 2^56"
                return FeedPacket(KIND_END if count == MOLD_END else KIND_HEARTBEAT, session, seq, 0), ""
            if count > ARB_MAX_MSGS or seq == 0 or seq >= ARB_SEQ_LIMIT - count:
                return None, "count or sequence"
            off = 20
            for _ in range(count):
                if p + off + 2 > n:
                    return None, "block header past the frame"
                off += 2 + ((f[p + off] << 8) | f[p + off + 1])
                if off > length:
                    return None, "block past the payload"
            return FeedPacket(KIND_DATA, session, seq, count), ""
        if length < 12:
            return None, "short MDP3 header"
        seq = int.from_bytes(f[p:p + 4], "little")
        if not seq:
            return None, "MDP3 sequence 0"
        return FeedPacket(KIND_DATA, bytes(10), seq, 1), ""

    # rules 1-4 ------------------------------------------------------------
    def _judge(self, feed, st: FeedModel, ls, line, pkt: FeedPacket, f, events, before, after) -> Expect:
        gen = st.gen
        if gen == 0 or st.session != pkt.session:
            if gen and not self._candidate(st, line, pkt, events):
                ls["unconfirmed"] += 1
                return Expect(XDP_DROP, why="another session, not (yet) believed")
            self._switch(st, pkt, session=True)
            if feed.proto == PROTO_MOLD:
                events.append((ARB_EVENT["session"], line, pkt.seq, pkt.seq, pkt.session))
            raise _Rerun
        gtag = st.gtag
        self._seen_current(st, line, pkt.kind == KIND_END)
        n, x = st.next_seq & ARB_SEQ_MASK, pkt.seq
        if n and (x > n + ARB_FAR or x + ARB_BEHIND < n):
            if not self._far(st, line, x, n, gtag, events):
                ls["far_ahead" if x > n else "stale"] += 1
                return Expect(XDP_DROP, why="far " + ("ahead" if x > n else "behind") + ", not (yet) believed")
            if x < n or x - n >= ARB_NEWGEN:
                self._switch(st, pkt, session=False, x=x, line=line, events=events)
            else:
                old, advanced = st.advance(gtag, x)
                if advanced and old and x > old:
                    events.append((ARB_EVENT["gap"], line, old, x - 1, bytes(10)))
            raise _Rerun
        st.far_count = [0, 0]
        sw = st.swept_seq
        if sw >> ARB_SEQ_BITS == gtag and ((n - (sw & ARB_SEQ_MASK)) & M64) >= ARB_SWEEP:
            st.swept_seq = _tagged(gtag, n)
            st.clear_claims(gtag, ((n - ARB_BEHIND) & M64) >> 5, sweep=True)
            raise _Rerun
        if pkt.kind == KIND_DATA:
            return self._data(feed, st, ls, line, x, x + pkt.count, gtag, f, events)
        return self._announce(feed, st, ls, line, pkt, n, gtag, f, events, before, after)

    def _candidate(self, st: FeedModel, line: int, pkt: FeedPacket, events) -> bool:
        lbit = 1 << line
        if st.cand == pkt.session:
            st.cand_count = min(st.cand_count + 1, 0xFF)
            st.cand_lines |= lbit
            told = st.cand_told & lbit
            st.cand_told |= lbit
        else:
            st.cand = pkt.session
            st.cand_count, st.cand_lines, st.cand_told, told = 1, lbit, lbit, 0
        if not told:
            events.append((ARB_EVENT["session-candidate"], line, pkt.seq, pkt.seq, pkt.session))
        # the count alone never takes the feed back to the session it left
        return (st.cand_lines | st.cand_ended) & 3 == 3 or (st.cand_count >= ARB_CONFIRM and pkt.session != st.prev)

    @staticmethod
    def _seen_current(st: FeedModel, line: int, end: bool) -> None:
        lbit = 1 << line
        st.cand_count = 0
        if end:
            st.cand_ended |= lbit
        else:
            st.cand_ended &= ~lbit
            st.cand_lines &= ~lbit

    def _switch(self, st: FeedModel, pkt: FeedPacket, session: bool, x: int = 0, line: int = 0,
                events=None) -> None:
        t = ((st.gen + 2) >> 1) & 0xFF
        if session:
            if st.gen:
                st.prev = st.session
            st.session = pkt.session
            n = 1 if st.gen else 0
            st.line_next_seq = [_tagged(t, 0), _tagged(t, 0)]
            st.end_seq = _tagged(t, 0)
            st.hb = None
            st.cand_count = st.cand_lines = st.cand_ended = st.cand_told = 0
        else:
            n = st.next_seq & ARB_SEQ_MASK
            if x > n:
                events.append((ARB_EVENT["gap"], line, n, x - 1, bytes(10)))
            n = x
            st.line_next_seq = [_tagged(t, min(m & ARB_SEQ_MASK, x)) for m in st.line_next_seq]
            st.end_seq = _tagged(t, st.end_seq & ARB_SEQ_MASK)
        st.next_seq = _tagged(t, n)
        st.swept_seq = _tagged(t, n)
        st.far_seq = [0, 0]
        st.far_count = [0, 0]
        st.gen += 2
        st.clear_claims(t, 0, sweep=False)

    @staticmethod
    def _far(st: FeedModel, line: int, x: int, n: int, gtag: int, events) -> bool:
        o = line ^ 1
        mine, other = st.far_seq[line], st.far_seq[o]
        near = lambda a, b: abs(a - b) <= ARB_FAR
        region = mine >> ARB_SEQ_BITS == gtag and near(x, mine & ARB_SEQ_MASK)
        count = st.far_count[line] if region else 0
        if count < ARB_CONFIRM:
            count += 1
        st.far_seq[line] = _tagged(gtag, x)
        st.far_count[line] = count
        if not region:
            events.append((ARB_EVENT["far-ahead" if x > n else "far-behind"], line, x, n, bytes(10)))
        if count < ARB_CONFIRM and not (st.far_count[o] and other >> ARB_SEQ_BITS == gtag
                                        and near(x, other & ARB_SEQ_MASK)):
            return False
        st.far_count = [0, 0]
        events.append((ARB_EVENT["resync"], line, n, x, bytes(10)))
        return True

    def _data(self, feed, st: FeedModel, ls, line, s: int, e: int, gtag: int, f, events) -> Expect:
        st.raise_mark(line, gtag, e)
        if st.copy_seen(gtag, s, e):
            ls["lost"] += 1
            return Expect(XDP_DROP, why="lost: an identical copy claimed first")
        first_new, partial, stale = st.claim_range(gtag, s, e)
        if not first_new:
            ls["stale" if stale else "lost"] += 1
            return Expect(XDP_DROP, why="stale: a claim word holds a newer block" if stale
                          else "lost: every sequence delivered before")
        old, advanced = st.advance(gtag, e)
        if advanced and old and s > old:
            events.append((ARB_EVENT["gap"], line, old, s - 1, bytes(10)))
        if first_new < old:
            ls["fills"] += 1
            events.append((ARB_EVENT["fill"], line, first_new, min(e, old) - 1, bytes(10)))
        ls["won"] += 1
        ls["overlap"] += partial
        return Expect(XDP_REDIRECT, out=arb_forward(f, feed), why="won" + (" (overlap)" if partial else ""))

    def _announce(self, feed, st: FeedModel, ls, line, pkt: FeedPacket, n: int, gtag: int, f, events,
                  before: int, after: int) -> Expect:
        nxt = pkt.seq
        if n:
            st.raise_mark(line, gtag, nxt)
            old, advanced = st.advance(gtag, nxt)
            if advanced and old and nxt > old:
                events.append((ARB_EVENT["gap"], line, old, nxt - 1, bytes(10)))
        if pkt.kind == KIND_END:
            want = _tagged(gtag, nxt + 1)
            if st.end_seq == want or _newer(st.end_seq >> ARB_SEQ_BITS, gtag):
                return Expect(XDP_DROP, why="end of session already forwarded")
            st.end_seq = want
            ls["heartbeats_forwarded"] += 1
            return Expect(XDP_REDIRECT, out=arb_forward(f, feed), why="end of session forwarded")
        if nxt < n:
            return Expect(XDP_DROP, why="heartbeat behind the feed")
        # One heartbeat per dedup window, whatever it announces (commit
        # 3fc089a: after a loss the two lines' copies of one heartbeat differ).
        tb, ta = (before >> HB_TIME_SHIFT) & HB_TIME_MASK, (after >> HB_TIME_SHIFT) & HB_TIME_MASK
        copy: bool | None = False
        if st.hb is not None:
            _, lo, hi = st.hb
            if ta - lo < self.hb_window:
                copy = True
            elif tb - hi >= self.hb_window:
                copy = False
            else:
                copy = None               # `now` decides: the verdict tells which
        fwd = arb_forward(f, feed)

        def forwarded() -> None:
            st.hb = (HB_FORWARDED, tb, ta)
            ls["heartbeats_forwarded"] += 1
        if copy is True:
            return Expect(XDP_DROP, why="heartbeat copy")
        if copy is False:
            forwarded()
            return Expect(XDP_REDIRECT, out=fwd, why="heartbeat forwarded")

        def resolve(verdict: int, out: bytes) -> str | None:
            if verdict == XDP_REDIRECT:
                forwarded()
                return None if out == fwd else "output: " + diff_positions(fwd, out)
            if verdict == XDP_DROP:
                return None if out == f else "output modified: " + diff_positions(f, out)
            return f"verdict {verdict}: neither a forwarded heartbeat nor its dropped copy"
        return Expect(ANY, ambiguous=resolve, why="heartbeat on the dedup window's edge")


def arb_forward(f: bytes, feed: FeedDef) -> bytes:
    """tp_forward(): TTL - 1 with the checksum updated by RFC 1624's general
    rule on the 16-bit word TTL shares with the protocol, in memory order
    (the program takes the kernel's shortcut, ip_decrease_ttl(); this keeps
    the independent rule, so the fuzz checks they agree), MACs of the feed's
    receiver."""
    out = bytearray(f)
    old = f[22] | f[23] << 8
    new = ((f[22] - 1) & 0xFF) | f[23] << 8
    s = (~(f[24] | f[25] << 8) & 0xFFFF) + (~old & 0xFFFF) + new
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    check = ~s & 0xFFFF
    out[22] = new & 0xFF
    out[24], out[25] = check & 0xFF, check >> 8
    out[0:6] = feed.dst_mac
    out[6:12] = feed.src_mac
    return bytes(out)
