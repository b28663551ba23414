"""Differential fuzzing of the product BPF programs: random and mutated frames
through BPF_PROG_TEST_RUN, each verdict and output checked against the
pure-Python reference of that program (lab/fuzzref.py), and the
maps' counters checked against the reference's totals at the end.

    .venv/bin/python -m lab.fuzz [--program NAME ...] [--frames N] [--seed S]

Programs: tp_steer, tp_hb_egress, tp_hb_ingress (one compiled gateway with
the fuzz configuration below) and tp_arb_line_a/tp_arb_line_b (fuzzed
together: they share the feeds' state).

Frames start from valid ones of each program's interesting kinds (orders to
each class, probes and replies with valid MACs, feed packets of both
protocols), then get 0-4 mutations (bit and byte flips, truncation, trailing
bytes, rewritten length fields, checksums broken or fixed, version,
protocol, ports, addresses, TTL, fragment bits, probe and feed fields), then,
often, fix-ups (IP checksum, ICMP checksum, the probe's MAC) so that mutated
frames get past the cheap checks to the deep ones. Some frames are purely
random. Everything comes from one seeded random.Random, so a run is
repeatable: a mismatch names the seed, the frame's index, its hex, the
mutations, and expected vs got. Stateful programs (anti-replay windows,
claims) need the frames before it too: rerun the program with the same seed
and --stop-at INDEX. (Probe timestamps and feed clocks come from the kernel
clock, so a replay repeats the decisions, not the bytes of tx_ns.)

No scapy in the loop: frames are built with struct into reused buffers, and
BPF_PROG_TEST_RUN is called through one preallocated libbpf opts struct.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance import layout
from lab import fuzzref as ref
from lab import libbpf
from lab.fuzzref import (
    ICMP_OFF,
    OFF_KEY_ID,
    OFF_LINK,
    OFF_MAC,
    OFF_PAD,
    OFF_SEQ,
    OFF_TX,
    OFF_VERSION,
    PROBE,
    PROBE_MAGIC,
    PROBE_VERSION,
    Expect,
    KeyModel,
    LinkModel,
    csum_fill,
)

STAT_INDEX = {name: i for i, name in enumerate(layout.STATS)}
TEST_RUN_IFINDEX = 1          # BPF_PROG_TEST_RUN runs skb programs on loopback
MAX_FRAME = 1600
# tp_steer_xdp is fuzzed as the kernel runs it: XDP, then TC on what it passes (SteerAtXdpRun).
GATEWAY_PROGRAMS = ("tp_steer", "tp_steer_xdp", "tp_hb_egress", "tp_hb_ingress")
ARB_PROGRAMS = ("tp_arb_line_a", "tp_arb_line_b")
PROGRAMS = GATEWAY_PROGRAMS + ARB_PROGRAMS
PROGRESS_FRAMES = 4096        # frames between two on_frames() calls: a progress bar's grain, at no cost

# The fuzz gateway: more rules, classes and link states than the packet
# fixtures, so that every exit of tp_steer is reachable. 1 s x 3: health the
# harness writes stays fresh across any pause of the machine.
FUZZ_INTERVAL_US = 1_000_000
FUZZ_MULTIPLIER = 3
FUZZ_CONFIG = f"""
[heartbeat]
interval_us = {FUZZ_INTERVAL_US}
multiplier = {FUZZ_MULTIPLIER}
holddown_ms = 0

[steer]
ingress = "fzint"

[[links]]
name = "A"
dev = "fzA"
target = "198.18.10.2"

[[links]]
name = "B"
dev = "fzB"
target = "198.18.11.2"
ttl_security = true

[[links]]
name = "C"
dev = "fzC"
target = "198.18.12.2"

[[links]]
name = "D"
dev = "fzD"
target = "198.18.13.2"

[[classes]]
name = "orders"
links = ["A", "B"]

[[classes]]
name = "marketdata"
links = ["B", "A"]

[[classes]]
name = "bulk"
links = ["C", "A"]

[[classes]]
name = "remote"
links = ["D"]

[[rules]]
class = "orders"
dst = "198.19.0.0/24"
proto = "any"
ports = "9000-9099"

[[rules]]
class = "marketdata"
dst = "198.19.0.0/24"
proto = "udp"
ports = "9100-9199"

[[rules]]
class = "bulk"
dst = "198.19.0.64/26"
proto = "tcp"

[[rules]]
class = "remote"
dst = "198.19.0.0/24"
proto = "icmp"

[[rules]]
class = "orders"
dst = "198.19.0.10/32"
proto = "udp"

[[rules]]
class = "remote"
dst = "10.0.0.0/8"

[[rules]]
class = "marketdata"
dst = "10.1.0.0/16"
proto = "udp"
ports = 53

[[rules]]
class = "bulk"
dst = "0.0.0.0/0"
proto = "tcp"
ports = 80
"""


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


# tp_links as the fuzz fixture writes it: A and B usable (B with GTSM), C
# without a next hop (its classes take kernel routing), D on another device
# (steer redirects there; heartbeats on it are foreign), 4..7 empty. A and D
# take XDP frames (XDP steers to them), B does not (TC steers to it).
FUZZ_LINKS = [
    LinkModel(TEST_RUN_IFINDEX, layout.LINK_CARRIER | layout.LINK_NEXTHOP | layout.LINK_XDP_XMIT,
              _mac("02:00:00:00:0a:01"),
              _mac("02:00:00:00:0a:02"), ref.addr("198.18.10.1"), ref.addr("198.18.10.2")),
    LinkModel(TEST_RUN_IFINDEX, layout.LINK_CARRIER | layout.LINK_NEXTHOP | layout.LINK_TTL_SECURITY,
              _mac("02:00:00:00:0b:01"), _mac("02:00:00:00:0b:02"), ref.addr("198.18.11.1"),
              ref.addr("198.18.11.2")),
    LinkModel(TEST_RUN_IFINDEX, layout.LINK_CARRIER, _mac("02:00:00:00:0c:01"), bytes(6),
              ref.addr("198.18.12.1"), ref.addr("198.18.12.2")),
    LinkModel(9, layout.LINK_CARRIER | layout.LINK_NEXTHOP | layout.LINK_XDP_XMIT, _mac("02:00:00:00:0d:01"),
              _mac("02:00:00:00:0d:02"),
              ref.addr("198.18.13.1"), ref.addr("198.18.13.2")),
] + [LinkModel() for _ in range(layout.MAX_LINKS - 4)]

TRADER_MAC, GW_INT_MAC = _mac("02:00:00:00:01:01"), _mac("02:00:00:00:01:fe")

# Address and port pools: rule edges, prefix edges and the odd ones.
DST_POOL = [ref.addr(a) for a in (
    "198.19.0.10", "198.19.0.0", "198.19.0.1", "198.19.0.63", "198.19.0.64", "198.19.0.127", "198.19.0.128",
    "198.19.0.255", "198.19.1.0", "198.18.255.255", "198.18.1.254", "10.0.0.1", "10.1.2.3", "10.1.255.255",
    "10.2.0.0", "10.255.255.255", "11.0.0.0", "9.255.255.255", "8.8.8.8", "224.0.0.1", "255.255.255.255",
    "0.0.0.0", "198.18.10.1", "198.18.10.2", "198.18.11.1", "198.18.11.2", "198.18.1.1", "198.18.1.2",
    "233.54.12.1")]
SRC_POOL = [ref.addr(a) for a in ("198.18.1.1", "198.18.10.2", "198.18.11.2", "198.18.10.1", "198.18.11.1",
                                 "198.18.12.2", "198.18.13.2", "0.0.0.0", "127.0.0.1", "198.18.30.1")]
PORT_POOL = [9000, 9001, 9050, 9099, 9100, 9150, 9199, 8999, 9200, 53, 80, 443, 0, 1, 65535, 26400, 26401, 26477]
PROTO_POOL = [17, 17, 6, 6, 1, 0, 2, 4, 41, 47, 50, 58, 132, 255]
TTL_POOL = [64, 64, 64, 0, 1, 2, 3, 128, 254, 255]

_ETH = struct.Struct("!6s6sH")
_IPH = struct.Struct("!BBHHHBBH4s4s")
_U16BE = struct.Struct(">H")
_U64LE = struct.Struct("<Q")


# -- frames -------------------------------------------------------------------
def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, ttl: int = 64, tos: int = 0, ident: int = 0,
         frag: int = 0, options: bytes = b"") -> bytes:
    """An IPv4 packet with a valid header checksum (options padded to words)."""
    options += b"\x00" * (-len(options) % 4)
    ihl = 5 + len(options) // 4
    hdr = bytearray(_IPH.pack(0x40 | ihl, tos, ihl * 4 + len(payload), ident, frag, ttl, proto, 0, src, dst))
    hdr += options
    csum_fill(hdr, 0, ihl * 4, 10)
    return bytes(hdr) + payload


def eth(payload: bytes, ethertype: int = 0x0800, dst: bytes = GW_INT_MAC, src: bytes = TRADER_MAC) -> bytes:
    return _ETH.pack(dst, src, ethertype) + payload


def udp(sport: int, dport: int, payload: bytes, csum: int = 0) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), csum) + payload


def tcp(sport: int, dport: int, payload: bytes, flags: int = 0x18) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload


def icmp_echo(icmp_type: int, ident: int, seq: int, payload: bytes, code: int = 0) -> bytes:
    msg = bytearray(struct.pack("!BBHHH", icmp_type, code, 0, ident, seq) + payload)
    if len(msg) % 2:
        csum_fill_odd(msg)
    else:
        csum_fill(msg, 0, len(msg), 2)
    return bytes(msg)


def csum_fill_odd(msg: bytearray) -> None:
    padded = bytearray(msg) + b"\x00"
    csum_fill(padded, 0, len(padded), 2)
    msg[2:4] = padded[2:4]


def probe_payload(link: int, seq: int, tx_ns: int = 0, key_id: int = 0, mac: int = 0, magic: int = PROBE_MAGIC,
                  version: int = PROBE_VERSION, pad: bytes = bytes(7)) -> bytes:
    return PROBE.pack(magic, version, link, seq, tx_ns, key_id, pad, mac)


def fix_ip_csum(f: bytearray) -> bool:
    """Recomputes the IPv4 header checksum over ihl words, if they are there."""
    if len(f) < 34:
        return False
    ihl4 = (f[14] & 15) * 4
    if ihl4 < 20 or len(f) < 14 + ihl4:
        return False
    csum_fill(f, 14, ihl4, 24)
    return True


def fix_icmp_csum(f: bytearray) -> bool:
    """Recomputes a probe's ICMP checksum (48 bytes after a 20-byte header)."""
    if len(f) < ref.PROBE_FRAME_LEN:
        return False
    csum_fill(f, ICMP_OFF, 48, 36)
    return True


# -- BPF_PROG_TEST_RUN, with reused buffers -----------------------------------
class TestRun:
    """One program's BPF_PROG_TEST_RUN with a preallocated opts struct and
    in/out buffers: (verdict, output bytes), or (REFUSED, errno)."""

    def __init__(self, prog_fd: int, capacity: int = 8192):
        self._fn = libbpf.LIBBPF.bpf_prog_test_run_opts
        self._fd = prog_fd
        self._cap = capacity
        self._in = ctypes.create_string_buffer(capacity)
        self._out = ctypes.create_string_buffer(capacity)
        self._out_addr = ctypes.addressof(self._out)
        self._opts = libbpf.TestRunOpts(sz=ctypes.sizeof(libbpf.TestRunOpts),
                                         data_in=ctypes.addressof(self._in), data_out=self._out_addr, repeat=1)
        self._ref = ctypes.byref(self._opts)

    def __call__(self, frame: bytes) -> tuple[int, bytes | int]:
        n = len(frame)
        ctypes.memmove(self._in, frame, n)
        o = self._opts
        o.data_size_in = n
        o.data_size_out = self._cap
        if self._fn(self._fd, self._ref) < 0:
            return ref.REFUSED, ctypes.get_errno()
        return o.retval, ctypes.string_at(self._out_addr, o.data_size_out)


class SteerAtXdpRun:
    """tp_steer_xdp, then tp_steer on the frame if XDP passed it, as the
    kernel runs both on one ingress: the verdict the packet ends with, in TC
    terms (XDP's redirect reads as TC's), so tp_steer's reference judges it.
    An XDP pass that changed the frame, or any other XDP verdict, reads as
    XDP_MISBEHAVED, which no reference expects."""
    XDP_PASS, XDP_REDIRECT, TC_ACT_REDIRECT, XDP_MISBEHAVED = 2, 4, 7, -100

    def __init__(self, xdp_fd: int, tc_fd: int):
        self._xdp, self._tc = TestRun(xdp_fd), TestRun(tc_fd)

    def __call__(self, frame: bytes) -> tuple[int, bytes | int]:
        verdict, out = self._xdp(frame)
        if verdict == self.XDP_REDIRECT:
            return self.TC_ACT_REDIRECT, out
        if verdict == ref.REFUSED:
            return verdict, out
        if verdict != self.XDP_PASS or out != frame:
            return self.XDP_MISBEHAVED, out
        return self._tc(frame)


class PerCpuCounters:
    """Reads one u64 slot of a per-CPU array map, summed over CPUs, with one
    syscall and preallocated buffers: cheap enough to check per frame."""

    def __init__(self, map_fd: int):
        self._lookup = libbpf.LIBBPF.bpf_map_lookup_elem
        self._fd = map_fd
        self._key = ctypes.c_uint32()
        self._buf = (ctypes.c_uint64 * libbpf.possible_cpus())()
        self._kref, self._bref = ctypes.byref(self._key), ctypes.byref(self._buf)

    def __getitem__(self, index: int) -> int:
        self._key.value = index
        if self._lookup(self._fd, self._kref, self._bref) < 0:
            raise OSError(ctypes.get_errno(), f"per-CPU map lookup of {index}")
        return sum(self._buf)


# -- mutations ----------------------------------------------------------------
# Each takes (frame: bytearray, rng, harness) and returns a label for the
# mismatch report. Offsets assume a 20-byte IPv4 header where they must pick
# one: the programs read fixed offsets too.
def m_flip_bit(f, r, h):
    n = len(f)
    i = r.randrange(min(n, 100)) if r.random() < 0.85 else r.randrange(n)
    b = r.randrange(8)
    f[i] ^= 1 << b
    return f"flip[{i}].{b}"


def m_set_byte(f, r, h):
    n = len(f)
    i = r.randrange(min(n, 100)) if r.random() < 0.85 else r.randrange(n)
    f[i] = r.choice((0, 0xFF, r.randrange(256)))
    return f"byte[{i}]={f[i]:#x}"


def m_truncate(f, r, h):
    n = len(f)
    if n <= 15:
        return "truncate:noop"
    cut = r.choice((r.randrange(14, n), n - 1, n - r.randrange(1, 9), 34, 42, 54, 81, 82, 60))
    cut = max(14, min(cut, n - 1))
    del f[cut:]
    return f"truncate:{cut}"


def m_extend(f, r, h):
    k = r.choice((1, 2, 4, 6, 8, 16, r.randrange(1, 65)))
    k = max(min(k, MAX_FRAME - len(f)), 0)
    f += r.choice((bytes(k), b"\xaa" * k, r.randbytes(k)))
    return f"extend:+{k}"


def m_tot_len(f, r, h):
    if len(f) < 18:
        return "tot_len:noop"
    n, ihl4 = len(f), (f[14] & 15) * 4
    v = r.choice((n - 14, n - 13, n - 15, ihl4, ihl4 - 1, ihl4 + 1, 20, 23, 24, 27, 28, 67, 68, 69, 0, 0xFFFF,
                  r.randrange(65536), ((f[16] << 8) | f[17]) + r.choice((-2, -1, 1, 2))))
    v &= 0xFFFF
    _U16BE.pack_into(f, 16, v)
    return f"tot_len={v}"


def m_ihl(f, r, h):
    if len(f) < 15:
        return "ihl:noop"
    v = r.choice((0, 4, 5, 6, 15, r.randrange(16)))
    f[14] = (f[14] & 0xF0) | v
    return f"ihl={v}"


def m_options(f, r, h):
    """Grows the IPv4 header with option words (NOP/EOL/random), keeping
    tot_len consistent: a valid header with options."""
    if len(f) < 34 or f[14] & 15 != 5:
        return "options:noop"
    k = r.randrange(1, 11)
    opts = r.choice((b"\x01" * 4 * k, b"\x00" * 4 * k, r.randbytes(4 * k)))
    f[34:34] = opts
    f[14] = (f[14] & 0xF0) | (5 + k)
    _U16BE.pack_into(f, 16, (((f[16] << 8) | f[17]) + 4 * k) & 0xFFFF)
    return f"options:+{k}w"


def m_version(f, r, h):
    if len(f) < 15:
        return "version:noop"
    v = r.choice((6, 0, 5, 15, r.randrange(16)))
    f[14] = (v << 4) | (f[14] & 15)
    return f"version={v}"


def m_proto(f, r, h):
    if len(f) < 24:
        return "proto:noop"
    f[23] = r.choice(PROTO_POOL) if r.random() < 0.8 else r.randrange(256)
    return f"proto={f[23]}"


def m_ttl(f, r, h):
    if len(f) < 23:
        return "ttl:noop"
    f[22] = r.choice(TTL_POOL) if r.random() < 0.8 else r.randrange(256)
    return f"ttl={f[22]}"


def m_frag(f, r, h):
    if len(f) < 22:
        return "frag:noop"
    v = r.choice((0x2000, 0x4000, 0x0001, 0x1FFF, 0x2001, 0x8000, 0x4000 | 0x2000, 0, r.randrange(65536)))
    _U16BE.pack_into(f, 20, v)
    return f"frag={v:#06x}"


def m_saddr(f, r, h):
    if len(f) < 30:
        return "saddr:noop"
    f[26:30] = r.choice(SRC_POOL) if r.random() < 0.7 else r.randbytes(4)
    return f"saddr={bytes(f[26:30]).hex()}"


def m_daddr(f, r, h):
    if len(f) < 34:
        return "daddr:noop"
    f[30:34] = r.choice(DST_POOL) if r.random() < 0.7 else r.randbytes(4)
    return f"daddr={bytes(f[30:34]).hex()}"


def m_ports(f, r, h):
    off = 14 + (f[14] & 15) * 4 if len(f) > 14 else 34
    if len(f) < off + 4:
        return "ports:noop"
    which = r.randrange(2)
    v = r.choice(PORT_POOL) if r.random() < 0.8 else r.randrange(65536)
    _U16BE.pack_into(f, off + 2 * which, v)
    return f"{'sport' if which == 0 else 'dport'}={v}"


def m_udp_len(f, r, h):
    off = 14 + (f[14] & 15) * 4 if len(f) > 14 else 34
    if len(f) < off + 6:
        return "udp_len:noop"
    tot = (f[16] << 8) | f[17]
    v = r.choice((0, 7, 8, 9, len(f) - off, len(f) - off + 1, tot - (f[14] & 15) * 4,
                  tot - (f[14] & 15) * 4 + 1, 0xFFFF, r.randrange(65536)))
    _U16BE.pack_into(f, off + 4, v & 0xFFFF)
    return f"udp_len={v & 0xFFFF}"


def m_ethertype(f, r, h):
    v = r.choice((0x86DD, 0x0806, 0x8100, 0x88A8, 0x0800, 0x0801, 0x0008, r.randrange(65536)))
    _U16BE.pack_into(f, 12, v)
    return f"ethertype={v:#06x}"


def m_ip_csum_fix(f, r, h):
    return "ip_csum:fixed" if fix_ip_csum(f) else "ip_csum:noop"


def m_ip_csum_break(f, r, h):
    h.flags["break_ip"] = True
    return "ip_csum:broken"


def m_swap_addrs(f, r, h):
    if len(f) < 34:
        return "swap_addrs:noop"
    f[26:30], f[30:34] = f[30:34], f[26:30]
    return "swap_addrs"


# heartbeat fields (fixed offsets: a probe's header is 20 bytes)
def _need_probe(f):
    return len(f) >= ref.PROBE_FRAME_LEN


def m_icmp_type(f, r, h):
    if len(f) < 36:
        return "icmp_type:noop"
    f[34] = r.choice((0, 8, 3, 11, 13, 14, r.randrange(256)))
    return f"icmp_type={f[34]}"


def m_icmp_code(f, r, h):
    if len(f) < 36:
        return "icmp_code:noop"
    f[35] = r.choice((1, 255, r.randrange(256)))
    return f"icmp_code={f[35]}"


def m_icmp_id(f, r, h):
    if len(f) < 40:
        return "icmp_id:noop"
    v = r.choice((h.ident ^ 1, h.ident ^ 0x100, 0, 0xFFFF, r.randrange(65536), h.ident))
    _U16BE.pack_into(f, 38, v)
    return f"icmp_id={v:#06x}"


def m_echo_seq(f, r, h):
    """The echo header's sequence: no check reads it."""
    if len(f) < 42:
        return "echo_seq:noop"
    _U16BE.pack_into(f, 40, r.randrange(65536))
    h.flags["fix_icmp"] = True
    return "echo_seq"


def m_magic(f, r, h):
    if not _need_probe(f):
        return "magic:noop"
    v = r.choice((PROBE_MAGIC ^ 1, PROBE_MAGIC ^ 0x80000000, 0, r.randrange(1 << 32)))
    struct.pack_into("<I", f, ref.OFF_MAGIC, v)
    return f"magic={v:#x}"


def m_probe_version(f, r, h):
    if not _need_probe(f):
        return "version:noop"
    v = r.choice((1, 3, 0, 0x200, 0xFFFF, PROBE_VERSION))
    struct.pack_into("<H", f, OFF_VERSION, v)
    return f"probe_version={v}"


def m_probe_link(f, r, h):
    if not _need_probe(f):
        return "link:noop"
    v = r.choice((0, 1, 2, 3, 4, 7, 8, 9, 0x100, 0xFFFF, r.randrange(65536)))
    struct.pack_into("<H", f, OFF_LINK, v)
    return f"link={v}"


def m_key_id(f, r, h):
    if not _need_probe(f):
        return "key_id:noop"
    f[OFF_KEY_ID] = r.choice([k.id for k in h.keys] + [0, 255, r.randrange(256)])
    return f"key_id={f[OFF_KEY_ID]}"


def m_probe_seq(f, r, h):
    if not _need_probe(f):
        return "seq:noop"
    cur = _U64LE.unpack_from(f, OFF_SEQ)[0]
    v = r.choice((cur + 1, cur - 1, cur + 2, cur + 64, cur + 65, cur - 63, cur - 64, cur - 65, 0,
                  ref.M64 if r.random() < 0.2 else cur + 3, r.randrange(1 << 64) if r.random() < 0.2 else cur)) & ref.M64
    _U64LE.pack_into(f, OFF_SEQ, v)
    return f"seq={v}"


def m_tx_ns(f, r, h):
    if not _need_probe(f):
        return "tx_ns:noop"
    now = time.monotonic_ns()
    v = r.choice((0, now + 10**9, now + 10**7, now - h.dead_ns - 10**7, now - h.dead_ns - 10**9, now - 10**5,
                  now - h.dead_ns // 2, ref.M64, r.randrange(1 << 64)))
    _U64LE.pack_into(f, OFF_TX, max(v, 0))
    return f"tx_ns={max(v, 0)}"


def m_pad(f, r, h):
    """The probe's pad bytes: no check reads them."""
    if not _need_probe(f):
        return "pad:noop"
    f[OFF_PAD:OFF_PAD + 7] = r.randbytes(7)
    h.flags["fix_icmp"] = True
    return "pad"


def m_mac(f, r, h):
    if not _need_probe(f):
        return "mac:noop"
    i = OFF_MAC + r.randrange(8)
    f[i] ^= 1 << r.randrange(8)
    return f"mac^[{i}]"


def m_resign(f, r, h):
    h.flags["resign"] = True
    return "resign"


def m_icmp_csum_fix(f, r, h):
    h.flags["fix_icmp"] = True
    return "icmp_csum:fix"


def m_icmp_csum_break(f, r, h):
    h.flags["break_icmp"] = True
    return "icmp_csum:broken"


IP_MUTATIONS = [
    (m_flip_bit, 12), (m_set_byte, 8), (m_truncate, 5), (m_extend, 5), (m_tot_len, 6), (m_ihl, 3),
    (m_options, 3), (m_version, 3), (m_proto, 5), (m_ttl, 5), (m_frag, 4), (m_saddr, 2), (m_daddr, 5),
    (m_ports, 6), (m_udp_len, 3), (m_ethertype, 3), (m_ip_csum_fix, 3), (m_ip_csum_break, 3),
    (m_swap_addrs, 1),
]
PROBE_MUTATIONS = [
    (m_icmp_type, 3), (m_icmp_code, 2), (m_icmp_id, 3), (m_echo_seq, 4), (m_magic, 3), (m_probe_version, 3),
    (m_probe_link, 4), (m_key_id, 4), (m_probe_seq, 5), (m_tx_ns, 5), (m_pad, 4), (m_mac, 3), (m_resign, 4),
    (m_icmp_csum_fix, 3), (m_icmp_csum_break, 3),
]


# -- harnesses ----------------------------------------------------------------
@dataclass
class Mismatch:
    program: str
    seed: int
    index: int
    frame: str
    mutations: list[str]
    expected: dict
    got: dict
    replay: str = ""

    def as_dict(self) -> dict:
        d = self.__dict__.copy()
        d["replay"] = self.replay.format(self.index)
        return d


@dataclass
class Result:
    program: str
    seed: int
    frames: int = 0
    seconds: float = 0.0
    mismatches: int = 0
    samples: list[dict] = field(default_factory=list)
    counter_mismatches: list[str] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)
    ambiguous: int = 0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    @property
    def total_mismatches(self) -> int:
        return self.mismatches + len(self.counter_mismatches)

    def as_dict(self) -> dict:
        return {"program": self.program, "seed": self.seed, "frames": self.frames,
                "seconds": round(self.seconds, 2), "frames_per_s": round(self.frames_per_s, 1),
                "mismatches": self.total_mismatches, "frame_mismatches": self.mismatches,
                "counter_mismatches": self.counter_mismatches, "samples": self.samples,
                "ambiguous": self.ambiguous, "outcomes": dict(self.outcomes.most_common())}


class Harness:
    """One program under test: base frames, mutations, fix-ups, the
    reference, and the counter check at the end."""

    program = ""
    hook = "tc"
    mutations: list = IP_MUTATIONS
    mutation_counts = ((0, 20), (1, 35), (2, 25), (3, 12), (4, 8))

    def __init__(self):
        self.flags: dict = {}
        fns, weights = zip(*self.mutations)
        self._mut_fns, self._mut_cum = list(fns), _cumulative(weights)
        counts, cweights = zip(*self.mutation_counts)
        self._counts, self._counts_cum = list(counts), _cumulative(cweights)

    # to override
    def reset(self) -> None: ...
    def base(self, r: random.Random) -> tuple[bytearray, str]: ...
    def expect(self, frame: bytes, before: int, after: int) -> Expect: ...
    def fixup(self, f: bytearray, r: random.Random) -> None: ...
    def before_frame(self) -> None: ...
    def resolve(self, e: Expect) -> str | None: return "ambiguous outcome without a resolver"
    def read_stat(self, prog: str, stat: str) -> int: return self.fx.gstats_fast[STAT_INDEX[stat]]
    def ref_stats(self, prog: str) -> dict: return self.ref.stats

    def resync(self, prog: str) -> None:
        """After a mismatch: the reference adopts the kernel's counters, so
        that one wrong decision is reported once, not on every later frame."""
        self.ref.stats.update(self.fx.gstats())
    def final_check(self) -> list[str]: return []

    def generate(self, r: random.Random) -> tuple[bytes, list[str]]:
        f, kind = self.base(r)
        labels = [kind]
        self.flags.clear()
        k = r.choices(self._counts, cum_weights=self._counts_cum)[0]
        if k:
            for m in r.choices(self._mut_fns, cum_weights=self._mut_cum, k=k):
                labels.append(m(f, r, self))
        self.fixup(f, r)
        if self.flags.get("labels"):
            labels += self.flags["labels"]
        if ref.test_run_refuses(self.hook, f):
            need = 54 if len(f) >= 14 and f[12:14] == b"\x86\xdd" else 34
            if len(f) < 14:
                need = 14 if self.hook == "xdp" else need
            f += r.randbytes(max(need - len(f), 0))
            labels.append(f"pad-to:{len(f)}")
        return bytes(f), labels


def _cumulative(weights) -> list[float]:
    out, s = [], 0.0
    for w in weights:
        s += w
        out.append(s)
    return out


def run(h: Harness, runners: dict, frames: int, seed: int, max_samples: int = 10,
        deadline_s: float | None = None, stop_at: int | None = None,
        on_frames: Callable[[int], None] | None = None) -> Result:
    """Pushes `frames` frames through the harness's program and checks each;
    then the maps' counters."""
    return run_programs(h, runners, {h.program: frames}, seed, max_samples, deadline_s, stop_at,
                        on_frames)[h.program]


def run_programs(h: Harness, runners: dict, frames: dict[str, int], seed: int, max_samples: int = 10,
                 deadline_s: float | None = None, stop_at: int | None = None,
                 on_frames: Callable[[int], None] | None = None) -> dict[str, Result]:
    """The same for a harness that feeds several programs (the arbitration
    lines share state): at least frames[p] frames reach each program p;
    `runners` maps a program to its TestRun. A mismatch's `index` counts
    every frame of the run: `stop_at` = that index ends the run right
    after it (replay). on_frames(n) hears of the frames checked, every
    PROGRESS_FRAMES and at the end."""
    r = random.Random(seed)
    results = {p: Result(p, seed) for p in frames}
    pending = {p: n for p, n in frames.items() if n > 0}
    single = None if getattr(h, "multi", False) else h.program
    replay = f"python -m lab.fuzz --program {' '.join(frames)} --seed {seed} --stop-at {{}}"
    h.reset()
    mono = time.monotonic_ns
    hook = h.hook
    t0 = time.perf_counter()
    i = 0
    while pending:
        frame, labels = h.generate(r)
        prog = single or h.target(r, pending)
        res = results.get(prog) or results.setdefault(prog, Result(prog, seed))
        run_one = runners[prog]
        h.before_frame()
        before = mono()
        verdict, out = run_one(frame)
        after = mono()
        e = h.expect(frame, before, after) if single else h.expect_for(prog, frame, before, after)
        problem = None
        if e.verdict == ref.ANY:
            pass
        elif verdict == ref.REFUSED:
            problem = f"BPF_PROG_TEST_RUN refused the frame (errno {out})"
        elif verdict != e.verdict:
            problem = "verdict"
        elif e.out_check is not None:
            problem = e.out_check(out)
        elif e.out is None:
            if out != frame:
                problem = "output modified: " + ref.diff_positions(frame, out)
        elif out != e.out:
            problem = "output: " + ref.diff_positions(e.out, out)
        if e.verdict == ref.ANY:
            res.ambiguous += 1
            problem = e.ambiguous(verdict, out) if verdict != ref.REFUSED else \
                f"BPF_PROG_TEST_RUN refused the frame (errno {out})"
        elif problem is None and e.ambiguous is not None:
            res.ambiguous += 1
            problem = h.resolve(e)
        if problem is None and e.stat is not None:
            # Verdict and bytes cannot tell most exits apart (untouched, or
            # consumed): the counter can.
            got_n, want_n = h.read_stat(prog, e.stat), h.ref_stats(prog)[e.stat]
            if got_n != want_n:
                problem = f"counter {e.stat} = {got_n}, reference {want_n}"
        if problem is None and e.extra_check is not None:
            problem = e.extra_check()
        res.outcomes[f"{prog}: {e.why}"] += 1
        if problem is not None:
            # Follow the kernel from here, so one wrong decision is reported once.
            h.resync(prog)
            res.mismatches += 1
            if len(res.samples) < max_samples:
                got = {"verdict": ref.VERDICT_NAMES[hook].get(verdict, verdict), "problem": problem}
                if verdict != ref.REFUSED:
                    got["out"] = "untouched" if out == frame else out.hex()
                res.samples.append(Mismatch(prog, seed, i, frame.hex(), labels, e.describe(hook), got,
                                            replay).as_dict())
        res.frames += 1
        if prog in pending:
            pending[prog] -= 1
            if not pending[prog]:
                del pending[prog]
        if stop_at is not None and i >= stop_at:
            break
        i += 1
        if on_frames and i % PROGRESS_FRAMES == 0:
            on_frames(PROGRESS_FRAMES)
        if deadline_s is not None and (i & 255) == 0 and time.perf_counter() - t0 > deadline_s:
            break
    elapsed = time.perf_counter() - t0
    checked = sum(res.frames for res in results.values())
    if on_frames:
        on_frames(checked - i // PROGRESS_FRAMES * PROGRESS_FRAMES)  # those since the last call
    total = checked or 1
    if hasattr(h, "extra_outcomes"):
        for res in results.values():
            res.outcomes.update(h.extra_outcomes())
    final = h.final_check()
    for p, res in results.items():
        res.seconds = elapsed * res.frames / total      # each program's share of the wall clock
        res.counter_mismatches = final.get(p, []) if isinstance(final, dict) else final
    return results


# -- the gateway: tp_steer and the heartbeat programs ------------------------
class GatewayFixture:
    """A gateway compiled from FUZZ_CONFIG, its maps written from the models
    above; `reset()` clears every counter and state map."""

    def __init__(self, seed: int = 0):
        from appliance.core import config
        from appliance.edge.dataplane import PROBE_IDENT, Gateway
        self.cfg = config.parse(FUZZ_CONFIG, "fuzz")
        self.gw = Gateway(self.cfg)
        self.ident = PROBE_IDENT
        self.links = FUZZ_LINKS
        kr = random.Random(f"keys-{seed}")
        ids = kr.sample(range(1, 256), 2)
        self.keys = [KeyModel(ids[0], kr.randbytes(16)), KeyModel(ids[1], kr.randbytes(16))]
        self.gstats_fast = PerCpuCounters(self.gw.bpf["tp_gstats"].map_fd)
        self.events: list[tuple[int, int, int]] = []
        self.gw.open_events(lambda ev: self.events.append((ev.class_id, ev.from_link, ev.to_link)))
        self.runners = {"tp_steer": TestRun(self.gw.steer.fd),
                        "tp_steer_xdp": SteerAtXdpRun(self.gw.steer_xdp.fd, self.gw.steer.fd),
                        "tp_hb_egress": TestRun(self.gw.hb_egress.fd), "tp_hb_ingress": TestRun(self.gw.hb_ingress.fd)}

    @property
    def dead_ns(self) -> int:
        return self.cfg.heartbeat.dead_ns

    @property
    def interval_ns(self) -> int:
        return self.cfg.heartbeat.interval_us * 1000

    def reset(self) -> None:
        bpf = self.gw.bpf
        for name in ("tp_health", "tp_rtt_ring", "tp_probe_round", "tp_steer_stats", "tp_rtt_hist", "tp_gstats"):
            bpf[name].clear()
        self.gw.write_policy(self.gw.preferred_active())
        for i, l in enumerate(self.links):
            bpf["tp_links"][ctypes.c_uint32(i)] = l.to_map()
        for slot, k in enumerate(self.keys):
            bpf["tp_keys"][ctypes.c_uint32(slot)] = k.to_map()
        self.gw.poll(0)
        self.events.clear()

    def write_health(self, now: int) -> None:
        t = self.gw.bpf["tp_health"]
        for i in range(len(self.cfg.links)):
            t[ctypes.c_uint32(i)] = layout.Health(last_reply_ns=now, fresh_since_ns=now - 10**9)

    def gstats(self) -> dict[str, int]:
        return self.gw.global_stats()

    def health(self, link: int) -> layout.Health:
        return layout.Health.from_buffer_copy(self.gw.bpf["tp_health"][ctypes.c_uint32(link)])

    def replies(self, link: int) -> int:
        return self.health(link).replies


def _compare_stats(got: dict, want: dict, names) -> list[str]:
    return [f"tp_gstats[{n}] = {got.get(n)}, reference {want.get(n, 0)}" for n in names
            if got.get(n) != want.get(n, 0)]


def _ip_frame(r: random.Random, proto: int, dst: bytes | None = None, dport: int | None = None,
              ttl: int | None = None, src: bytes | None = None, frag: int = 0, options: bytes = b"") -> bytearray:
    dst = dst or r.choice(DST_POOL)
    src = src or r.choice(SRC_POOL[:3])
    dport = r.choice(PORT_POOL) if dport is None else dport
    ttl = r.choice(TTL_POOL) if ttl is None else ttl
    body = r.randbytes(r.choice((0, 0, 4, 16, 32, r.randrange(64))))
    if proto == 17:
        l4 = udp(r.randrange(1024, 65536), dport, body)
    elif proto == 6:
        l4 = tcp(r.randrange(1024, 65536), dport, body)
    elif proto == 1:
        l4 = icmp_echo(8, r.randrange(65536), r.randrange(65536), body)
    else:
        l4 = body
    f = bytearray(eth(ipv4(src, dst, proto, l4, ttl=ttl, frag=frag, options=options,
                           ident=r.randrange(65536))))
    if len(f) < 60 and r.random() < 0.3:
        f += bytes(60 - len(f))     # Ethernet minimum-size padding after tot_len
    return f


def _random_frame(r: random.Random, ipv4_header: bool) -> bytearray:
    n = r.choice((14, 15, 20, 34, 35, 42, 54, 60, 64, 82, 100, r.randrange(14, 200)))
    f = bytearray(r.randbytes(n))
    if ipv4_header and n >= 34:
        f[12:14] = b"\x08\x00"
        f[14] = 0x45 if r.random() < 0.7 else (0x40 | r.randrange(16))
        if r.random() < 0.5:
            _U16BE.pack_into(f, 16, min(n - 14, r.choice((n - 14, r.randrange(20, n - 13)))))
        if r.random() < 0.3:
            f[20:22] = b"\x00\x00"
        fix_ip_csum(f)
    return f


class SteerHarness(Harness):
    program = "tp_steer"
    hook = "tc"

    # class -> a (dst, proto, dport) that the rules send to it
    CLASS_TARGETS = [
        (ref.addr("198.19.0.10"), 17, 9000), (ref.addr("198.19.0.5"), 6, 9099), (ref.addr("198.19.0.200"), 17, 9150),
        (ref.addr("10.1.0.9"), 17, 53), (ref.addr("198.19.0.70"), 6, 443), (ref.addr("8.8.8.8"), 6, 80),
        (ref.addr("198.19.0.3"), 1, 0), (ref.addr("10.9.9.9"), 47, 0), (ref.addr("198.19.0.10"), 17, 12345),
    ]

    def __init__(self, fx: GatewayFixture):
        super().__init__()
        self.fx = fx
        self.ident = fx.ident
        self.keys = fx.keys
        self.dead_ns = fx.dead_ns
        self._refresh_ns = 0

    def reset(self) -> None:
        from appliance.core.classify import compile_rules
        fx = self.fx
        fx.reset()
        cfg = fx.cfg
        classes = [[cfg.link_index(n) for n in c.links] for c in cfg.classes]
        self.ref = ref.SteerRef(compile_rules(cfg), fx.links, classes, [c[0] for c in classes],
                                fx.dead_ns, fx.interval_ns)
        self._refresh_ns = 0
        self.before_frame()

    def before_frame(self) -> None:
        now = time.monotonic_ns()
        if now - self._refresh_ns > 200_000_000:     # keep every link's last reply far inside the dead interval
            self.fx.write_health(now)
            for i in range(len(self.fx.cfg.links)):
                self.ref.last_reply[i] = now
            self._refresh_ns = now

    def base(self, r):
        x = r.random()
        if x < 0.55:
            dst, proto, dport = r.choice(self.CLASS_TARGETS)
            if r.random() < 0.3:
                dport = r.choice(PORT_POOL)
            return _ip_frame(r, proto, dst, dport, ttl=r.choice((64, 64, 64, 2, 1, 255))), "class"
        if x < 0.70:
            return _ip_frame(r, r.choice(PROTO_POOL)), "ipv4"
        if x < 0.76:
            return _ip_frame(r, r.choice((6, 17, 1)), options=r.randbytes(4 * r.randrange(1, 11))), "options"
        if x < 0.80:
            return _ip_frame(r, 17, frag=r.choice((0x2000, 0x0010, 0x2010))), "fragment"
        if x < 0.84:
            return bytearray(eth(bytes(28), 0x0806)), "arp"
        if x < 0.88:
            return bytearray(eth(r.randbytes(r.choice((40, 48, 60))), 0x86DD)), "ipv6"
        if x < 0.91:
            inner = _ip_frame(r, 17)[12:]
            return bytearray(eth(b"\x00\x05" + bytes(inner), 0x8100)), "vlan"
        if x < 0.95:
            return _random_frame(r, True), "random-ipv4"
        return _random_frame(r, False), "random"

    def fixup(self, f, r):
        if r.random() < 0.75:
            fix_ip_csum(f)
        if self.flags.get("break_ip") and len(f) >= 26:
            f[24] ^= 1 << r.randrange(8)

    def expect(self, frame, before, after):
        return self.ref.expect(frame, before, after)

    def final_check(self) -> list[str]:
        fx, rf = self.fx, self.ref
        # Forwarded at XDP: every redirect to a link that takes XDP frames, when XDP ran first.
        at_xdp = sum(counts[2] for (_, link), counts in rf.steer_stats.items()
                     if self.program == "tp_steer_xdp" and fx.links[link].flags & layout.LINK_XDP_XMIT)
        problems = _compare_stats(fx.gstats(), {**rf.stats, "xdp_forwarded": at_xdp}, layout.STATS)
        for cid in range(len(fx.cfg.classes)):
            for link in range(layout.MAX_LINKS):
                got = fx.gw.counters(cid, link)
                want = dict(zip(("packets", "bytes", "redirects", "failovers"),
                                rf.steer_stats.get((cid, link), [0, 0, 0, 0])))
                if got != want:
                    problems.append(f"tp_steer_stats[class {cid}, link {link}] = {got}, reference {want}")
        fx.gw.poll(0)
        if fx.events != rf.failover_events:
            problems.append(f"reflex events {fx.events}, reference {rf.failover_events}")
        if fx.gw.active() != rf.active:
            problems.append(f"tp_active = {fx.gw.active()}, reference {rf.active}")
        return problems


class SteerAtXdpHarness(SteerHarness):
    """tp_steer's frames and reference, through SteerAtXdpRun."""
    program = "tp_steer_xdp"


class _HeartbeatHarness(Harness):
    mutations = IP_MUTATIONS + PROBE_MUTATIONS
    RECENT = 64

    def __init__(self, fx: GatewayFixture):
        super().__init__()
        self.fx = fx
        self.ident = fx.ident
        self.keys = fx.keys
        self.links = fx.links
        self.dead_ns = fx.dead_ns
        self.macs = ref.MacCache()
        self.recent: list[bytes] = []

    def sign(self, f: bytearray, key: KeyModel | None = None) -> None:
        """Gives the probe the MAC its key id's key (or `key`) makes over it
        with its link's addresses (a link beyond the table: the packet's own,
        as if it had one), then a valid ICMP checksum."""
        if not _need_probe(f):
            return
        link = struct.unpack_from("<H", f, OFF_LINK)[0]
        if key is None:
            key = next((k for k in self.keys if k.id and k.id == f[OFF_KEY_ID]), None)
            if key is None:
                key = self.keys[0]
                f[OFF_KEY_ID] = key.id
        if link < layout.MAX_LINKS and any(self.links[link].local):
            l = self.links[link]
            local, target = l.local, l.target
        elif f[34] == 0:
            local, target = bytes(f[30:34]), bytes(f[26:30])
        else:
            local, target = bytes(f[26:30]), bytes(f[30:34])
        k0, k1 = key.words
        seq = _U64LE.unpack_from(f, OFF_SEQ)[0]
        tx = _U64LE.unpack_from(f, OFF_TX)[0]
        _U64LE.pack_into(f, OFF_MAC, self.macs.mac(k0, k1, local, target, link, f[OFF_KEY_ID], seq, tx))
        fix_icmp_csum(f)

    def probe_frame(self, r, icmp_type: int, link: int, seq: int, tx_ns: int = 0, key_id: int = 0,
                    ttl: int = 64, swap: bool = False) -> bytearray:
        l = self.links[link] if link < layout.MAX_LINKS else self.links[0]
        src, dst = (l.local, l.target) if icmp_type == 8 else (l.target, l.local)
        if swap:
            src, dst = dst, src
        payload = probe_payload(link, seq & ref.M64, tx_ns, key_id)
        f = bytearray(eth(ipv4(src, dst, 1, icmp_echo(icmp_type, self.ident, r.randrange(65536), payload),
                               ttl=ttl, ident=r.randrange(65536))))
        if r.random() < 0.1:
            f += bytes(r.choice((2, 4, 8)))   # padding after tot_len
        return f

    def other_frame(self, r) -> tuple[bytearray, str]:
        x = r.random()
        if x < 0.4:
            l = r.choice(self.links[:4])
            body = r.randbytes(r.choice((0, 8, 40, 56)))
            icmp = icmp_echo(r.choice((0, 8)), r.choice((self.ident ^ 1, 1, self.ident)), r.randrange(65536), body)
            return bytearray(eth(ipv4(l.target, l.local, 1, icmp))), "ping"
        if x < 0.6:
            return _ip_frame(r, r.choice(PROTO_POOL)), "ipv4"
        if x < 0.8:
            return _random_frame(r, True), "random-ipv4"
        return _random_frame(r, False), "random"

    def fixup(self, f, r):
        flags = self.flags
        if flags.get("resign") or (r.random() < 0.25 and self.hook_resign):
            self.sign(f)
        elif flags.get("fix_icmp") or r.random() < 0.3:
            fix_icmp_csum(f)
        if r.random() < 0.7:
            fix_ip_csum(f)
        if flags.get("break_icmp") and len(f) >= 38:
            f[36 + r.randrange(2)] ^= 1 << r.randrange(8)
        if flags.get("break_ip") and len(f) >= 26:
            f[24] ^= 1 << r.randrange(8)

    hook_resign = False


class HbEgressHarness(_HeartbeatHarness):
    program = "tp_hb_egress"

    def reset(self) -> None:
        self.fx.reset()
        self.ref = ref.HbEgressRef(self.links, self.keys, self.ident, TEST_RUN_IFINDEX, macs=self.macs)
        self.seq = 0

    def base(self, r):
        x = r.random()
        if x < 0.6:
            self.seq += 1
            link = r.choice((0, 0, 1, 1, 2, 3, 4, 8, 300))
            f = self.probe_frame(r, 8, link, self.seq, ttl=r.choice((64, 255, 1)), swap=r.random() < 0.05)
            if r.random() < 0.1:     # a probe that already carries a stamp and a MAC (a resend)
                f[OFF_TX:OFF_TX + 8] = r.randbytes(8)
                f[OFF_MAC:OFF_MAC + 8] = r.randbytes(8)
                fix_icmp_csum(f)
            return f, f"probe(link {link})"
        if x < 0.7:
            self.seq += 1
            return self.probe_frame(r, 0, r.choice((0, 1)), self.seq), "reply"
        return self.other_frame(r)

    def expect(self, frame, before, after):
        return self.ref.expect(frame, before, after)

    def final_check(self) -> list[str]:
        fx, rf = self.fx, self.ref
        problems = _compare_stats(fx.gstats(), rf.stats, layout.STATS)
        for link in range(layout.MAX_LINKS):
            got = fx.health(link)
            for name in ("probes", "unanswered", "stamped_seq"):
                if getattr(got, name) != getattr(rf.health[link], name):
                    problems.append(f"tp_health[{link}].{name} = {getattr(got, name)}, "
                                    f"reference {getattr(rf.health[link], name)}")
            if got.replies:
                problems.append(f"tp_health[{link}].replies = {got.replies} after egress only")
        return problems


class HbIngressHarness(_HeartbeatHarness):
    program = "tp_hb_ingress"
    hook_resign = True

    def reset(self) -> None:
        self.fx.reset()
        self.ref = ref.HbIngressRef(self.links, self.keys, self.ident, TEST_RUN_IFINDEX, macs=self.macs,
                                    dead_ns=self.dead_ns)
        self.next_seq = [1] * 9
        self.recent = []
        self.restarts = 0

    def _tx(self, r) -> int:
        now = time.monotonic_ns()
        x = r.random()
        if x < 0.9:    # a little before now: 2 us .. dead/2, log-uniform
            return now - int(2000 * (self.dead_ns / 4000) ** r.random())
        return max(r.choice((0, now + r.randrange(10**6, 10**10), now - self.dead_ns - r.randrange(10**6, 10**10),
                             now - self.dead_ns + r.randrange(-200_000, 200_000))), 0)

    def base(self, r):
        x = r.random()
        if x < 0.08 and self.recent:
            return bytearray(r.choice(self.recent)), "replay"
        if x < 0.75:
            link = r.choice((0, 0, 0, 1, 1, 1, 2, 2, 3, 4, 8))
            slot = min(link, 8)
            y = r.random()
            h = self.ref.health[link] if link < layout.MAX_LINKS else None
            if h is not None and h.seq_top > self.next_seq[slot] + 10_000:
                self.restart_link(link)
            if y < 0.75 or h is None:
                seq = self.next_seq[slot]
                self.next_seq[slot] += r.choice((1, 1, 1, 2, 3))
                what = "fresh"
            elif y < 0.85:
                seq = max(h.seq_top - r.randrange(0, 80), 0)
                what = "old"
            else:
                seq = h.seq_top + r.choice((64, 65, 100, 1000))
                self.next_seq[slot] = max(self.next_seq[slot], seq + 1)
                what = "jump"
            seq &= ref.M64
            key = self.keys[0] if r.random() < 0.75 else self.keys[1]
            ttl = 255 if link == 1 and r.random() < 0.9 else r.choice((64, 255, 254, 1))
            f = self.probe_frame(r, 0, link, seq, self._tx(r), key.id, ttl=ttl, swap=r.random() < 0.03)
            if r.random() < 0.03:
                self.sign(f, KeyModel(key.id, r.randbytes(16)))   # right id, wrong key
            else:
                self.sign(f, key)
            return f, f"reply(link {link}, {what} seq {seq}, key {key.id})"
        if x < 0.82:
            self.next_seq[0] += 1
            f = self.probe_frame(r, 8, 0, self.next_seq[0])
            return f, "request"
        return self.other_frame(r)

    def generate(self, r):
        frame, labels = super().generate(r)
        if len(frame) >= ref.PROBE_FRAME_LEN and frame[34] == 0:
            if len(self.recent) >= self.RECENT:
                self.recent[r.randrange(self.RECENT)] = frame
            else:
                self.recent.append(frame)
        return frame, labels

    def expect(self, frame, before, after):
        return self.ref.expect(frame, before, after)

    def resync(self, prog: str) -> None:
        super().resync(prog)
        for link in range(layout.MAX_LINKS):
            got, want = self.fx.health(link), self.ref.health[link]
            want.seq_top, want.seq_seen = got.seq_top, got.seq_seen
            want.replies = got.replies      # the RTT histogram follows the kernel's replies too

    def restart_link(self, link: int) -> None:
        """Zeroes a link's health in the kernel and the reference: after an
        accepted reply with a huge sequence (a mutation's), every fresh
        sequence would be a replay, and the link's accepting paths would go
        unexercised for the rest of the run."""
        h = self.ref.health[link]
        h.hist_base += h.replies
        h.seq_top = h.seq_seen = h.replies = h.unanswered = 0
        h.last_reply = h.rtt_bounds = None
        self.fx.gw.bpf["tp_health"][ctypes.c_uint32(link)] = layout.Health()
        self.next_seq[link] = 1
        self.restarts += 1

    def resolve(self, e: Expect) -> str | None:
        link, decide = e.ambiguous
        h = self.ref.health[link]
        got = self.fx.replies(link)
        if got not in (h.replies, h.replies + 1):
            return f"tp_health[{link}].replies = {got}, reference {h.replies} before this frame"
        return decide(got == h.replies + 1)

    def final_check(self) -> list[str]:
        fx, rf = self.fx, self.ref
        problems = _compare_stats(fx.gstats(), rf.stats, layout.STATS)
        for link in range(layout.MAX_LINKS):
            got, want = fx.health(link), rf.health[link]
            for name in ("replies", "seq_top", "seq_seen", "probes", "unanswered"):
                if getattr(got, name) != getattr(want, name):
                    problems.append(f"tp_health[{link}].{name} = {getattr(got, name):#x}, "
                                    f"reference {getattr(want, name):#x}")
            if want.last_reply is not None:
                lo, hi = want.last_reply
                if not lo <= got.last_reply_ns <= hi:
                    problems.append(f"tp_health[{link}].last_reply_ns {got.last_reply_ns} outside [{lo}, {hi}]")
                rlo, rhi = want.rtt_bounds
                if not rlo <= got.rtt_last_ns <= rhi:
                    problems.append(f"tp_health[{link}].rtt_last_ns {got.rtt_last_ns} outside [{rlo}, {rhi}]")
            elif got.last_reply_ns:
                problems.append(f"tp_health[{link}].last_reply_ns = {got.last_reply_ns}, but no reply accepted")
            hist = sum(fx.gw.rtt_histogram(link)) if link < len(fx.cfg.links) else 0
            if link < len(fx.cfg.links) and hist != want.hist_base + want.replies:
                problems.append(f"tp_rtt_hist[link {link}] holds {hist} samples, reference "
                                f"{want.hist_base + want.replies} replies")
        return problems



# -- arbitration: both line programs over shared feed state ------------------
ARB_HB_DEDUP_NS = 2_000_000     # short, so that heartbeats land both inside and outside the window
TRADER_IFINDEX = 7
TRADER_SRC, TRADER_DST = _mac("02:00:00:00:01:fe"), _mac("02:00:00:00:01:01")
LINE_SOURCES = (ref.addr("198.18.30.1"), ref.addr("198.18.30.2"))
LINE_MACS = ((_mac("02:00:00:00:0a:02"), _mac("02:00:00:00:0a:01")),
             (_mac("02:00:00:00:0b:02"), _mac("02:00:00:00:0b:01")))
# Feeds: two MoldUDP64 (one unicast, one multicast, ids not in order), one
# MDP3, and one whose receiver MAC is not known yet.
FUZZ_FEEDS = [
    ref.FeedDef(0, ref.PROTO_MOLD, ref.addr("198.18.1.1"), 26400, TRADER_IFINDEX, TRADER_SRC, TRADER_DST),
    ref.FeedDef(1, ref.PROTO_MDP3, ref.addr("198.18.1.1"), 26401, TRADER_IFINDEX, TRADER_SRC, TRADER_DST),
    ref.FeedDef(5, ref.PROTO_MOLD, ref.addr("233.54.12.1"), 26477, TRADER_IFINDEX, TRADER_SRC,
                _mac("01:00:5e:36:0c:01")),
    ref.FeedDef(2, ref.PROTO_MOLD, ref.addr("198.18.1.2"), 26400),
]
ARB_STAT_COUNT = len(layout.ARB_STATS)


class PerCpuStruct:
    """One element of a per-CPU array of u64 fields: the first `fields`
    summed over CPUs, one syscall, preallocated buffers."""

    def __init__(self, map_fd: int, words: int, fields: int):
        self._lookup = libbpf.LIBBPF.bpf_map_lookup_elem
        self._fd = map_fd
        self._ncpu = libbpf.possible_cpus()
        self._words, self._fields = words, fields
        self._key = ctypes.c_uint32()
        self._buf = (ctypes.c_uint64 * (words * self._ncpu))()
        self._kref, self._bref = ctypes.byref(self._key), ctypes.byref(self._buf)

    def __getitem__(self, index: int) -> list[int]:
        self._key.value = index
        if self._lookup(self._fd, self._kref, self._bref) < 0:
            raise OSError(ctypes.get_errno(), f"per-CPU map lookup of {index}")
        b, w, f = self._buf, self._words, self._fields
        if self._ncpu == 1:
            return b[0:f]
        return [sum(col) for col in zip(*(b[c * w:c * w + f] for c in range(self._ncpu)))]


class ArbFixture:
    """The arbiter compiled with a short heartbeat dedup window, the fuzz
    feeds written, its events collected."""

    def __init__(self, seed: int = 0):
        import ipaddress

        from appliance.edge.arbitration import Arbiter
        self.arb = Arbiter(ARB_HB_DEDUP_NS)
        self.feeds = FUZZ_FEEDS
        self._ipaddress = ipaddress
        self.events: list[tuple] = []
        self.arb.open_events(lambda ev: self.events.append(
            (ev.kind, ev.feed, ev.line, ev.first, ev.last, layout.session_name(ev.session))))
        self.runners = {name: TestRun(fn.fd) for name, fn in zip(ARB_PROGRAMS, self.arb.lines)}
        self.line_stats = PerCpuStruct(self.arb.bpf["tp_line_stats"].map_fd,
                                       ctypes.sizeof(layout.LineStats) // 8, len(ref.LINE_FIELDS))
        self.gstats_fast = PerCpuCounters(self.arb.bpf["tp_arb_gstats"].map_fd)
        self._lookup = libbpf.LIBBPF.bpf_map_lookup_elem
        self._state_fd = self.arb.bpf["tp_feed_state"].map_fd
        self._state_key = ctypes.c_uint32()
        self._state = layout.FeedState()
        self._state_refs = ctypes.byref(self._state_key), ctypes.byref(self._state)

    def state(self, feed_id: int) -> layout.FeedState:
        """tp_feed_state[feed_id], one syscall into a reused buffer (valid until the next call)."""
        self._state_key.value = feed_id
        if self._lookup(self._state_fd, *self._state_refs) < 0:
            raise OSError(ctypes.get_errno(), "tp_feed_state lookup")
        return self._state

    def reset(self) -> None:
        bpf = self.arb.bpf
        for name in ("tp_feeds", "tp_feed_index", "tp_feed_state", "tp_feed_claims", "tp_line_stats", "tp_arb_gstats"):
            bpf[name].clear()
        for f in self.feeds:
            mac = lambda b: ":".join(f"{x:02x}" for x in b)
            self.arb.write_feed(f.id, "moldudp64" if f.proto == ref.PROTO_MOLD else "mdp3",
                                self._ipaddress.IPv4Address(f.addr), f.port, f.ifindex, mac(f.src_mac),
                                mac(f.dst_mac) if f.ifindex else None)
        self.arb.sync_clock()
        self.arb.poll(0)
        self.events.clear()


def mold_payload(session: bytes, seq: int, count: int, blocks: list[bytes] = ()) -> bytes:
    return session + seq.to_bytes(8, "big") + count.to_bytes(2, "big") + b"".join(
        len(b).to_bytes(2, "big") + b for b in blocks)


def mdp3_payload(seq: int, sending_time: int, body: bytes) -> bytes:
    msg = struct.pack("<HHHHH", 10 + len(body), len(body), 46, 1, 9) + body
    return struct.pack("<IQ", seq & 0xFFFFFFFF, sending_time) + msg


def feed_frame(feed: ref.FeedDef, line: int, payload: bytes, ttl: int = 64, sport: int = 40000) -> bytearray:
    dst_mac, src_mac = LINE_MACS[line][1], LINE_MACS[line][0]
    return bytearray(eth(ipv4(LINE_SOURCES[line], feed.addr, 17, udp(sport, feed.port, payload), ttl=ttl),
                         dst=dst_mac, src=src_mac))


def _payload_off(f) -> int:
    return 14 + (f[14] & 15) * 4 + 8 if len(f) > 14 else 42


def m_mold_count(f, r, h):
    p = _payload_off(f)
    if len(f) < p + 20:
        return "mold_count:noop"
    cur = (f[p + 18] << 8) | f[p + 19]
    v = r.choice((0, 1, 0xFFFF, 0xFFFE, 127, 128, 129, cur + 1, cur - 1, r.randrange(65536))) & 0xFFFF
    _U16BE.pack_into(f, p + 18, v)
    return f"mold_count={v}"


def m_mold_seq(f, r, h):
    p = _payload_off(f)
    if len(f) < p + 18:
        return "mold_seq:noop"
    cur = int.from_bytes(f[p + 10:p + 18], "big")
    lim = ref.ARB_SEQ_LIMIT
    v = r.choice((0, 1, lim - 1, lim, lim - 2, cur + 1, cur - 1, cur + ref.ARB_FAR + 1, cur + 2**29,
                  max(cur - ref.ARB_BEHIND - 1, 1), 2**63, r.randrange(1 << 64))) % (1 << 64)
    f[p + 10:p + 18] = v.to_bytes(8, "big")
    return f"mold_seq={v}"


def m_mold_session(f, r, h):
    p = _payload_off(f)
    if len(f) < p + 10:
        return "mold_session:noop"
    x = r.random()
    if x < 0.5:
        i = p + r.randrange(10)
        f[i] ^= 1 << r.randrange(8)
    elif x < 0.8:
        f[p:p + 10] = r.randbytes(10)
    else:
        f[p:p + 10] = h.session_name(r.randrange(max(h.pub[0].k - 2, 0), h.pub[0].k + 2))
    return f"mold_session={bytes(f[p:p + 10]).hex()}"


def m_block_len(f, r, h):
    p = _payload_off(f)
    if len(f) < p + 22:
        return "block_len:noop"
    off, blocks = p + 20, []
    while off + 2 <= len(f) and len(blocks) < 130:
        blocks.append(off)
        off += 2 + ((f[off] << 8) | f[off + 1])
    at = r.choice(blocks)
    cur = (f[at] << 8) | f[at + 1]
    v = r.choice((0, cur + 1, cur - 1, cur + 2, 0xFFFF, r.randrange(65536))) & 0xFFFF
    _U16BE.pack_into(f, at, v)
    return f"block_len@{at}={v}"


def m_mdp3_seq(f, r, h):
    p = _payload_off(f)
    if len(f) < p + 4:
        return "mdp3_seq:noop"
    cur = int.from_bytes(f[p:p + 4], "little")
    v = r.choice((0, 1, cur + 1, cur - 1, cur + ref.ARB_FAR + 1, 0xFFFFFFFF, r.randrange(1 << 32))) & 0xFFFFFFFF
    f[p:p + 4] = v.to_bytes(4, "little")
    return f"mdp3_seq={v}"


FEED_MUTATIONS = [(m_mold_count, 5), (m_mold_seq, 6), (m_mold_session, 4), (m_block_len, 5), (m_mdp3_seq, 3)]


class _Publisher:
    """One MoldUDP64 feed as the exchange publishes it: session k, next sequence."""

    def __init__(self, feed: ref.FeedDef, k: int, seq: int):
        self.feed, self.k, self.seq = feed, k, seq


class ArbHarness(Harness):
    """Both lines of every fuzz feed: the exchange's stream (copies on both
    lines, lost, late, reordered, batched differently), heartbeats, ends of
    session and new sessions, forged sessions and far-ahead/behind runs on
    one or both lines, replays, and everything that must pass untouched;
    some frames mutated."""

    program = "tp_arb_line_a"
    hook = "xdp"
    multi = True                  # each frame goes to the line target() names
    mutations = IP_MUTATIONS + FEED_MUTATIONS
    mutation_counts = ((1, 50), (2, 30), (3, 20))
    MUTATE = 0.12
    HISTORY = 256

    def __init__(self, fx: ArbFixture):
        super().__init__()
        self.fx = fx
        self.mold = [f for f in fx.feeds if f.proto == ref.PROTO_MOLD and f.ifindex]
        self.mdp3 = [f for f in fx.feeds if f.proto == ref.PROTO_MDP3]
        self.no_output = [f for f in fx.feeds if not f.ifindex]

    def session_name(self, k: int) -> bytes:
        return b"FZ%08d" % (k % 10**8)

    def reset(self) -> None:
        import heapq
        self.fx.reset()
        self.ref = ref.ArbRef(self.fx.feeds, ARB_HB_DEDUP_NS)
        self.pub = [_Publisher(f, 0, 1) for f in self.mold]
        self.mdp3_seq = 1
        self.pending: list = []
        self._heap = heapq
        self.clock = self.serial = 0
        self.history: list[tuple[int, bytes]] = []
        self._line = 0

    # traffic --------------------------------------------------------------
    def _send(self, line: int, frame: bytearray, label: str, delay: int = 0) -> None:
        self.serial += 1
        self._heap.heappush(self.pending, (self.clock + delay, self.serial, line, frame, label))

    def _both(self, r, feed, payload: bytes, label: str, loss: float = 0.04) -> None:
        for line in (0, 1):
            if r.random() >= loss:
                self._send(line, feed_frame(feed, line, payload), label, r.choice((0, 0, 0, 1, 2, 5)))

    def _blocks(self, r, count: int) -> list[bytes]:
        return [r.randbytes(r.choice((0, 1, 8, 16, 16, 24))) for _ in range(count)]

    def _action(self, r) -> None:
        x = r.random()
        pub = self.pub[0] if r.random() < 0.85 else r.choice(self.pub)
        name = self.session_name(pub.k)
        feed = pub.feed
        if x < 0.36:                                            # data on both lines
            count = r.choice((1, 1, 1, 2, 3, 4, 8, 16, r.randrange(1, 33), 128 if r.random() < 0.1 else 5))
            blocks = self._blocks(r, count)
            if count > 1 and r.random() < 0.08:                 # batched differently on the two lines
                cut = r.randrange(1, count)
                one = r.randrange(2)
                self._send(one, feed_frame(feed, one, mold_payload(name, pub.seq, count, blocks)), "data-whole")
                self._send(one ^ 1, feed_frame(feed, one ^ 1, mold_payload(name, pub.seq, cut, blocks[:cut])),
                           "data-part", r.randrange(3))
                self._send(one ^ 1, feed_frame(feed, one ^ 1, mold_payload(name, pub.seq + cut, count - cut,
                                                                            blocks[cut:])), "data-part",
                           r.randrange(3))
            else:
                self._both(r, feed, mold_payload(name, pub.seq, count, blocks), f"data {pub.seq}+{count}")
            pub.seq += count
        elif x < 0.44:
            self._both(r, feed, mold_payload(name, pub.seq, 0), f"heartbeat {pub.seq}", loss=0.1)
        elif x < 0.455:                                         # end of session, then (mostly) a new one
            self._both(r, feed, mold_payload(name, pub.seq, 0xFFFF), f"end {pub.seq}", loss=0.05)
            if r.random() < 0.7:
                pub.k += 1
                pub.seq = 1
        elif x < 0.465:                                         # a new session without an end
            pub.k += 1
            pub.seq = r.choice((1, 1, 1, 5))
        elif x < 0.50:                                          # another session's packet, one line
            line = r.randrange(2)
            other = r.choice((r.randbytes(10), self.session_name(pub.k + 1), self.session_name(pub.k - 1),
                              name[:9] + bytes([name[9] ^ 1])))
            kind = r.choice((r.randrange(1, 4), 0, 0xFFFF))
            seq = max(pub.seq + r.randrange(-5, 5), 1)
            for _ in range(r.choice((1, 1, 1, 3, ref.ARB_CONFIRM, ref.ARB_CONFIRM + 2))):
                self._send(line, feed_frame(feed, line, mold_payload(other, seq, kind, self._blocks(r, kind)
                                                                      if kind not in (0, 0xFFFF) else [])),
                           "other-session", r.randrange(4))
                seq += 1
        elif x < 0.525:                                         # far runs
            ahead = r.random() < 0.75 or pub.seq <= ref.ARB_BEHIND + 1000
            jump = r.choice((ref.ARB_FAR + 1, 40_000, 2**20, ref.ARB_SWEEP + 7, ref.ARB_NEWGEN + 9, 10**12))
            start = pub.seq + jump if ahead else pub.seq - ref.ARB_BEHIND - r.randrange(1, 1000)
            genuine = r.random() < 0.5
            lines = (0, 1) if genuine or r.random() < 0.3 else (r.randrange(2),)
            n = r.choice((1, 2, ref.ARB_CONFIRM - 1, ref.ARB_CONFIRM, ref.ARB_CONFIRM + 3))
            seq = start
            for i in range(n):
                for line in lines:
                    self._send(line, feed_frame(feed, line, mold_payload(name, seq, 1, self._blocks(r, 1))),
                               f"far {'ahead' if ahead else 'behind'} {seq}", i)
                seq += 1 if r.random() < 0.9 else ref.ARB_FAR * 3
            if genuine:
                pub.seq = seq
        elif x < 0.68:                                          # MDP3 on both lines
            f = self.mdp3[0]
            if r.random() < 0.01:
                self.mdp3_seq += r.choice((ref.ARB_FAR + 5, 100))
            body = r.randbytes(r.choice((8, 16, 32)))
            self._both(r, f, mdp3_payload(self.mdp3_seq, time.time_ns() - r.randrange(10**7), body),
                       f"mdp3 {self.mdp3_seq}")
            self.mdp3_seq += 1
        elif x < 0.71 and self.history:                         # an old copy again
            self._send(r.randrange(2), bytearray(r.choice(self.history)[1]), "replay")
        elif x < 0.85:
            line = r.randrange(2)
            self._send(line, *self._passthrough(r, line, name))
        else:                                                   # random bytes
            line = r.randrange(2)
            self._send(line, _random_frame(r, r.random() < 0.5), "random")

    def _passthrough(self, r, line: int, name: bytes) -> tuple[bytearray, str]:
        feed = self.mold[0]
        good = mold_payload(name, self.pub[0].seq, 1, [b"x" * 8])
        x = r.randrange(10)
        if x == 0:
            return feed_frame(ref.FeedDef(9, 1, feed.addr, 26402), line, good), "other port"
        if x == 1:
            return feed_frame(ref.FeedDef(9, 1, ref.addr("198.18.1.9"), 26400), line, good), "other address"
        if x == 2:
            return bytearray(eth(ipv4(LINE_SOURCES[line], feed.addr, 6, tcp(1, 26400, good)))), "tcp to the feed"
        if x == 3:
            f = feed_frame(feed, line, good)
            _U16BE.pack_into(f, 20, r.choice((0x2000, 0x0001, 0x2005)))
            fix_ip_csum(f)
            return f, "fragment"
        if x == 4:
            return feed_frame(feed, line, good, ttl=r.choice((0, 1))), "ttl <= 1"
        if x == 5:
            return feed_frame(self.no_output[0], line, good), "no receiver MAC"
        if x == 6:
            return bytearray(eth(r.randbytes(40), r.choice((0x86DD, 0x0806)))), "not IPv4"
        if x == 7:
            f = feed_frame(feed, line, good)[:r.randrange(14, 42)]
            if len(f) >= 34 and r.random() < 0.7:        # a valid IP header, the UDP header cut
                _U16BE.pack_into(f, 16, len(f) - 14)
                fix_ip_csum(f)
            return f, "truncated headers"
        if x == 8:
            return _ip_frame(r, r.choice(PROTO_POOL)), "ipv4"
        f = feed_frame(feed, line, good)
        f[14] = 0x40 | r.randrange(5)
        return f, "ihl < 5"

    def _boundary(self, r) -> None:
        """A current-session packet exactly on (or next to) one of the
        bounds, computed from the feed's state as the reference has it now:
        sent at once, on one line or on both back to back."""
        pub = r.choice(self.pub)
        st = self.ref.state[pub.feed.id]
        if not st.gen:
            return
        n, sw = st.next_seq & ref.ARB_SEQ_MASK, st.swept_seq & ref.ARB_SEQ_MASK
        x = r.choice((n + ref.ARB_FAR, n + ref.ARB_FAR + 1, n - ref.ARB_BEHIND, n - ref.ARB_BEHIND - 1,
                      n + ref.ARB_NEWGEN - 1, n + ref.ARB_NEWGEN, sw + ref.ARB_SWEEP - 1, sw + ref.ARB_SWEEP,
                      n + 2 * ref.ARB_FAR, n - 1, n))
        if not 1 <= x < ref.ARB_SEQ_LIMIT - 200:
            return
        count = r.choice((1, 1, 1, 0, 0xFFFF, 3))
        payload = mold_payload(st.session, x, count, self._blocks(r, count) if count not in (0, 0xFFFF) else [])
        lines = r.choice(((0,), (1,), (0, 1), (1, 0)))
        for line in lines:
            self.serial += 1
            self._heap.heappush(self.pending, (self.clock - 1, self.serial, line,
                                               feed_frame(pub.feed, line, payload), f"bound {x - n:+d}"))
        if len(lines) == 2 and count not in (0, 0xFFFF) and r.random() < 0.5:
            pub.seq = x + count

    def extra_outcomes(self) -> dict[str, int]:
        return {f"event {layout.ARB_EVENTS[k]}": n for k, n in self.ref.event_counts.items()}

    def generate(self, r):
        self.clock += 1
        if r.random() < 0.01:
            self._boundary(r)
        while not self.pending or (self.pending[0][0] > self.clock and r.random() < 0.6):
            self._action(r)
        _, _, line, f, label = self._heap.heappop(self.pending)
        labels = [label]
        if r.random() < self.MUTATE:
            k = r.choices(self._counts, cum_weights=self._counts_cum)[0]
            f = bytearray(f)
            self.flags.clear()
            for m in r.choices(self._mut_fns, cum_weights=self._mut_cum, k=k):
                labels.append(m(f, r, self))
            if r.random() < 0.5:
                fix_ip_csum(f)
        if ref.test_run_refuses("xdp", f):
            f += r.randbytes(14 - len(f))
            labels.append(f"pad-to:{len(f)}")
        frame = bytes(f)
        if len(self.history) < self.HISTORY:
            self.history.append((line, frame))
        elif r.random() < 0.1:
            self.history[r.randrange(self.HISTORY)] = (line, frame)
        self._line = line
        return frame, labels

    def target(self, r, pending) -> str:
        return ARB_PROGRAMS[self._line]

    # checks ---------------------------------------------------------------
    def expect_for(self, prog: str, frame: bytes, before: int, after: int) -> Expect:
        line = ARB_PROGRAMS.index(prog)
        e = self.ref.expect(line, frame, before, after)
        feed_id, _, events = e.extra
        e.extra_check = lambda: self._frame_check(feed_id, line, events)
        return e

    def _frame_check(self, feed_id, line: int, events) -> str | None:
        fx = self.fx
        fx.arb.poll(0)
        got = fx.events
        want = [(kind, feed_id, ln, first, last, sess if kind in (ref.ARB_EVENT["session"],
                                                                  ref.ARB_EVENT["session-candidate"]) else bytes(10))
                for kind, ln, first, last, sess in events]
        problem = None
        if got != want:
            problem = f"events {self._events_str(got)}, reference {self._events_str(want)}"
        fx.events = []
        if problem is None and feed_id is not None:
            kernel = fx.line_stats[feed_id * layout.ARB_LINES + line]
            mine = self.ref.line_stats[(feed_id, line)]
            diff = {name: (k, mine[name]) for name, k in zip(ref.LINE_FIELDS, kernel) if k != mine[name]}
            if diff:
                problem = "tp_line_stats " + ", ".join(f"{n} = {k}, reference {m}" for n, (k, m) in diff.items())
        if problem is None and feed_id is not None:
            diff = self._state_diff(feed_id, fx.state(feed_id), self.ref.state[feed_id])
            if diff:
                problem = "; ".join(diff)
        return problem

    @staticmethod
    def _events_str(events) -> str:
        names = layout.ARB_EVENTS
        return "[" + ", ".join(f"{names.get(k, k)}(feed {fd}, line {'AB'[ln] if ln in (0, 1) else ln}, {a}, {b}"
                               + (f", {s!r})" if any(s) else ")") for k, fd, ln, a, b, s in events) + "]"

    def read_stat(self, prog: str, stat: str) -> int:
        return self.fx.gstats_fast[ARB_PROGRAMS.index(prog) * ARB_STAT_COUNT + layout.ARB_STATS.index(stat)]

    def ref_stats(self, prog: str) -> dict:
        return self.ref.gstats[ARB_PROGRAMS.index(prog)]

    def resync(self, prog: str) -> None:
        fx = self.fx
        gs = fx.arb.global_stats()
        for line in (0, 1):
            self.ref.gstats[line].update(gs["AB"[line]])
            for f in fx.feeds:
                self.ref.line_stats[(f.id, line)].update(
                    zip(ref.LINE_FIELDS, fx.line_stats[f.id * layout.ARB_LINES + line]))
        for f in fx.feeds:
            self.ref.state[f.id].adopt(fx.state(f.id), fx.arb.bpf["tp_feed_claims"][ctypes.c_uint32(f.id)])
        fx.arb.poll(0)
        fx.events = []

    def final_check(self) -> dict[str, list[str]]:
        fx, rf = self.fx, self.ref
        out: dict[str, list[str]] = {p: [] for p in ARB_PROGRAMS}
        gs = fx.arb.global_stats()
        for line, prog in enumerate(ARB_PROGRAMS):
            out[prog] += [f"tp_arb_gstats[{'AB'[line]}][{n}] = {gs['AB'[line]][n]}, reference {rf.gstats[line][n]}"
                          for n in layout.ARB_STATS if gs["AB"[line]][n] != rf.gstats[line][n]]
            for f in fx.feeds:
                kernel = dict(zip(ref.LINE_FIELDS, fx.line_stats[f.id * layout.ARB_LINES + line]))
                mine = rf.line_stats[(f.id, line)]
                out[prog] += [f"tp_line_stats[feed {f.id}, {'AB'[line]}].{n} = {kernel[n]}, reference {mine[n]}"
                              for n in ref.LINE_FIELDS if kernel[n] != mine[n]]
        state = out[ARB_PROGRAMS[0]]      # shared by both lines: reported once
        for f in fx.feeds:
            state += self._state_diff(f.id, fx.state(f.id), rf.state[f.id])
            kernel_claims = fx.arb.bpf["tp_feed_claims"][ctypes.c_uint32(f.id)]
            for field in ("claims", "copies"):
                words, mine = list(getattr(kernel_claims, field)), getattr(rf.state[f.id], field)
                bad = [i for i in range(len(words)) if words[i] != mine[i]]
                if bad:
                    i = bad[0]
                    state.append(f"tp_feed_claims[{f.id}].{field}: {len(bad)} word(s) differ, first [{i}] = "
                                 f"{words[i]:#x}, reference {mine[i]:#x}")
        return out

    @staticmethod
    def _state_diff(feed_id: int, k: layout.FeedState, m: ref.FeedModel) -> list[str]:
        meta = k.cand_meta
        if (k.gen == m.gen and k.next_seq == m.next_seq and k.line_next_seq[0] == m.line_next_seq[0]
                and k.line_next_seq[1] == m.line_next_seq[1] and k.end_seq == m.end_seq
                and k.swept_seq == m.swept_seq and k.far_seq[0] == m.far_seq[0] and k.far_seq[1] == m.far_seq[1]
                and k.far_count[0] == m.far_count[0] and k.far_count[1] == m.far_count[1]
                and meta & 0xFFFF == (m.cand_count | m.cand_lines << 8 | m.cand_ended << 10 | m.cand_told << 12)
                and (k.hb_last & ~ref.HB_TIME_MASK if k.hb_last else None) == (m.hb[0] if m.hb else None)
                and (not m.hb or m.hb[1] <= (k.hb_last & ref.HB_TIME_MASK) <= m.hb[2])
                and layout.session_name(k.session) == m.session and layout.session_name(k.cand) == m.cand
                and ref.left_session(k) == m.prev):
            return []
        got = {"gen": k.gen, "session": layout.session_name(k.session), "next_seq": k.next_seq,
               "line_next_seq": list(k.line_next_seq), "end_seq": k.end_seq, "swept_seq": k.swept_seq,
               "far_seq": list(k.far_seq), "far_count": list(k.far_count),
               "cand": layout.session_name(k.cand), "prev_session": ref.left_session(k),
               "cand_meta": (meta & 0xFF, (meta >> 8) & 3, (meta >> 10) & 3, (meta >> 12) & 3, meta & 0x8000),
               "hb_flags": k.hb_last & ~ref.HB_TIME_MASK if k.hb_last else None}
        want = {"gen": m.gen, "session": m.session, "next_seq": m.next_seq, "line_next_seq": m.line_next_seq,
                "end_seq": m.end_seq, "swept_seq": m.swept_seq, "far_seq": m.far_seq, "far_count": m.far_count,
                "cand": m.cand, "prev_session": m.prev,
                "cand_meta": (m.cand_count, m.cand_lines, m.cand_ended, m.cand_told, 0),
                "hb_flags": m.hb[0] if m.hb else None}
        problems = [f"tp_feed_state[{feed_id}].{n} = {got[n]!r}, reference {want[n]!r}"
                    for n in got if got[n] != want[n]]
        if m.hb and k.hb_last and not m.hb[1] <= (k.hb_last & ref.HB_TIME_MASK) <= m.hb[2]:
            problems.append(f"tp_feed_state[{feed_id}].hb_last time {k.hb_last & ref.HB_TIME_MASK} "
                            f"outside [{m.hb[1]}, {m.hb[2]}]")
        return problems

# -- entry points ------------------------------------------------------------
def gateway_harnesses(fx: GatewayFixture) -> dict[str, Harness]:
    return {"tp_steer": SteerHarness(fx), "tp_steer_xdp": SteerAtXdpHarness(fx), "tp_hb_egress": HbEgressHarness(fx),
            "tp_hb_ingress": HbIngressHarness(fx)}


def fuzz_gateway(frames: dict[str, int], seed: int, fx: GatewayFixture | None = None,
                 max_samples: int = 10, on_frames: Callable[[int], None] | None = None) -> dict[str, Result]:
    """{program: Result} for the gateway programs named in `frames`."""
    fx = fx or GatewayFixture(seed)
    hs = gateway_harnesses(fx)
    out = {}
    for name, n in frames.items():
        out[name] = run(hs[name], fx.runners, n, seed, max_samples, on_frames=on_frames)
    return out


def fuzz_arbitration(frames: dict[str, int], seed: int, fx=None, max_samples: int = 10,
                     on_frames: Callable[[int], None] | None = None) -> dict[str, Result]:
    """{line program: Result}: both lines fuzzed together, each at least its frames."""
    fx = fx or ArbFixture(seed)
    return run_programs(ArbHarness(fx), fx.runners, frames, seed, max_samples, on_frames=on_frames)


def fuzz_all(frames_per_program: int, seed: int, programs=PROGRAMS, stop_at: int | None = None) -> dict[str, Result]:
    results: dict[str, Result] = {}
    gw = [p for p in programs if p in GATEWAY_PROGRAMS]
    if gw:
        fx = GatewayFixture(seed)
        hs = gateway_harnesses(fx)
        for p in gw:
            results[p] = run(hs[p], fx.runners, frames_per_program, seed, stop_at=stop_at)
    arb = [p for p in programs if p in ARB_PROGRAMS]
    if arb:
        fx = ArbFixture(seed)
        results.update(run_programs(ArbHarness(fx), fx.runners, {p: frames_per_program for p in arb}, seed,
                                    stop_at=stop_at))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.fuzz", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--program", nargs="+", choices=PROGRAMS, default=list(PROGRAMS))
    ap.add_argument("--frames", type=int, default=100_000, help="per program")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--stop-at", type=int, metavar="INDEX",
                    help="replay: stop right after the frame with this index (per harness run)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    results = fuzz_all(args.frames, args.seed, args.program, args.stop_at)
    bad = 0
    for name, res in results.items():
        d = res.as_dict()
        bad += d["mismatches"]
        if args.json:
            continue
        print(f"{name}: {d['frames']} frames in {d['seconds']} s ({d['frames_per_s']:.0f}/s), "
              f"{d['mismatches']} mismatches, {d['ambiguous']} ambiguous")
        for s in d["samples"]:
            print("  MISMATCH " + json.dumps(s))
        for c in d["counter_mismatches"]:
            print("  COUNTER " + c)
    if args.json:
        print(json.dumps({k: v.as_dict() for k, v in results.items()}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
