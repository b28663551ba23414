"""fastpath.detect's batch loop against its pure-Python reference on one
batch (issue #11: batch work over samples runs in Cython, goal at least 20x
the reference).

    .venv/bin/python -m bench.detect_speed [--windows N] [--seed S]

The batch is what the daemon and the training script summarize: LINKS rings
of RING_SLOTS replies, each as the heartbeat program leaves it after a run of
probes with scattered and burst losses (a lost probe's slot still holds the
sequence of the lap before), and windows of random length (1 to a whole ring)
anywhere within what a ring holds. Each side gets the input form it is
written for, holding the same values: the Cython uint64 arrays, the reference
lists of ints (its fastest form). Both answers must be equal. A figure is the
best of REPEATS runs of the whole batch, with the garbage collector off as
timeit has it: otherwise its passes over the whole heap, set off by the
summaries' allocations, land on whichever side happens to trip them. No
privileges needed.
"""
from __future__ import annotations

import argparse
import gc
import json
import time

import numpy as np

from fastpath import detect, reference

RING_SLOTS = 256        # TP_RTT_RING: replies the heartbeat program keeps per link
LINKS = 8               # TP_MAX_LINKS
REPEATS = 5
LOSS = 0.02             # scattered losses
BURSTS_PER_RING = 2     # and this many burst losses per ring, up to MAX_BURST probes each
MAX_BURST = 40
RTT_MEDIAN_NS = 30_000


def make_batch(windows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ring_seq, ring_rtt_ns) of shape (LINKS, RING_SLOTS), and `windows`
    rows (ring, lo, hi), all uint64."""
    rng = np.random.default_rng(seed)
    ring_seq = np.empty((LINKS, RING_SLOTS), np.uint64)
    ring_rtt_ns = np.empty((LINKS, RING_SLOTS), np.uint64)
    # The sender's sequences are microseconds since boot: far from 0.
    heads = 10**9 + rng.integers(0, 2**20, LINKS)   # next sequence per link
    for link, head in enumerate(heads):
        seqs = np.arange(head - RING_SLOTS, head, dtype=np.uint64)
        answered = rng.random(RING_SLOTS) >= LOSS
        for start in rng.integers(0, RING_SLOTS, BURSTS_PER_RING):
            answered[start:start + rng.integers(1, MAX_BURST + 1)] = False
        ring_seq[link, seqs % RING_SLOTS] = np.where(answered, seqs, seqs - RING_SLOTS)
        ring_rtt_ns[link, seqs % RING_SLOTS] = rng.lognormal(np.log(RTT_MEDIAN_NS), 0.3, RING_SLOTS).astype(np.uint64)
    rings = rng.integers(0, LINKS, windows)
    lengths = rng.integers(1, RING_SLOTS + 1, windows)
    his = heads[rings] - rng.integers(0, RING_SLOTS - lengths + 1)
    rows = np.stack([rings, his - lengths, his], axis=1).astype(np.uint64)
    return ring_seq, ring_rtt_ns, rows


def _best_ns(run) -> tuple[int, list]:
    best, answer = None, None
    for _ in range(REPEATS):
        answer = None   # the previous run's summaries are freed outside the timing
        gc.disable()
        try:
            start = time.perf_counter_ns()
            answer = run()
            elapsed = time.perf_counter_ns() - start
        finally:
            gc.enable()
        best = elapsed if best is None else min(best, elapsed)
    return best, answer


def measure(windows: int = 20000, seed: int = 1) -> dict:
    """ns per window of fastpath.detect.summarize_batch and of
    fastpath.reference.summarize_batch on the same batch, and their ratio."""
    ring_seq, ring_rtt_ns, rows = make_batch(windows, seed)
    seq_lists, rtt_lists, row_lists = ring_seq.tolist(), ring_rtt_ns.tolist(), rows.tolist()
    python_ns, python_answer = _best_ns(lambda: reference.summarize_batch(seq_lists, rtt_lists, row_lists))
    cython_ns, cython_answer = _best_ns(lambda: detect.summarize_batch(ring_seq, ring_rtt_ns, rows))
    if cython_answer != python_answer:
        raise RuntimeError("fastpath.detect and fastpath.reference disagree on the batch")
    return {
        "batch_windows": windows,
        "python_ns_per_window": round(python_ns / windows, 1),
        "cython_ns_per_window": round(cython_ns / windows, 1),
        "speedup": round(python_ns / cython_ns, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(measure(args.windows, args.seed)))


if __name__ == "__main__":
    main()
