"""Labelled traces for failure prediction (issue #11 item 5).

    .venv/bin/python -m bench.predict_traces OUTDIR [--fail-runs 3] [--benign-runs 2] [--seed 1]

Builds its own lab (torn down at the end, also on failure) and makes short
runs, each with a fresh daemon at 1 ms x 3 recording every core input
(`twinpath run --record`) while an order stream (5,000 packets/s) uses link
A. A run is a few seconds of quiet (so each link has a baseline), then its
episodes on link A, each followed by a recovery. Kinds of run:

  ending in failure (three episodes, each ending in a blackhole of A held 1 s):
    ramp-blackhole     delay ramps from 0 up to 0.3-2.5 ms over 2-4 s
    loss-blackhole     loss rises from 0 up to 3-30 % over 2-4 s (creep-then-blackhole without delay)
    jitter-blackhole   jitter grows in 4 steps up to 0.2-1.5 ms, 0.6-0.9 s each (each step restarts
                       the delay line, a pass-through of about half a second between steps)
    creep-blackhole    creep-then-blackhole: delay up to 0.2-3 ms and loss up to 2-30 % over 2-4 s
  not ending in failure:
    normal             nothing but the order stream, 15 s
    stress             stress-ng --cpu 2 on both cores, 15 s
    microbursts        bursts of 100-300k packets/s for 10-30 ms on the orders class, every 0.3-1 s, 15 s
    delay-step         a delay of 0.3-2 ms that stays 4-6 s, then clears (twice)
    loss-burst         loss of 5-30 % (single or in runs of 3) for 0.2-0.6 s (three times)
    ramp-plateau       delay ramps to 0.3-1.5 ms over 2-3 s and stays 3-4 s: degradation that does not fail
The lower ends of the ranges stay under the gray detectors' thresholds
(0.5 ms above the baseline, 5 % loss, 250 us jitter): there a prediction is
the only warning.

Labels: a reading of a link is positive when that link black-holes within the
next HORIZON_MS. Two seconds because the lab's degradations take 2-4 s from
first symptom to blackhole, so the last half or more of every run-up is
positive, and because a prediction stands that long in the core
(appliance.core.predict): a false alarm keeps a class off a link for about
two seconds, not for good. Readings from a blackhole until RECOVERED_MS
after it is cleared are neither: the link is down, then its history still
holds the failure, and neither is something to predict.

OUTDIR gets, per run, <name>.trace.jsonl (the daemon's recording) and
<name>.labels.json (the episodes, each link's positive and excluded
intervals), and manifest.json listing the runs.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.progress import Advance, ignore
from lab import faults, topology
from lab.processes import DaemonProcess, ScenarioError, Tool, stop_stream, udp_stream

HORIZON_MS = 2000
RECOVERED_MS = 2500          # the predictor's feature history (2 s) plus margin
INTERVAL_US, MULTIPLIER, HOLDDOWN_MS = 1000, 3, 200
ORDERS_PORT, BURST_PORT = 9000, 9001   # both in the orders class (9000-9099); nothing listens on BURST_PORT
STREAM_PPS = 5000
QUIET_S = 4.0                # before the first episode: a baseline for every link
RECOVER_S = 4.0              # after each episode
BLACKHOLE_S = 1.0
LOAD_S = 15.0                # stress and micro-burst runs
RUN_MAX_S = 60.0             # sizes the order stream; every run ends well before
LINK = "A"


@dataclass(frozen=True)
class Kind:
    name: str
    fails: bool
    episodes: int
    episode: Callable[[topology.Lab, random.Random, Path], dict]


# -- episodes: each acts on link A and returns what it did, CLOCK_MONOTONIC ---------------
def _blackhole_after(lab: topology.Lab, record: dict) -> dict:
    """Black-hole A now (ending whatever gray fault runs), hold, clear."""
    record["blackhole_ns"] = faults.inject(lab, "blackhole", LINK)
    time.sleep(BLACKHOLE_S)
    record["cleared_ns"] = faults.clear(lab, "blackhole", LINK)
    return record


def ramp_blackhole(lab, rng, _work) -> dict:
    params = {"delay_us": 0, "ramp_to_us": rng.randrange(300, 2501), "ramp_s": round(rng.uniform(2, 4), 2)}
    record = {"fault": "delay", "params": params, "start_ns": faults.inject(lab, "delay", LINK, **params)}
    time.sleep(params["ramp_s"])
    return _blackhole_after(lab, record)


def _creep(lab: topology.Lab, params: dict) -> dict:
    record = {"fault": "creep-then-blackhole", "params": params,
              "start_ns": faults.inject(lab, "creep-then-blackhole", LINK, **params)}
    deadline = time.monotonic() + params["creep_s"] + 5
    began: list[int] = []
    while not began and time.monotonic() < deadline:
        time.sleep(0.05)
        began = [e["mono_ns"] for e in faults.events(lab, LINK) if e["event"] == "blackhole"]
    if not began:
        raise ScenarioError(f"creep-then-blackhole on {LINK}: no blackhole {params['creep_s'] + 5} s after it began")
    record["blackhole_ns"] = began[0]
    time.sleep(BLACKHOLE_S)
    record["cleared_ns"] = faults.clear(lab, "creep-then-blackhole", LINK)
    return record


def loss_blackhole(lab, rng, _work) -> dict:
    return _creep(lab, {"creep_s": round(rng.uniform(2, 4), 2), "creep_delay_us": 0,
                        "creep_loss": round(rng.uniform(0.03, 0.3), 3)})


def creep_blackhole(lab, rng, _work) -> dict:
    return _creep(lab, {"creep_s": round(rng.uniform(2, 4), 2), "creep_delay_us": rng.randrange(200, 3001),
                        "creep_loss": round(rng.uniform(0.02, 0.3), 3)})


def jitter_blackhole(lab, rng, _work) -> dict:
    top_us, steps = rng.randrange(200, 1501), 4
    holds = [round(rng.uniform(0.6, 0.9), 2) for _ in range(steps)]
    record = {"fault": "jitter", "params": {"steps_us": [top_us * (k + 1) // steps for k in range(steps)],
                                            "holds_s": holds}}
    for k, hold in enumerate(holds):
        started = faults.inject(lab, "jitter", LINK, jitter_us=record["params"]["steps_us"][k])
        record.setdefault("start_ns", started)
        time.sleep(hold)
    return _blackhole_after(lab, record)


def delay_step(lab, rng, _work) -> dict:
    params = {"delay_us": rng.randrange(300, 2001)}
    hold = round(rng.uniform(4, 6), 2)
    record = {"fault": "delay", "params": {**params, "hold_s": hold},
              "start_ns": faults.inject(lab, "delay", LINK, **params)}
    time.sleep(hold)
    record["cleared_ns"] = faults.clear(lab, "delay", LINK)
    return record


def loss_burst(lab, rng, _work) -> dict:
    params = {"probability": round(rng.uniform(0.05, 0.3), 3), "burst": rng.choice((1, 3))}
    hold = round(rng.uniform(0.2, 0.6), 2)
    record = {"fault": "loss", "params": {**params, "hold_s": hold},
              "start_ns": faults.inject(lab, "loss", LINK, **params)}
    time.sleep(hold)
    record["cleared_ns"] = faults.clear(lab, "loss", LINK)
    return record


def ramp_plateau(lab, rng, _work) -> dict:
    params = {"delay_us": 0, "ramp_to_us": rng.randrange(300, 1501), "ramp_s": round(rng.uniform(2, 3), 2)}
    hold = round(rng.uniform(3, 4), 2)
    record = {"fault": "delay", "params": {**params, "plateau_s": hold},
              "start_ns": faults.inject(lab, "delay", LINK, **params)}
    time.sleep(params["ramp_s"] + hold)
    record["cleared_ns"] = faults.clear(lab, "delay", LINK)
    return record


def quiet(_lab, _rng, _work) -> dict:
    start_ns = time.monotonic_ns()
    time.sleep(LOAD_S)
    return {"fault": None, "params": {"seconds": LOAD_S}, "start_ns": start_ns, "cleared_ns": time.monotonic_ns()}


def stress(lab, _rng, _work) -> dict:
    start_ns = time.monotonic_ns()
    # In a lab namespace, so that lab teardown reaps it whatever happens.
    proc = lab.spawn("exch", ["stress-ng", "--cpu", "2", "--timeout", f"{LOAD_S:g}s", "--quiet"])
    try:
        proc.wait(timeout=LOAD_S + 30)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
    return {"fault": "stress-ng --cpu 2", "params": {"seconds": LOAD_S}, "start_ns": start_ns,
            "cleared_ns": time.monotonic_ns()}


def microbursts(lab, rng, _work) -> dict:
    start_ns = time.monotonic_ns()
    bursts = []
    while time.monotonic_ns() - start_ns < LOAD_S * 1e9:
        rate, burst_ms = rng.randrange(100_000, 300_001, 10_000), rng.randrange(10, 31)
        count = rate * burst_ms // 1000
        sender = Tool.in_lab(lab, "trader", "udp-send", "--dst", topology.EXCHANGE_ADDR, "--port", str(BURST_PORT),
                             "--rate", str(rate), "--count", str(count), "--size", "1200", "--timeout", "5")
        with sender:
            sender.wait_ready()
            sent = sender.result(timeout_s=10)
        bursts.append({"rate_pps": rate, "count": count, "issued": sent.get("issued")})
        time.sleep(rng.uniform(0.3, 1.0))
    return {"fault": "micro-bursts", "params": {"bursts": bursts}, "start_ns": start_ns,
            "cleared_ns": time.monotonic_ns()}


KINDS = {k.name: k for k in (
    Kind("ramp-blackhole", True, 3, ramp_blackhole),
    Kind("loss-blackhole", True, 3, loss_blackhole),
    Kind("jitter-blackhole", True, 3, jitter_blackhole),
    Kind("creep-blackhole", True, 3, creep_blackhole),
    Kind("normal", False, 1, quiet),
    Kind("stress", False, 1, stress),
    Kind("microbursts", False, 1, microbursts),
    Kind("delay-step", False, 2, delay_step),
    Kind("loss-burst", False, 3, loss_burst),
    Kind("ramp-plateau", False, 1, ramp_plateau),
)}


# -- labels --------------------------------------------------------------------------------
def intervals(episodes: list[dict], horizon_ms: int = HORIZON_MS) -> dict[str, list[list[int]]]:
    """Link A's positive intervals [blackhole - H, blackhole) and excluded
    ones [blackhole, cleared + RECOVERED_MS), in ns."""
    failures = [e for e in episodes if e.get("blackhole_ns")]
    return {"positive": [[e["blackhole_ns"] - horizon_ms * 1_000_000, e["blackhole_ns"]] for e in failures],
            "excluded": [[e["blackhole_ns"], e["cleared_ns"] + RECOVERED_MS * 1_000_000] for e in failures]}


def label(ts_ns: int, link_labels: dict[str, list[list[int]]]) -> int:
    """1: the link black-holes within H; 0: it does not; -1: not a reading to
    learn from (down, or just back)."""
    if any(lo <= ts_ns < hi for lo, hi in link_labels["excluded"]):
        return -1
    return int(any(lo <= ts_ns < hi for lo, hi in link_labels["positive"]))


# -- runs ----------------------------------------------------------------------------------
def plan(fail_runs: int, benign_runs: int, seed: int, kinds: list[str] | None = None) -> list[dict]:
    """The runs in the order they are made: kinds interleaved, so that a slow
    drift of the shared machine does not fall on one kind."""
    runs = []
    for index in range(max(fail_runs, benign_runs)):
        for kind in KINDS.values():
            if (kinds is None or kind.name in kinds) and index < (fail_runs if kind.fails else benign_runs):
                runs.append({"name": f"{kind.name}-{index}", "kind": kind.name, "index": index,
                             "seed": seed * 1000 + len(runs)})
    return runs


def record_run(lab: topology.Lab, out: Path, run: dict, config: Path) -> dict:
    """One run: a recording daemon, the order stream, its episodes; writes the
    trace and its labels, returns the manifest entry."""
    kind = KINDS[run["kind"]]
    rng = random.Random(run["seed"])
    work = out / f".work-{run['name']}"
    work.mkdir(parents=True, exist_ok=True)
    trace = out / f"{run['name']}.trace.jsonl"
    episodes = []
    began = time.monotonic()
    try:
        with ExitStack() as stack:
            daemon = DaemonProcess(lab, config, work / "daemon.jsonl", stats_interval_s=3600, record=trace)
            stack.callback(daemon.stop)
            daemon.wait_for("ready", 60)
            receiver, sender = udp_stream(lab, work, STREAM_PPS, RUN_MAX_S, ORDERS_PORT)
            stack.callback(receiver.stop)
            stack.callback(sender.stop)
            stack.callback(faults.clear, lab, "blackhole", LINK)   # whatever an episode left on A
            time.sleep(QUIET_S)
            for _ in range(kind.episodes):
                episodes.append(kind.episode(lab, rng, work))
                time.sleep(RECOVER_S)
            stop_stream(receiver, sender)
        moves = [e for e in daemon.events() if e.get("event") == "failover"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    labels = {"horizon_ms": HORIZON_MS, "recovered_ms": RECOVERED_MS, "episodes": episodes,
              "links": {LINK: intervals(episodes), "B": {"positive": [], "excluded": []}},
              "failovers": [{k: e.get(k) for k in ("mono_ns", "class", "from", "to", "cause")} for e in moves]}
    (out / f"{run['name']}.labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    return {**run, "fails": kind.fails, "failures": sum(1 for e in episodes if e.get("blackhole_ns")),
            "seconds": round(time.monotonic() - began, 1)}


def generate(lab: topology.Lab, out: Path, runs: list[dict], advance: Advance = ignore) -> list[dict]:
    """Record `runs` (from plan()) into `out` in an existing lab; advance()
    after each run. Writes and returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    config = topology.write_config(lab, interval_us=INTERVAL_US, multiplier=MULTIPLIER, holddown_ms=HOLDDOWN_MS,
                                   damping=False)
    manifest = []
    for run in runs:
        manifest.append(record_run(lab, out, run, config))
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        advance()
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--fail-runs", type=int, default=3, help="runs of each kind ending in failure")
    ap.add_argument("--benign-runs", type=int, default=2, help="runs of each kind not ending in failure")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kinds", nargs="+", choices=list(KINDS), help="only these kinds of run")
    args = ap.parse_args(argv)
    runs = plan(args.fail_runs, args.benign_runs, args.seed, args.kinds)
    lab = topology.up()
    began = time.monotonic()
    done = 0
    try:
        def progress(n: int = 1) -> None:
            nonlocal done
            done += n
            print(f"{done}/{len(runs)} runs, {math.floor(time.monotonic() - began)} s", file=sys.stderr, flush=True)
        generate(lab, args.outdir, runs, progress)
    finally:
        topology.down(lab.name)
    print(json.dumps({"runs": len(runs), "seconds": round(time.monotonic() - began, 1), "outdir": str(args.outdir)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
