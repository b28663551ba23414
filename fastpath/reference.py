"""Pure-Python statements of what the fastpath loops compute, written from
their specifications rather than from the Cython; tests/unit/test_fastpath.py
holds the two to the same answers."""
from __future__ import annotations

import sys


def inet_csum(data: bytes) -> int:
    """RFC 1071 Internet checksum: the ones' complement of the ones'
    complement sum of the big-endian 16-bit words, an odd last byte padded
    with a zero byte."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def probe_bytes(template: bytes, seq_offset: int, seq: int) -> bytes:
    """The ICMP echo request the heartbeat sender emits for `seq`: the echo
    header's sequence field (bytes 6-7) carries its low 16 bits, big-endian;
    the probe's u64 at `seq_offset` carries all of it in native order; and
    the checksum (bytes 2-3) covers the whole message, computed with the
    field itself zero (RFC 792)."""
    msg = bytearray(template)
    msg[2:4] = bytes(2)
    msg[6:8] = (seq & 0xFFFF).to_bytes(2, "big")
    msg[seq_offset:seq_offset + 8] = seq.to_bytes(8, sys.byteorder)
    msg[2:4] = inet_csum(bytes(msg)).to_bytes(2, "big")
    return bytes(msg)


def next_period(deadline: int, now: int, interval: int) -> tuple[int, int, int]:
    """(next deadline, late_ns, skipped) of the heartbeat sender, which sent
    the probes due at `deadline` and now reads the clock at `now`.

    The next probes are due one interval after the last. late_ns says how
    far the clock already is past that (0: on time; they then go at once).
    Past it by more than a whole interval, the sender skips the missed
    periods rather than sending them in a burst: skipped counts them, and
    the next probes are due now.
    """
    due = deadline + interval
    late_ns = max(0, now - due)
    if late_ns > interval:
        return now, late_ns, late_ns // interval
    return due, late_ns, 0
