"""Python view of ebpf/lib/layout.h: the one definition of every map value.

Constants are read from the header itself. The ctypes structs below mirror its
structs field for field; tests/kernel/test_layout.py asserts their sizes and
offsets against the types BCC compiled, so a drift fails the suite.
"""
from __future__ import annotations

import ctypes
import re

from appliance.bpfsource import EBPF_DIR

_HEADER = (EBPF_DIR / "lib" / "layout.h").read_text()


def _header_constants(text: str) -> dict[str, int]:
    consts = {m.group(1): int(m.group(2), 0) for m in re.finditer(
        r"^#define\s+(TP_\w+)\s+(0x[0-9a-fA-F]+|\d+)u?\b", text, re.M)}
    for m in re.finditer(r"^#define\s+(TP_\w+)\s+\(1u << (\d+)\)", text, re.M):
        consts[m.group(1)] = 1 << int(m.group(2))
    body = re.search(r"enum tp_stat \{(.*?)\};", text, re.S).group(1)
    names = re.findall(r"^\s*(TP_STAT_\w+)", body, re.M)
    consts.update({name: i for i, name in enumerate(names)})
    return consts


C = _header_constants(_HEADER)
MAX_LINKS = C["TP_MAX_LINKS"]
MAX_CLASSES = C["TP_MAX_CLASSES"]
RULES_PER_PREFIX = C["TP_RULES_PER_PREFIX"]
RTT_BUCKETS = C["TP_RTT_BUCKETS"]
LINK_CARRIER = C["TP_LINK_CARRIER"]
LINK_NEXTHOP = C["TP_LINK_NEXTHOP"]
CAUSES = {C["TP_CAUSE_HEARTBEAT"]: "heartbeat", C["TP_CAUSE_CARRIER"]: "carrier"}
STATS = [name.removeprefix("TP_STAT_").lower() for name, v in
         sorted(((k, v) for k, v in C.items() if k.startswith("TP_STAT_") and k != "TP_STAT_MAX"),
                key=lambda kv: kv[1])]

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class Link(ctypes.Structure):
    _fields_ = [("ifindex", u32), ("flags", u32), ("src_mac", u8 * 6), ("dst_mac", u8 * 6), ("_pad", u32)]


class Health(ctypes.Structure):
    _fields_ = [("last_reply_ns", u64), ("fresh_since_ns", u64), ("rtt_ewma_ns", u64),
                ("rtt_last_ns", u64), ("replies", u64), ("probes", u64), ("last_seq", u64)]


class Class(ctypes.Structure):
    _fields_ = [("n_links", u32), ("links", u32 * MAX_LINKS)]


class LpmKey(ctypes.Structure):
    _fields_ = [("prefixlen", u32), ("addr", u32)]  # addr: network byte order


class Rule(ctypes.Structure):
    _fields_ = [("proto", u8), ("class_id", u8), ("port_lo", u16), ("port_hi", u16), ("_pad", u16)]


class PrefixRules(ctypes.Structure):
    _fields_ = [("n_rules", u32), ("rules", Rule * RULES_PER_PREFIX)]


class Counters(ctypes.Structure):
    _fields_ = [("packets", u64), ("bytes", u64), ("redirects", u64), ("failovers", u64)]


class Event(ctypes.Structure):
    _fields_ = [("ts_ns", u64), ("silence_ns", u64), ("class_id", u32), ("from_link", u32),
                ("to_link", u32), ("cause", u32)]


class Probe(ctypes.Structure):
    _fields_ = [("magic", u32), ("version", u16), ("link", u16), ("seq", u64), ("tx_ns", u64),
                ("auth", u8 * 16)]


class FaultConfig(ctypes.Structure):
    _fields_ = [("mode", u32), ("loss_threshold", u32)]


class FaultCounters(ctypes.Structure):
    _fields_ = [("passed", u64), ("dropped", u64)]


# Map name -> (key type, value type) as declared in ebpf/lib/maps.h.
MAPS = {
    "tp_links": (u32, Link),
    "tp_health": (u32, Health),
    "tp_classes": (u32, Class),
    "tp_active": (u32, u64),
    "tp_rules": (LpmKey, PrefixRules),
    "tp_steer_stats": (u32, Counters),
    "tp_rtt_hist": (u32, u64),
    "tp_gstats": (u32, u64),
}

ICMP_ECHO_HEADER = 8
PROBE_SEQ_OFFSET = ICMP_ECHO_HEADER + Probe.seq.offset


def probe_template(link: int, ident: int) -> bytes:
    """ICMP echo request carrying a probe for `link`, checksum and sequence
    zero: fastpath.heartbeat fills both per send, the egress program tx_ns."""
    probe = Probe(magic=C["TP_PROBE_MAGIC"], version=C["TP_PROBE_VERSION"], link=link)
    return bytes([8, 0, 0, 0, ident >> 8, ident & 0xFF, 0, 0]) + bytes(probe)


def rtt_bucket_bounds_us(bucket: int) -> tuple[float, float]:
    """[low, high) in microseconds of RTT histogram bucket `bucket`, the
    inverse of tp_rtt_bucket() in ebpf/lib/probe.h."""
    if bucket < 4:
        return float(bucket), float(bucket + 1)
    lg, sub = bucket // 4 + 1, bucket % 4
    width = 1 << (lg - 2)
    low = (4 + sub) * width
    return float(low), float("inf") if bucket == RTT_BUCKETS - 1 else float(low + width)
