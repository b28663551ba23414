"""Python view of ebpf/lib/layout.h: the one definition of every map value of
the product's programs (the lab's are in lab/layout.py).

Constants are read from the header itself. The ctypes structs below mirror its
structs field for field; tests/kernel/test_layout.py asserts their sizes and
offsets against the types BCC compiled, so a drift fails the suite.
"""
from __future__ import annotations

import ctypes
import re

from ebpf import EBPF_DIR

_HEADER = (EBPF_DIR / "lib" / "layout.h").read_text()


def header_constants(text: str) -> dict[str, int]:
    """A layout header's TP_* constants: numeric and (1u << n) #defines, and
    the members of its enums, which count from 0."""
    consts = {m.group(1): int(m.group(2), 0) for m in re.finditer(
        r"^#define\s+(TP_\w+)\s+(0x[0-9a-fA-F]+|\d+)u?\b", text, re.M)}
    for m in re.finditer(r"^#define\s+(TP_\w+)\s+\(1u << (\d+)\)", text, re.M):
        consts[m.group(1)] = 1 << int(m.group(2))
    for body in re.findall(r"^enum tp_\w+ \{(.*?)\};", text, re.S | re.M):
        names = re.findall(r"^\s*(TP_\w+)", body, re.M)
        consts.update({name: i for i, name in enumerate(names)})
    return consts


def _enum_names(prefix: str) -> list[str]:
    """The enum's counter names in index order, lower case, without prefix."""
    return [name.removeprefix(prefix).lower() for name, _ in
            sorted(((k, v) for k, v in C.items() if k.startswith(prefix) and k != prefix + "MAX"),
                   key=lambda kv: kv[1])]


C = header_constants(_HEADER)
MAX_LINKS = C["TP_MAX_LINKS"]
MAX_CLASSES = C["TP_MAX_CLASSES"]
RULES_PER_PREFIX = C["TP_RULES_PER_PREFIX"]
SMALL_PREFIXES = C["TP_SMALL_PREFIXES"]
HIST_BUCKETS = C["TP_HIST_BUCKETS"]
RTT_RING = C["TP_RTT_RING"]
LINK_CARRIER = C["TP_LINK_CARRIER"]
LINK_NEXTHOP = C["TP_LINK_NEXTHOP"]
LINK_TTL_SECURITY = C["TP_LINK_TTL_SECURITY"]
LINK_XDP_XMIT = C["TP_LINK_XDP_XMIT"]
KEY_SLOTS = C["TP_KEY_SLOTS"]
REPLAY_WINDOW = C["TP_REPLAY_WINDOW"]
CAUSES = {C["TP_CAUSE_HEARTBEAT"]: "heartbeat", C["TP_CAUSE_CARRIER"]: "carrier"}
CAUSE_WAKE = C["TP_CAUSE_WAKE"]
STATS = _enum_names("TP_STAT_")
ARB_STATS = _enum_names("TP_ARB_STAT_")
ARB_FEEDS = C["TP_ARB_FEEDS"]
FEED_INDEX_BITS, FEED_INDEX_SLOTS = C["TP_FEED_INDEX_BITS"], C["TP_FEED_INDEX_SLOTS"]
FEED_SLOT_USED = C["TP_FEED_SLOT_USED"]
ARB_LINES = C["TP_ARB_LINES"]
ARB_SLOTS = C["TP_ARB_SLOTS"]
ARB_STAMPS = C["TP_ARB_STAMPS"]
ARB_COPIES = C["TP_ARB_COPIES"]
ARB_MAX_MSGS = C["TP_ARB_MAX_MSGS"]
FEED_PROTOCOLS = {"moldudp64": C["TP_PROTO_MOLDUDP64"], "mdp3": C["TP_PROTO_MDP3"]}
ARB_EVENTS = {C["TP_ARB_GAP"]: "gap", C["TP_ARB_FILL"]: "fill", C["TP_ARB_SESSION"]: "session",
              C["TP_ARB_CANDIDATE"]: "session-candidate", C["TP_ARB_FAR_AHEAD"]: "far-ahead",
              C["TP_ARB_RESYNC"]: "resync", C["TP_ARB_FAR_BEHIND"]: "far-behind"}
ARB_CONFIRM = C["TP_ARB_CONFIRM"]
ARB_FAR = C["TP_ARB_FAR"]
ARB_BEHIND = C["TP_ARB_BEHIND"]
ARB_SEQ_MASK = (1 << C["TP_ARB_SEQ_BITS"]) - 1


def arb_seq(word: int) -> int:
    """The sequence in a per-session word of tp_feed_state (next_seq,
    line_next_seq, ...), without its generation tag."""
    return word & ARB_SEQ_MASK


def session_name(words) -> bytes:
    """The 10 session bytes held as two words (tp_feed_state.session,
    tp_arb_event.session)."""
    return int(words[0]).to_bytes(8, "little") + (int(words[1]) & 0xFFFF).to_bytes(2, "little")

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


def mac_array(mac: str | None) -> ctypes.Array:
    """"aa:bb:cc:dd:ee:ff" as the u8[6] of the structs that hold a MAC (Link,
    Feed); None, a next hop not resolved yet: all zero."""
    return (u8 * 6)(*bytes.fromhex(mac.replace(":", "")) if mac else bytes(6))


class Link(ctypes.Structure):
    _fields_ = [("ifindex", u32), ("flags", u32), ("src_mac", u8 * 6), ("dst_mac", u8 * 6),
                ("local", u32), ("target", u32)]  # addresses: network byte order


class Health(ctypes.Structure):
    _fields_ = [("last_reply_ns", u64), ("fresh_since_ns", u64), ("rtt_ewma_ns", u64),
                ("rtt_last_ns", u64), ("replies", u64), ("probes", u64), ("seq_top", u64), ("seq_seen", u64),
                ("unanswered", u64), ("stamped_seq", u64)]


class Round(ctypes.Structure):
    _fields_ = [("seq", u64), ("started_ns", u64)]


class RttRing(ctypes.Structure):
    _fields_ = [("seq", u64 * RTT_RING), ("rtt_ns", u64 * RTT_RING)]


class Key(ctypes.Structure):
    _fields_ = [("k0", u64), ("k1", u64), ("id", u32), ("_pad", u32)]


class Class(ctypes.Structure):
    _fields_ = [("n_links", u32), ("links", u32 * MAX_LINKS)]


class LpmKey(ctypes.Structure):
    _fields_ = [("prefixlen", u32), ("addr", u32)]  # addr: network byte order


class Rule(ctypes.Structure):
    _fields_ = [("proto", u8), ("class_id", u8), ("port_lo", u16), ("port_hi", u16), ("_pad", u16)]


class PrefixRules(ctypes.Structure):
    _fields_ = [("n_rules", u32), ("rules", Rule * RULES_PER_PREFIX)]


class PrefixSlot(ctypes.Structure):
    _fields_ = [("addr", u32), ("mask", u32), ("rules", PrefixRules)]  # addr, mask: network byte order


class PrefixTable(ctypes.Structure):
    _fields_ = [("live", u32), ("n", u32), ("slots", PrefixSlot * SMALL_PREFIXES)]


class Counters(ctypes.Structure):
    _fields_ = [("packets", u64), ("bytes", u64), ("redirects", u64), ("failovers", u64)]


class Pair(ctypes.Structure):
    _fields_ = [("mode", u32), ("_pad", u32), ("token", u64), ("fenced", u64)]


PAIR_NONE, PAIR_STANDBY, PAIR_ACTIVE = C["TP_PAIR_NONE"], C["TP_PAIR_STANDBY"], C["TP_PAIR_ACTIVE"]
PAIR_MODES = {C["TP_PAIR_NONE"]: "none", C["TP_PAIR_STANDBY"]: "standby", C["TP_PAIR_ACTIVE"]: "active"}


class Wake(ctypes.Structure):
    _fields_ = [("rtt_above_ns", u64), ("rtt_below_ns", u64), ("change_ns", u64), ("jitter_ns", u64),
                ("armed", u32), ("beyond", u32)]


class Event(ctypes.Structure):
    _fields_ = [("ts_ns", u64), ("silence_ns", u64), ("class_id", u32), ("from_link", u32),
                ("to_link", u32), ("cause", u32)]


class Probe(ctypes.Structure):
    _fields_ = [("magic", u32), ("version", u16), ("link", u16), ("seq", u64), ("tx_ns", u64),
                ("key_id", u8), ("_pad", u8 * 7), ("mac", u64)]


class FeedKey(ctypes.Structure):
    _fields_ = [("addr", u32), ("port", u16), ("_pad", u16)]  # both network byte order


class Feed(ctypes.Structure):
    _fields_ = [("id", u32), ("proto", u32), ("ifindex", u32), ("src_mac", u8 * 6), ("dst_mac", u8 * 6)]


class FeedSlot(ctypes.Structure):
    _fields_ = [("key", u64), ("feed", Feed)]


class FeedIndex(ctypes.Structure):
    _fields_ = [("live", u32), ("_pad", u32), ("mult", u64), ("slots", FeedSlot * FEED_INDEX_SLOTS)]



def feed_index_key(key: FeedKey) -> int:
    """A feed's tp_feed_index key without its used bit: addr << 16 | port,
    as the program computes it from the packet."""
    return key.addr << 16 | key.port


def feed_index_slot(index_key: int, mult: int) -> int:
    """The slot of tp_feed_index where the program looks for index_key."""
    return ((index_key * mult) & (2**64 - 1)) >> (64 - FEED_INDEX_BITS)


def feed_index_mult(index_keys: list[int], tries: int = 10_000) -> int:
    """An odd multiplier that puts every key in a slot of its own. The same
    keys always get the same one (a fixed seed). With TP_ARB_FEEDS (16) keys
    in 256 slots a random multiplier succeeds about 6 times in 10."""
    import random
    rng = random.Random(0x7470)
    for _ in range(tries):
        mult = rng.getrandbits(64) | 1
        if len({feed_index_slot(k, mult) for k in index_keys}) == len(index_keys):
            return mult
    raise ValueError(f"no multiplier in {tries} tries gives {len(index_keys)} feeds a slot each in "
                     f"{FEED_INDEX_SLOTS}: are two feeds the same destination?")

class FeedState(ctypes.Structure):
    _fields_ = [("gen", u64), ("session", u64 * 2), ("cand_meta", u64), ("far_count", u32 * ARB_LINES),
                ("_pad0", u64 * 3),
                ("next_seq", u64), ("line_last_ns", u64 * ARB_LINES), ("line_next_seq", u64 * ARB_LINES),
                ("hb_last", u64), ("end_seq", u64), ("swept_seq", u64),
                ("cand", u64 * 2), ("far_seq", u64 * ARB_LINES), ("prev_session", u64 * 2), ("_pad1", u64 * 2)]


class FeedClaims(ctypes.Structure):
    _fields_ = [("claims", u64 * ARB_SLOTS), ("stamps", u64 * ARB_STAMPS), ("copies", u64 * ARB_COPIES)]


class ArbConfig(ctypes.Structure):
    _fields_ = [("mono_to_real_ns", ctypes.c_int64)]


class LineStats(ctypes.Structure):
    _fields_ = [(name, u64) for name in (
        "packets", "won", "lost", "overlap", "fills", "heartbeats", "heartbeats_forwarded", "stale",
        "malformed", "events_lost", "unconfirmed", "far_ahead")] + [
        ("lag_hist", u64 * HIST_BUCKETS), ("owd_hist", u64 * HIST_BUCKETS)]


class ArbEvent(ctypes.Structure):
    _fields_ = [("ts_ns", u64), ("first", u64), ("last", u64), ("feed", u32), ("line", u16), ("kind", u16),
                ("session", u64 * 2)]


# Map name -> (key type, value type) as declared in ebpf/lib/maps.h.
MAPS = {
    "tp_links": (u32, Link),
    "tp_health": (u32, Health),
    "tp_rtt_ring": (u32, RttRing),
    "tp_probe_round": (u32, Round),
    "tp_classes": (u32, Class),
    "tp_active": (u32, u64),
    "tp_pair": (u32, Pair),
    "tp_keys": (u32, Key),
    "tp_rules": (LpmKey, PrefixRules),
    "tp_prefix_table": (u32, PrefixTable),
    "tp_steer_stats": (u32, Counters),
    "tp_rtt_hist": (u32, u64),
    "tp_gstats": (u32, u64),
    "tp_wake": (u32, Wake),
}

# The same for ebpf/lib/feed_maps.h.
ARB_MAPS = {
    "tp_feeds": (FeedKey, Feed),
    "tp_feed_index": (u32, FeedIndex),
    "tp_feed_state": (u32, FeedState),
    "tp_feed_claims": (u32, FeedClaims),
    "tp_arb_config": (u32, ArbConfig),
    "tp_line_stats": (u32, LineStats),
    "tp_arb_gstats": (u32, u64),
}

ICMP_ECHO_HEADER = 8
PROBE_SEQ_OFFSET = ICMP_ECHO_HEADER + Probe.seq.offset


def probe_template(link: int, ident: int) -> bytes:
    """ICMP echo request carrying a probe for `link`, checksum and sequence
    zero: fastpath.heartbeat fills both per send, the egress program tx_ns."""
    probe = Probe(magic=C["TP_PROBE_MAGIC"], version=C["TP_PROBE_VERSION"], link=link)
    return bytes([8, 0, 0, 0, ident >> 8, ident & 0xFF, 0, 0]) + bytes(probe)


def hist_bucket_bounds_us(bucket: int) -> tuple[float, float]:
    """[low, high) in microseconds of histogram bucket `bucket`, the
    inverse of tp_us_bucket() in ebpf/lib/hist.h."""
    if bucket < 4:
        return float(bucket), float(bucket + 1)
    lg, sub = bucket // 4 + 1, bucket % 4
    width = 1 << (lg - 2)
    low = (4 + sub) * width
    return float(low), float("inf") if bucket == HIST_BUCKETS - 1 else float(low + width)

