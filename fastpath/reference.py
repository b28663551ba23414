"""Pure-Python statements of what the fastpath loops compute, written from
their specifications rather than from the Cython; tests/unit/test_fastpath.py
(heartbeat) and tests/unit/test_detect_fastpath.py (detect) hold the two to
the same answers."""
from __future__ import annotations

import itertools
import operator
import sys
from collections.abc import Iterable, Sequence

from appliance.core.detect import Window


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


# What the failure detector reads of one link over one window of probes
# [lo, hi): both fastpath.detect and this module return the core's own input
# type, so the two can never disagree on a field.
WindowSummary = Window


def window_error(ring_len: int, lo: int, hi: int) -> str | None:
    """Why [lo, hi) is no window of a ring of ring_len slots (None: it is).
    A window is at most a ring long, or its sequences would share slots."""
    if not 0 <= lo <= hi < 2**64:
        return f"[{lo}, {hi}): need 0 <= lo <= hi < 2**64"
    if hi - lo > ring_len:
        return f"[{lo}, {hi}): {hi - lo} sequences, more than the ring's {ring_len} slots"
    return None


def summarize(ring_seq: Sequence[int], ring_rtt_ns: Sequence[int], lo: int, hi: int) -> WindowSummary:
    """Summary of the probes sent as sequences lo .. hi-1, from one link's
    ring of replies: slot s % len(ring) holds (s, rtt) once probe s was
    answered, and an older or no sequence otherwise.

    Percentiles are nearest rank (p50 the lower median); jitter is the
    floored mean |difference| of the RTTs of consecutive answered probes;
    longest_gap is the longest run of unanswered sequences (burst loss).
    """
    if len(ring_seq) != len(ring_rtt_ns):
        raise ValueError(f"ring_seq has {len(ring_seq)} slots, ring_rtt_ns {len(ring_rtt_ns)}: need one RTT per slot")
    if (error := window_error(len(ring_seq), lo, hi)) is not None:
        raise ValueError(f"window {error}")
    rtts, gap, longest_gap = [], 0, 0
    for s in range(lo, hi):
        slot = s % len(ring_seq)
        if int(ring_seq[slot]) == s:
            rtts.append(int(ring_rtt_ns[slot]))
            gap = 0
        else:
            gap += 1
            longest_gap = max(longest_gap, gap)
    sent, answered = hi - lo, len(rtts)
    if not rtts:
        return WindowSummary(sent, 0, sent, 0, 0, 0, 0, 0, longest_gap)
    diffs = [abs(b - a) for a, b in itertools.pairwise(rtts)]
    jitter = sum(diffs) // len(diffs) if diffs else 0
    ranked = sorted(rtts)
    p50 = ranked[-(-answered // 2) - 1]
    p90 = ranked[-(-9 * answered // 10) - 1]
    return WindowSummary(sent, answered, sent - answered, p50, p90, ranked[0], ranked[-1], jitter, longest_gap)


def batch_window_error(index: int, window: Sequence[int], rings: int, ring_len: int) -> str | None:
    """Why window number `index` of a batch is no (ring, lo, hi) of `rings`
    rings of ring_len slots each (None: it is one)."""
    if len(window) != 3:
        return f"window {index}: {len(window)} values, not (ring, lo, hi)"
    ring, lo, hi = map(operator.index, window)
    if not 0 <= ring < rings:
        return f"window {index}: no ring {ring} among {rings}"
    if (error := window_error(ring_len, lo, hi)) is not None:
        return f"window {index} of ring {ring} {error}"
    return None


def summarize_batch(ring_seq: Sequence[Sequence[int]], ring_rtt_ns: Sequence[Sequence[int]],
                    windows: Iterable[Sequence[int]]) -> list[WindowSummary]:
    """summarize() of each window (ring, lo, hi) of a batch: ring indexes
    rings of equal length (e.g. one per link, or one long recorded trace)."""
    if len(ring_seq) != len(ring_rtt_ns) or len({len(r) for r in ring_seq} | {len(r) for r in ring_rtt_ns}) > 1:
        raise ValueError("ring_seq and ring_rtt_ns are not of one shape (rings, slots): need one RTT per slot")
    ring_len = len(ring_seq[0]) if len(ring_seq) else 0
    summaries = []
    for index, window in enumerate(windows):
        if (error := batch_window_error(index, window, len(ring_seq), ring_len)) is not None:
            raise ValueError(error)
        ring, lo, hi = map(operator.index, window)
        summaries.append(summarize(ring_seq[ring], ring_rtt_ns[ring], lo, hi))
    return summaries
