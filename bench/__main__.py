"""twinpath benchmarks: `make bench` (full) and `make bench-quick`.

    .venv/bin/python -m bench [--quick] [--out DIR] [--only SECTION ...] [--quiet]

Runs every section in one lab, in one run, and writes
bench/results/<timestamp>[-quick]/ with results.json (the contract's keys,
plus detail), REPORT.md (tables) and PNG plots. Raw per-trial data stays in
the section subdirectories, so every figure can be recomputed. While it
runs, stderr shows each section's progress (bench/progress.py).

Sections, in order:
  fastpath  ns/packet of every program and path against an empty program of its hook
  failover  fault trials: twinpath at 1 ms x 3 and 200 us x 3, with plain kernel routing
            and (at 1 ms x 3) FRR bfdd at 10 ms x 3 seeing the same faults; TCP order sessions
  stress    false failovers, twinpath vs bfdd, with stress-ng on both cores and no fault
  detection a soak under stress at 1 ms x 3 and 200 us x 3 (each beside bfdd), every fault
            scenario of the lab (hard, one-way and gray), the prediction model on fresh traces
            and its benefit, the Cython speedup (bench/detection.py)
  latency   ping-pong latency (from the intended send time) and lossless packet rate,
            fast path vs kernel forwarding, alternating
  capacity  highest lossless forwarding rate on one pinned core (generator on the other): fast
            path, kernel routing, A/B arbitration; and each one's rate when overloaded
  control   daemon CPU % at 1 ms and 200 us with 2 and 8 links
  security  attacks from carrier A's wire: spoofed heartbeat replies during a blackhole, a forged
            MoldUDP64 session on line A (lab.attacks); then the differential fuzz of every product
            program (bench/fuzz.py)
  host      HA pair failover, twinpath beside keepalived: every host scenario (lab.hostscenario) on
            the active gateway of a pair lab of its own per peer (bench/host.py)

The machine is shared: read ratios of figures measured side by side in one
run, with their percentiles, not single absolute numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from bench.progress import Progress
from lab import topology
from lab.hostscenario import HOST_SCENARIOS

SECTIONS = ("fastpath", "failover", "stress", "detection", "latency", "capacity", "control", "security", "host")
RESULTS_ROOT = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Plan:
    fastpath_rounds: int
    trials: int
    stress_s: float
    latency_blocks: int
    latency_block_s: float
    latency_rate: int
    pps_steps: tuple[int, ...]
    pps_step_s: float
    capacity_step_s: float       # per step of the capacity climb (bench/capacity.py)
    control_s: float
    security_spoof_trials: int   # spoofed-heartbeats runs
    security_forge_trials: int   # forged-session runs
    fuzz_frames: int             # fuzzed frames in all, spread over the product programs
    soak_s: float                # detection soak, per heartbeat setting
    detection_trials: int        # per detection scenario
    benefit_trials: int          # creep-then-blackhole per prediction mode and creep (bench/predict_benefit.py)
    host_trials: int             # per peer and host scenario (bench/host.py)
    host_scenarios: tuple[str, ...] = HOST_SCENARIOS


# pps steps: fine where the lab's one-core sender tops out (25-45k packets/s on the 2-core VM).
FULL = Plan(fastpath_rounds=200, trials=200, stress_s=120, latency_blocks=6, latency_block_s=5, latency_rate=10_000,
            pps_steps=(10_000, 20_000, 25_000, 30_000, 35_000, 40_000, 45_000, 50_000, 60_000, 80_000),
            pps_step_s=2.0, capacity_step_s=2.0, control_s=10, security_spoof_trials=20, security_forge_trials=5,
            fuzz_frames=10_000_000, soak_s=600, detection_trials=10,
            benefit_trials=5, host_trials=50)
QUICK = Plan(fastpath_rounds=30, trials=8, stress_s=15, latency_blocks=2, latency_block_s=2, latency_rate=10_000,
             pps_steps=(10_000, 20_000, 30_000, 40_000, 50_000), pps_step_s=1.0, capacity_step_s=0.5, control_s=3,
             security_spoof_trials=3, security_forge_trials=1, fuzz_frames=500_000, soak_s=20, detection_trials=2,
             benefit_trials=2, host_trials=5)


def failover_blocks(plan: Plan):
    from bench.failover import Block
    return [Block("blackhole", 1000, 3, plan.trials, bfd=True, tcp=True),
            Block("carrier-down", 1000, 3, plan.trials, bfd=True),
            Block("blackhole", 200, 3, plan.trials, tcp=True),
            Block("carrier-down", 200, 3, plan.trials)]


def run_section(name: str, plan: Plan, lab: topology.Lab, out: Path, progress: Progress) -> dict:
    """The section's raw results; its bar counts what the plan asks of it."""
    work = out / name
    if name == "fastpath":
        from bench import progcost
        with progress.bar(name, plan.fastpath_rounds, "rounds") as bar:
            return progcost.run(rounds=plan.fastpath_rounds, advance=bar.advance)
    if name == "failover":
        from bench.failover import run_block
        blocks = failover_blocks(plan)
        with progress.bar(name, sum(b.trials for b in blocks), "trials") as bar:
            return {f"{b.scenario}/{b.setting}": run_block(lab, work / f"{b.scenario}-{b.setting}", b,
                                                           bar.advance, seed=i)
                    for i, b in enumerate(blocks)}
    if name == "stress":
        from bench import stress
        with progress.bar(name, math.ceil(plan.stress_s), "s") as bar:
            return stress.run(lab, work, plan.stress_s, bar.advance)
    if name == "detection":
        from bench import detection
        with progress.bar("detection soak", math.ceil(plan.soak_s) * len(detection.SOAK_SETTINGS), "s") as bar:
            soak = detection.soak(lab, work, plan.soak_s, bar.advance)
        with progress.bar("detection scenarios", plan.detection_trials * len(detection.SCENARIOS), "trials") as bar:
            scenarios = detection.scenarios(lab, work, plan.detection_trials, bar.advance)
        quick = plan is QUICK
        with progress.bar("detection model", detection.model_runs(quick) + plan.benefit_trials * 4,
                          "runs and trials") as bar:
            model = detection.model(lab, work, quick, plan.benefit_trials, bar.advance)
        return {"soak": soak, "scenarios": scenarios, "model": model, "cython_speedup": detection.cython_speedup()}
    if name == "latency":
        from bench import latency
        with progress.bar(name, latency.advances(plan), "blocks and steps") as bar:
            return latency.run(lab, work, plan, bar.advance)
    if name == "capacity":
        from bench import capacity
        with progress.bar(name, capacity.EXPECTED_STEPS, "steps (about)") as bar:
            return capacity.run(work, plan.capacity_step_s, bar.advance)  # its own lab
    if name == "control":
        from bench import control
        with progress.bar(name, len(control.SETTINGS), "settings") as bar:
            return control.run(work, plan.control_s, bar.advance)  # its own lab
    if name == "security":
        from bench import security
        return security.run(lab, work, plan, progress)  # two bars: attack trials, then fuzz frames
    if name == "host":
        from bench import host
        with progress.bar(name, plan.host_trials * len(plan.host_scenarios) * len(host.PEERS), "trials") as bar:
            return host.run(work, plan.host_trials, bar.advance, plan.host_scenarios)  # its own pair labs
    raise ValueError(name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="reduced run (about 14 minutes, and 12 more for the host section)")
    ap.add_argument("--out", type=Path, metavar="DIR",
                    help=f"result directory (default {RESULTS_ROOT}/<timestamp>[-quick])")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION", help="run only these sections")
    ap.add_argument("--host-scenarios", nargs="+", choices=HOST_SCENARIOS, metavar="NAME",
                    help="the host section runs only these scenarios (each with its full trial count)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars or lines on stderr (CI)")
    ap.add_argument("--render", type=Path, metavar="DIR",
                    help="measure nothing: rewrite DIR's results.json, REPORT.md and plots from its raw.json")
    args = ap.parse_args(argv)
    from bench import report

    if args.render:
        print(report.headline(report.write(args.render, json.loads((args.render / "raw.json").read_text()))))
        return 0

    plan = QUICK if args.quick else FULL
    if args.host_scenarios:
        plan = dataclasses.replace(plan, host_scenarios=tuple(args.host_scenarios))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or RESULTS_ROOT / (stamp + ("-quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    raw = {"mode": "quick" if args.quick else "full", "plan": plan.__dict__, "machine": report.machine(),
           "config": topology.render_config(interval_us=1000, multiplier=3, holddown_ms=200),
           "sections": {}, "errors": {}, "section_seconds": {}}
    started = time.monotonic()
    lab = topology.up()
    try:
        with Progress(quiet=args.quiet) as progress:
            for name in args.only or SECTIONS:
                t0 = time.monotonic()
                try:
                    raw["sections"][name] = run_section(name, plan, lab, out, progress)
                except Exception:  # one broken section must not cost the others' figures
                    raw["errors"][name] = traceback.format_exc()
                    print(raw["errors"][name], file=sys.stderr)
                raw["section_seconds"][name] = round(time.monotonic() - t0, 1)
    finally:
        topology.down(lab.name)
    raw["total_seconds"] = round(time.monotonic() - started, 1)
    results = report.write(out, raw)
    print(report.headline(results))
    print(f"bench: wrote {out}/results.json, REPORT.md and plots", file=sys.stderr)
    return 1 if raw["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
