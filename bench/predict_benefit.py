"""Does failure prediction lose fewer orders? creep-then-blackhole on link A
under an order stream (10,000 packets/s), switched reactively (prediction
off: the gray detectors and the data path's reflex) and predictively
(prediction on with the shipped model, appliance/core/predict_weights.json).

    .venv/bin/python -m bench.predict_benefit [--trials 3] [--out DIR]

Two creeps, each `trials` times per mode, one daemon per (creep, mode):

  steep   3 s to 3 ms and 30 % loss (bench/detection.py's scenario): the
          gray detectors see it long before the blackhole
  gentle  4 s to 0.4 ms and 4 % loss: under every gray threshold (0.5 ms
          above the baseline, 5 % loss, 250 us jitter), so only the reflex
          or a prediction can move orders

The creep delays and drops only what comes to gw (probe replies), so orders
are lost only from the blackhole until orders leave A. Per trial: orders
lost (bench.analysis.stream_trials, from just before the fault to just before
the next), which decision moved orders off A and how long before the
blackhole (negative: after it), and every move of orders between the fault
and the blackhole. Moves with no fault behind them are false moves.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from appliance.core.predict import Model
from appliance.core.stats import percentiles
from bench import analysis
from bench.predict_train import shipped_model
from bench.progress import Advance, ignore
from lab import faults, topology
from lab.processes import DaemonProcess, ScenarioError, stop_stream, udp_stream

CREEPS = {"steep": {"creep_s": 3.0, "creep_delay_us": 3000, "creep_loss": 0.3},
          "gentle": {"creep_s": 4.0, "creep_delay_us": 400, "creep_loss": 0.04}}
MODES = ("reactive", "predictive")
INTERVAL_US, MULTIPLIER, HOLDDOWN_MS = 1000, 3, 200
RATE_PPS = 10_000
ORDERS_PORT = 9000
QUIET_S = 3.0              # before each fault: the predictor's baseline and history (1.5 s at least)
BLACKHOLE_S = 0.5
SETTLE_S = 15.0            # orders back on A: the hold-down, and in predictive mode the hold of a prediction
TRIAL_MAX_S = 30.0         # sizes the stream; it is stopped when the trials are done


def prediction_table(model: Model) -> str:
    """[prediction] enabled with `model`, as config text (TOML; JSON's
    numbers, strings and arrays are TOML's)."""
    return "\n[prediction]\nenabled = true\n\n[prediction.model]\n" + "".join(
        f"{key} = {json.dumps(value)}\n" for key, value in model.to_json().items())


def config(lab: topology.Lab, work: Path, mode: str, model: Model) -> Path:
    base = topology.write_config(lab, interval_us=INTERVAL_US, multiplier=MULTIPLIER, holddown_ms=HOLDDOWN_MS,
                                 damping=False).read_text()
    path = work / f"{mode}.toml"
    path.write_text(base + (prediction_table(model) if mode == "predictive" else ""))
    return path


def run(lab: topology.Lab, work: Path, trials: int, advance: Advance = ignore, model: Model | None = None) -> dict:
    """Every creep in both modes; advance() after each trial."""
    model = model or shipped_model()
    out = {}
    for creep, params in CREEPS.items():
        out[creep] = {"params": params, **{mode: run_mode(lab, work / f"{creep}-{mode}", mode, params, trials,
                                                          advance, model) for mode in MODES}}
    return {"rate_pps": RATE_PPS, "interval_us": INTERVAL_US, "multiplier": MULTIPLIER,
            "threshold": model.threshold, **out}


def run_mode(lab: topology.Lab, work: Path, mode: str, params: dict, trials: int, advance: Advance,
             model: Model) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    trial_windows: list[tuple[int, int, int]] = []     # (fault_ns, blackhole_ns, clear_ns)
    with ExitStack() as stack:
        daemon = DaemonProcess(lab, config(lab, work, mode, model), work / "daemon.jsonl", stats_interval_s=3600)
        stack.callback(daemon.stop)
        daemon.wait_for("ready", 60)
        receiver, sender = udp_stream(lab, work, RATE_PPS, trials * TRIAL_MAX_S + 10, ORDERS_PORT)
        stack.callback(receiver.stop)
        stack.callback(sender.stop)
        stack.callback(faults.clear, lab, "creep-then-blackhole", "A")
        for _ in range(trials):
            _wait_on_a(daemon)
            time.sleep(QUIET_S)
            fault_ns = faults.inject(lab, "creep-then-blackhole", "A", **params)
            blackhole_ns = _blackhole(lab, params["creep_s"] + 5)
            time.sleep(BLACKHOLE_S)
            trial_windows.append((fault_ns, blackhole_ns, faults.clear(lab, "creep-then-blackhole", "A")))
            advance()
        _wait_on_a(daemon)
        sent, _ = stop_stream(receiver, sender)
        events = daemon.events()
    arrivals = np.load(work / f"arrivals-{ORDERS_PORT}.npy")
    standby = lab.ifindex("exch", topology.LINKS["B"].handoff)
    orders = analysis.stream_trials(arrivals, sent["issued"], 1e9 / RATE_PPS, [w[0] for w in trial_windows],
                                    [w[2] for w in trial_windows], standby)
    return summarize(trial_windows, events, orders["lost"])


def summarize(trial_windows: list[tuple[int, int, int]], events: list[dict], lost: list[int]) -> dict:
    moves = [e for e in events if e.get("event") == "failover" and e.get("class") == "orders"]
    per_trial = []
    for (fault_ns, blackhole_ns, clear_ns), n_lost in zip(trial_windows, lost):
        # The move that took orders off A for the blackhole: the last move before it if that left A
        # (an earlier one may have come back: a reflex flicker on a lossy creep), else the first after it.
        before = [e for e in moves if fault_ns <= e["mono_ns"] < blackhole_ns]
        after = [e for e in moves if e["from"] == "A" and blackhole_ns <= e["mono_ns"] < clear_ns]
        left = before[-1] if before and before[-1]["from"] == "A" else (after[0] if after else None)
        per_trial.append({"lost": n_lost, "cause": left["cause"] if left else None,
                          "left_before_blackhole_ms": round((blackhole_ns - left["mono_ns"]) / 1e6, 1)
                          if left else None,
                          "moves_before_blackhole": [(e["from"], e["to"], e["cause"]) for e in before],
                          "fault_ns": fault_ns, "blackhole_ns": blackhole_ns, "clear_ns": clear_ns})
    in_trials = [(f, c) for f, _, c in trial_windows]
    false_moves = [e for e in moves if e["cause"] != "failback" and not any(f <= e["mono_ns"] < c
                                                                            for f, c in in_trials)]
    return {"lost": percentiles([t["lost"] for t in per_trial], keys=("min", "p50", "max")),
            "lost_total": sum(lost),
            "left_before_blackhole_ms": percentiles([t["left_before_blackhole_ms"] for t in per_trial],
                                                    keys=("min", "p50", "max")),
            "causes": sorted({t["cause"] for t in per_trial if t["cause"]}),
            "false_moves": len(false_moves), "trials": per_trial}


def _blackhole(lab: topology.Lab, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        began = [e["mono_ns"] for e in faults.events(lab, "A") if e["event"] == "blackhole"]
        if began:
            return began[0]
        time.sleep(0.02)
    raise ScenarioError(f"creep-then-blackhole on A: no blackhole within {timeout_s} s")


def _wait_on_a(daemon: DaemonProcess) -> None:
    deadline = time.monotonic() + SETTLE_S
    while True:
        moves = [e for e in daemon.events() if e.get("event") == "failover" and e.get("class") == "orders"]
        if not moves or moves[-1]["to"] == "A":
            return
        if time.monotonic() > deadline:
            raise ScenarioError(f"orders did not return to A within {SETTLE_S} s")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="keep the runs' files here (default: in the lab)")
    args = ap.parse_args(argv)
    lab = topology.up()
    began = time.monotonic()
    try:
        result = run(lab, args.out or lab.dir / "predict-benefit", args.trials)
    finally:
        topology.down(lab.name)
    print(json.dumps({**result, "seconds": round(time.monotonic() - began, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
