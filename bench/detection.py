"""The detection section (issue #11): does twinpath move traffic only when a
link failed, and how fast does it see each kind of failure.

  soak       no fault; stress-ng --cpu 2 on both cores plus traffic in both
             steered classes, at 1 ms x 3 and then at 200 us x 3, each time
             beside FRR bfdd at 10 ms x 3 on the same links: every move, and
             every bfdd session down, is false (bench/stress.py runs it).
  scenarios  every fault of lab.faults on a carrier link, `trials` times each
             at 1 ms x 3 on one daemon per scenario. The class the fault
             should move: orders (active-backup, A then B) for hard and gray
             failures, quotes (lowest-latency) for added delay, which must not
             move orders. detect_us counts from the fault (creep-then-blackhole:
             from its blackhole, so a move before it is negative); wrong_moves
             counts moves with no fault behind them, moves onto the faulted
             link, and (delay) moves of an active-backup class.
  model      the shipped failure-prediction model (appliance/core/predict.py) on
             lab traces recorded now from seeds its training never saw
             (bench/predict_train.fresh: precision, recall, median_lead_ms), and
             creep-then-blackhole with prediction off and on
             (bench/predict_benefit: orders lost either way).
  cython_speedup  bench/detect_speed.py: the window loop against its reference.

Damping is off except in flap (each trial here is a fresh failure a second
after the last; damping would rightly hold the link out for 30 s): flap
measures it, with flaps_suppressed the links it suppressed.
"""
from __future__ import annotations

import random
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from appliance.core.stats import percentiles
from bench import analysis, stress
from bench.progress import Advance
from lab import faults, topology
from lab.processes import DaemonProcess, ScenarioError, stop_stream, udp_stream

SOAK_SETTINGS = ((1000, 3), (200, 3))
PORTS = {"orders": 9000, "quotes": 9200}
INTERVAL_US, MULTIPLIER, HOLDDOWN_MS = 1000, 3, 200
RATE_PPS = 5000
PRE_FAULT_S = 0.3
TRIAL_MAX_S = 12.0        # sizes the streams (the flap's settle included); stopped when done
HARD_HOLD_S = 0.3
GRAY_HOLD_S = 2.0


@dataclass(frozen=True)
class Scenario:
    fault: str
    params: dict = field(default_factory=dict)
    hold_s: float = GRAY_HOLD_S
    mover: str = "orders"       # the class this fault must move off the faulted link
    damping: bool = False
    settle_s: float = 10.0      # flap: a suppressed link is held out up to max_suppress (60 s)


SCENARIOS = {
    "blackhole": Scenario("blackhole", hold_s=HARD_HOLD_S),
    "blackhole-tx": Scenario("blackhole-tx", hold_s=HARD_HOLD_S),
    "blackhole-rx": Scenario("blackhole-rx", hold_s=HARD_HOLD_S),
    "carrier-down": Scenario("carrier-down", hold_s=HARD_HOLD_S),
    # 1 ms towards gw: RTT ~1 ms, inside the 3 ms dead interval, so only a
    # latency policy has a reason to move.
    "delay": Scenario("delay", {"delay_us": 1000}, mover="quotes"),
    "loss": Scenario("loss", {"probability": 0.2}),
    "jitter": Scenario("jitter", {"jitter_us": 1500}),
    "flap": Scenario("flap", {"down_ms": 50, "up_ms": 450}, hold_s=3.0, damping=True, settle_s=75.0),
    "creep-then-blackhole": Scenario("creep-then-blackhole",
                                     {"creep_s": 3.0, "creep_delay_us": 3000, "creep_loss": 0.3}, hold_s=3.5),
}


def soak(lab: topology.Lab, work: Path, seconds: float, advance: Advance) -> dict:
    """advance() once per second of stress."""
    out = {}
    for interval_us, multiplier in SOAK_SETTINGS:
        setting = f"{interval_us}us_x{multiplier}"
        r = stress.run(lab, work / f"soak-{setting}", seconds, advance, interval_us=interval_us,
                       multiplier=multiplier)
        tw = r["twinpath"]
        out[setting] = {"seconds": r["seconds"], "interval_us": interval_us, "multiplier": multiplier,
                        "load": r["load"] + " plus traffic in both classes (5000 packets/s each)",
                        "false_failovers": tw["false_failovers"], "failover_events": tw["failover_events"],
                        "decisions": tw["decisions"], "heartbeat_late_periods": tw["heartbeat_late_periods"],
                        "heartbeat_max_late_us": tw["heartbeat_max_late_us"],
                        "bfdd": {"setting": r["bfdd"]["setting"], "session_downs": r["bfdd"]["false_failovers"]}}
    return out


def scenarios(lab: topology.Lab, work: Path, trials: int, advance: Advance, seed: int = 1) -> dict:
    """advance() after each trial."""
    return {name: run_scenario(lab, work / name, sc, trials, advance, seed + i)
            for i, (name, sc) in enumerate(SCENARIOS.items())}


def run_scenario(lab: topology.Lab, work: Path, sc: Scenario, trials: int, advance: Advance, seed: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    config = topology.write_config(lab, interval_us=INTERVAL_US, multiplier=MULTIPLIER, holddown_ms=HOLDDOWN_MS,
                                   damping=sc.damping)
    lab.run("gw", ["sysctl", "-q", "-w", "net.ipv4.conf.all.ignore_routes_with_linkdown=1"])
    windows: list[tuple[str, int, int, int]] = []     # (link, fault_ns, reference_ns, clear_ns)
    with ExitStack() as stack:
        daemon = DaemonProcess(lab, config, work / "daemon.jsonl", stats_interval_s=3600)
        stack.callback(daemon.stop)
        daemon.wait_for("ready", 60)
        duration = trials * (TRIAL_MAX_S + sc.hold_s) + 10
        streams = {}
        for name, port in PORTS.items():
            streams[name] = udp_stream(lab, work, RATE_PPS, duration, port)
            stack.callback(streams[name][0].stop)
            stack.callback(streams[name][1].stop)
        link = "A"
        for _ in range(trials):
            # Lowest-latency has no preferred link to return to: the delay
            # goes on whichever link carries quotes (A, then B, ...).
            link = _placement(daemon, sc.mover) if sc.mover == "quotes" else "A"
            _wait_settled(daemon, sc.settle_s)
            time.sleep(PRE_FAULT_S + rng.uniform(0, INTERVAL_US / 1e6))
            fault_ns = faults.inject(lab, sc.fault, link, **sc.params)
            time.sleep(sc.hold_s)
            reference_ns = fault_ns
            if sc.fault == "creep-then-blackhole":
                began = [e["mono_ns"] for e in faults.events(lab, link) if e["event"] == "blackhole"]
                if not began:
                    raise ScenarioError(f"creep-then-blackhole on {link}: no blackhole within {sc.hold_s} s")
                reference_ns = began[-1]
            windows.append((link, fault_ns, reference_ns, faults.clear(lab, sc.fault, link)))
            advance()
        _wait_settled(daemon, sc.settle_s)
        sent, received = stop_stream(*streams["orders"])
        stop_stream(*streams["quotes"])
        events = daemon.events()
    arrivals = np.load(work / f"arrivals-{PORTS['orders']}.npy")
    standby = lab.ifindex("exch", topology.LINKS["B"].handoff)
    orders = analysis.stream_trials(arrivals, sent["issued"], 1e9 / RATE_PPS, [w[1] for w in windows],
                                    [w[3] for w in windows], standby)
    return summarize(sc, windows, events, orders["lost"])


def summarize(sc: Scenario, windows: list[tuple[str, int, int, int]], events: list[dict],
              orders_lost: list[int]) -> dict:
    """The contract's figures from the fault windows and the daemon's log."""
    moves = [e for e in events if e.get("event") == "failover" and e.get("cause") != "failback"]
    detect_us, failovers, wrong = [], 0, []
    for link, fault_ns, reference_ns, clear_ns in windows:
        away = [e for e in moves if e["class"] == sc.mover and e["from"] == link and fault_ns <= e["mono_ns"] < clear_ns]
        failovers += len(away)
        if away:
            detect_us.append(round((away[0]["mono_ns"] - reference_ns) / 1000, 1))
        wrong += [e for e in moves if e["to"] == link and fault_ns <= e["mono_ns"] < clear_ns]
    in_fault = [(f, c) for _, f, _, c in windows]
    wrong += [e for e in moves if not any(f <= e["mono_ns"] < c for f, c in in_fault)]
    if sc.mover == "quotes":   # a slower link is no failed link for active-backup classes
        wrong += [e for e in moves if e["class"] != "quotes"]
    wrong = list({e["mono_ns"]: e for e in wrong}.values())
    faulted = {w[0] for w in windows}
    return {
        "trials": len(windows),
        "fault": {"name": sc.fault, "params": sc.params, "hold_s": sc.hold_s, "mover": sc.mover,
                  "damping": sc.damping},
        "detect_us": percentiles(detect_us),
        "detected": len(detect_us),
        "failovers": failovers,
        "lost": int(sum(orders_lost)),
        "flaps_suppressed": sum(1 for e in events if e.get("event") == "damped" and e.get("link") in faulted),
        "wrong_moves": len(wrong),
        "wrong_move_events": sorted(wrong, key=lambda e: e["mono_ns"]),
        "causes": sorted({e["cause"] for e in moves}),
    }


# The quick plan's trace kinds: one failure of each shape that reaches the
# blackhole fast, and the benign case that fooled the first model.
QUICK_MODEL_KINDS = ["creep-blackhole", "loss-blackhole", "normal", "delay-step"]


def model_runs(quick: bool) -> int:
    from bench import predict_traces
    return len(predict_traces.plan(1, 1, MODEL_SEED, QUICK_MODEL_KINDS if quick else None))


MODEL_SEED = 2


def model(lab: topology.Lab, work: Path, quick: bool, benefit_trials: int, advance: Advance) -> dict:
    """advance() after each recorded run and each benefit trial."""
    from bench import predict_benefit, predict_train
    out = predict_train.fresh(lab, work / "predict-traces", fail_runs=1, benign_runs=1, seed=MODEL_SEED,
                              kinds=QUICK_MODEL_KINDS if quick else None, advance=advance)
    out["benefit"] = predict_benefit.run(lab, work / "predict-benefit", benefit_trials, advance)
    return out


def cython_speedup() -> dict:
    from bench import detect_speed
    return detect_speed.measure()


def _placement(daemon: DaemonProcess, class_name: str) -> str:
    """The link the daemon last put (or found) the class on: its preferred
    link until the first move."""
    moves = [e for e in daemon.events() if e.get("event") == "failover" and e.get("class") == class_name]
    return moves[-1]["to"] if moves else "A"


def _wait_settled(daemon: DaemonProcess, timeout_s: float) -> None:
    """Until orders is back on A (after a gray link clears, or a suppressed one is reusable)."""
    deadline = time.monotonic() + timeout_s
    while _placement(daemon, "orders") != "A":
        if time.monotonic() > deadline:
            raise ScenarioError(f"orders did not return to A within {timeout_s} s")
        time.sleep(0.05)
