"""Each link's window of probes since the last health reading, read from the
kernel's RTT ring (tp_rtt_ring, ebpf/lib/layout.h) and summarized by the
Cython loop fastpath.detect: the Window inputs of appliance.core.detect.

A window covers only probes whose fate is final. The kernel accepts a reply
only within the dead interval of its probe, and rounds are sent at most once
per interval, so once `multiplier` later rounds have been sent, a probe whose
ring slot does not hold its sequence was lost; a probe still in flight is
never counted as lost. All links share one sequence per round.
"""
from __future__ import annotations

from appliance import layout
from fastpath.detect import summarize


class ProbeWindows:
    def __init__(self, multiplier: int):
        self.unsettled = multiplier     # the newest rounds, whose replies may still come
        self.next_lo: int | None = None

    def read(self, rings: list[layout.RttRing], last_seq: int) -> list[tuple | None] | None:
        """Each link's summary of the rounds settled since the last call
        (None for a link: nothing new; None overall: nothing settled yet).
        A reading more than a ring of rounds late keeps only the newest ring's."""
        hi = last_seq - self.unsettled + 1
        if self.next_lo is None or hi < self.next_lo:   # first reading, or a new sender's sequence
            self.next_lo = hi
            return None
        lo = max(self.next_lo, hi - layout.RTT_RING)
        if hi == lo:
            return [None] * len(rings)
        self.next_lo = hi
        return [tuple(summarize(r.seq, r.rtt_ns, lo, hi)) for r in rings]
