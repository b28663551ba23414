"""The fuzz part of the bench: `security.fuzz.*` in results.json.

run(frames_total, seed) pushes frames_total random and mutated frames,
spread evenly over every product program, through BPF_PROG_TEST_RUN, each
checked against its pure-Python reference (lab/fuzz.py), and
returns

    {"frames": N, "mismatches": M, "frames_per_s": R, "seconds": S, "seed": seed,
     "workers": W, "per_program": {program: {frames, mismatches, frames_per_s, ...}},
     "samples": [the first mismatches, replayable]}

`mismatches` counts frames whose verdict, output or counter differed from
the reference plus counters that disagreed at the end; it must be 0.
frames_per_s is frames over wall-clock seconds (with workers > 1, the
programs' shares run in that many processes at once, each with its own
compiled programs and maps, under different seeds).

    .venv/bin/python -m bench.fuzz [--frames N] [--seed S] [--workers W]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time

from bench.progress import Advance, ignore
from lab import fuzz

DEFAULT_FRAMES_PER_PROGRAM = 100_000     # the CLI's default (make bench sizes come from bench.__main__.Plan)
MAX_SAMPLES = 10
POLL_S = 0.5                             # how often the parent passes the workers' frame count on

# In a worker process: frames checked so far by all workers, shared with the parent.
_checked = None


def split(frames_total: int, programs=fuzz.PROGRAMS) -> dict[str, int]:
    """frames_total spread over the programs, every program at least its share."""
    per, extra = divmod(frames_total, len(programs))
    return {p: per + (i < extra) for i, p in enumerate(programs)}


def _worker(shares: dict[str, int], seed: int, on_frames: Advance) -> dict[str, dict]:
    gateway = {p: n for p, n in shares.items() if p in fuzz.GATEWAY_PROGRAMS and n}
    arb = {p: n for p, n in shares.items() if p in fuzz.ARB_PROGRAMS and n}
    out: dict[str, dict] = {}
    if gateway:
        out.update({p: r.as_dict() for p, r in fuzz.fuzz_gateway(gateway, seed, max_samples=MAX_SAMPLES,
                                                                 on_frames=on_frames).items()})
    if arb:
        out.update({p: r.as_dict() for p, r in fuzz.fuzz_arbitration(arb, seed, max_samples=MAX_SAMPLES,
                                                                     on_frames=on_frames).items()})
    return out


def _pool_init(checked) -> None:
    global _checked
    _checked = checked


def _count_checked(n: int) -> None:
    with _checked.get_lock():
        _checked.value += n


def _pool_worker(shares: dict[str, int], seed: int) -> dict[str, dict]:
    return _worker(shares, seed, _count_checked)


def _merge(parts: list[dict[str, dict]]) -> dict[str, dict]:
    merged: dict[str, dict] = {}
    for part in parts:
        for prog, d in part.items():
            m = merged.setdefault(prog, {"frames": 0, "mismatches": 0, "seconds": 0.0, "ambiguous": 0,
                                         "counter_mismatches": [], "samples": [], "seeds": []})
            m["frames"] += d["frames"]
            m["mismatches"] += d["mismatches"]
            m["ambiguous"] += d["ambiguous"]
            m["seconds"] = round(m["seconds"] + d["seconds"], 2)   # CPU-side time spent on it, summed
            m["counter_mismatches"] += d["counter_mismatches"]
            m["samples"] = (m["samples"] + d["samples"])[:MAX_SAMPLES]
            m["seeds"].append(d["seed"])
    for m in merged.values():
        m["frames_per_s"] = round(m["frames"] / m["seconds"], 1) if m["seconds"] else 0.0
    return merged


def run(frames_total: int, seed: int, workers: int = 1, programs=fuzz.PROGRAMS, advance: Advance = ignore) -> dict:
    """Fuzzes every program with its share of frames_total (see the module
    docstring); advance(n) as frames are checked."""
    shares = split(frames_total, programs)
    t0 = time.perf_counter()
    if workers <= 1:
        parts = [_worker(shares, seed, advance)]
    else:
        # Each worker a fresh process (BCC and forked children do not mix),
        # with its own programs, maps and seed.
        jobs = [({p: n // workers + (w < n % workers) for p, n in shares.items()}, seed + 7919 * w)
                for w in range(workers)]
        ctx = multiprocessing.get_context("spawn")
        checked, reported = ctx.Value("q", 0), 0
        with ctx.Pool(workers, initializer=_pool_init, initargs=(checked,)) as pool:
            pending = pool.starmap_async(_pool_worker, jobs)
            while True:
                finished = pending.ready()  # first: once finished, the count read next is final
                now = checked.value
                advance(now - reported)
                reported = now
                if finished:
                    break
                pending.wait(POLL_S)
            parts = pending.get()
    wall = time.perf_counter() - t0
    per_program = _merge(parts)
    frames = sum(d["frames"] for d in per_program.values())
    mismatches = sum(d["mismatches"] for d in per_program.values())
    samples = [s for d in per_program.values() for s in d["samples"]][:MAX_SAMPLES]
    return {"frames": frames, "mismatches": mismatches, "frames_per_s": round(frames / wall, 1),
            "seconds": round(wall, 1), "seed": seed, "workers": max(workers, 1),
            "per_program": per_program, "samples": samples}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=DEFAULT_FRAMES_PER_PROGRAM * len(fuzz.PROGRAMS), help="in all")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    result = run(args.frames, args.seed, args.workers)
    print(json.dumps(result, indent=1))
    return 1 if result["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
