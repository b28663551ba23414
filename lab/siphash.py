"""SipHash-2-4 (Aumasson & Bernstein) in pure Python: the reference for the
heartbeat MAC of ebpf/lib/siphash.h, used by the fuzz harness
(lab/fuzz.py) to sign replies and to check what the kernel signed.

`siphash24(key, msg)` is the general function (any message length, 16-byte
key); `siphash24_words(k0, k1, m0, m1, m2, m3)` is the 32-byte case the data
path computes, on the key and message already split into little-endian
words, unrolled for speed (the fuzzer calls it per frame).
"""
from __future__ import annotations

import struct

_M = 0xFFFFFFFFFFFFFFFF
_C0, _C1, _C2, _C3 = 0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573
_KEY = struct.Struct("<QQ")
_WORDS4 = struct.Struct("<4Q")


def _rounds(v0: int, v1: int, v2: int, v3: int, n: int) -> tuple[int, int, int, int]:
    for _ in range(n):
        v0 = (v0 + v1) & _M
        v1 = ((v1 << 13) | (v1 >> 51)) & _M
        v1 ^= v0
        v0 = ((v0 << 32) | (v0 >> 32)) & _M
        v2 = (v2 + v3) & _M
        v3 = ((v3 << 16) | (v3 >> 48)) & _M
        v3 ^= v2
        v0 = (v0 + v3) & _M
        v3 = ((v3 << 21) | (v3 >> 43)) & _M
        v3 ^= v0
        v2 = (v2 + v1) & _M
        v1 = ((v1 << 17) | (v1 >> 47)) & _M
        v1 ^= v2
        v2 = ((v2 << 32) | (v2 >> 32)) & _M
    return v0, v1, v2, v3


def key_words(key: bytes) -> tuple[int, int]:
    """(k0, k1) of a 16-byte key: what tp_keys stores."""
    if len(key) != 16:
        raise ValueError(f"SipHash keys are 16 bytes, got {len(key)}")
    return _KEY.unpack(key)


def siphash24(key: bytes, msg: bytes) -> int:
    """SipHash-2-4 of `msg` under the 16-byte `key`, as an integer (the
    reference vectors' 8 output bytes are its little-endian encoding)."""
    k0, k1 = key_words(key)
    v0, v1, v2, v3 = k0 ^ _C0, k1 ^ _C1, k0 ^ _C2, k1 ^ _C3
    n = len(msg)
    full = n - n % 8
    for off in range(0, full, 8):
        m = int.from_bytes(msg[off:off + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, 2)
        v0 ^= m
    last = ((n & 0xFF) << 56) | int.from_bytes(msg[full:], "little")
    v3 ^= last
    v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, 2)
    v0 ^= last
    v2 ^= 0xFF
    v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, 4)
    return v0 ^ v1 ^ v2 ^ v3


def siphash24_words(k0: int, k1: int, m0: int, m1: int, m2: int, m3: int) -> int:
    """SipHash-2-4 of the 32-byte message m0..m3 (little-endian words) under
    (k0, k1): tp_siphash32() of ebpf/lib/siphash.h. Equals
    siphash24(pack('<QQ', k0, k1), pack('<4Q', m0, m1, m2, m3))."""
    v0, v1, v2, v3 = k0 ^ _C0, k1 ^ _C1, k0 ^ _C2, k1 ^ _C3
    for m in (m0, m1, m2, m3, 32 << 56):
        v3 ^= m
        for _ in (0, 1):
            v0 = (v0 + v1) & _M
            v1 = ((v1 << 13) | (v1 >> 51)) & _M ^ v0
            v0 = ((v0 << 32) | (v0 >> 32)) & _M
            v2 = (v2 + v3) & _M
            v3 = ((v3 << 16) | (v3 >> 48)) & _M ^ v2
            v0 = (v0 + v3) & _M
            v3 = ((v3 << 21) | (v3 >> 43)) & _M ^ v0
            v2 = (v2 + v1) & _M
            v1 = ((v1 << 17) | (v1 >> 47)) & _M ^ v2
            v2 = ((v2 << 32) | (v2 >> 32)) & _M
        v0 ^= m
    v2 ^= 0xFF
    for _ in (0, 1, 2, 3):
        v0 = (v0 + v1) & _M
        v1 = ((v1 << 13) | (v1 >> 51)) & _M ^ v0
        v0 = ((v0 << 32) | (v0 >> 32)) & _M
        v2 = (v2 + v3) & _M
        v3 = ((v3 << 16) | (v3 >> 48)) & _M ^ v2
        v0 = (v0 + v3) & _M
        v3 = ((v3 << 21) | (v3 >> 43)) & _M ^ v0
        v2 = (v2 + v1) & _M
        v1 = ((v1 << 17) | (v1 >> 47)) & _M ^ v2
        v2 = ((v2 << 32) | (v2 >> 32)) & _M
    return v0 ^ v1 ^ v2 ^ v3


def siphash24_32(k0: int, k1: int, msg: bytes) -> int:
    """siphash24_words on a 32-byte message given as bytes."""
    return siphash24_words(k0, k1, *_WORDS4.unpack(msg))


_PROBE_WHO = struct.Struct("<HBBIQQ")


def probe_mac(key: bytes, local, target, link: int, key_id: int, seq: int, tx_ns: int,
              version: int = 2) -> int:
    """The heartbeat MAC tp_probe_mac() (ebpf/lib/probe.h) signs: SipHash-2-4
    over local, target (IPv4, network order), link, key_id, version, four
    zero bytes, seq and tx_ns. local/target: ipaddress.IPv4Address or str."""
    import ipaddress
    msg = (ipaddress.IPv4Address(local).packed + ipaddress.IPv4Address(target).packed +
           _PROBE_WHO.pack(link, key_id, version, 0, seq, tx_ns))
    return siphash24(key, msg)
