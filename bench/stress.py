"""False failovers under CPU stress: no fault at all, stress-ng keeping both
cores busy, twinpath at 1 ms x 3 and bfdd at 10 ms x 3 on the same two links
at the same time. Traffic flows in both classes (orders prefer A,
marketdata prefers B), because twinpath only ever moves a class when one of
its packets finds the class's link stale: without traffic a late heartbeat
would go unseen. Every failover and every bfdd session down here is false."""
from __future__ import annotations

import math
import signal
import subprocess
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from bench.progress import Advance
from lab import topology
from lab.bfd import Bfdd
from lab.processes import DaemonProcess, stop_stream, udp_stream

PORTS = {"orders": 9000, "marketdata": 9100}
INTERVAL_US, MULTIPLIER = 1000, 3
STREAM_SLACK_S = 30
DECISIONS = ("gray", "gray-cleared", "gray-held", "hold", "damped", "undamped", "warning", "error")


def run(lab: topology.Lab, work: Path, seconds: float, advance: Advance, rate_pps: int = 5000,
        interval_us: int = INTERVAL_US, multiplier: int = MULTIPLIER) -> dict:
    """advance() once per second of stress."""
    work.mkdir(parents=True, exist_ok=True)
    config = topology.write_config(lab, interval_us=interval_us, multiplier=multiplier, holddown_ms=200)
    with ExitStack() as stack:
        daemon = DaemonProcess(lab, config, work / "daemon.jsonl", stats_interval_s=3600)
        stack.callback(daemon.stop)
        daemon.wait_for("ready", 60)
        bfd = stack.enter_context(Bfdd(lab, lab.dir / "bfd-stress", links=("A", "B"), interval_ms=10, multiplier=3))
        streams = {}
        for name, port in PORTS.items():
            # Sized well past the stress: the stream is stopped early, never
            # racing its own end (a sender exiting as SIGTERM lands fails).
            streams[name] = udp_stream(lab, work, rate_pps, seconds + STREAM_SLACK_S, port)
            stack.callback(streams[name][0].stop)
            stack.callback(streams[name][1].stop)
        time.sleep(0.5)
        start_ns = time.monotonic_ns()
        # In a lab namespace, so that lab teardown reaps it whatever happens.
        stress = lab.spawn("exch", ["stress-ng", "--cpu", "2", "--timeout", f"{seconds:g}s", "--quiet"])
        stack.callback(_reap, stress)
        _wait(stress, seconds, advance)
        end_ns = time.monotonic_ns()
        done = {name: stop_stream(*tools) for name, tools in streams.items()}
        transitions = bfd.transitions()
        daemon.stop()
        events = daemon.events()
    failovers = [e for e in events if e.get("event") == "failover" and start_ns <= e["mono_ns"] <= end_ns]
    stopped = next((e for e in events if e.get("event") == "stopped"), {})
    downs = [t for t in transitions if t["to"] == "down" and start_ns <= t["mono_ns"] <= end_ns]
    return {
        "seconds": round((end_ns - start_ns) / 1e9, 1),
        "load": "stress-ng --cpu 2 (both cores)",
        "twinpath": {"setting": f"{interval_us}us_x{multiplier}",
                     "false_failovers": sum(1 for e in failovers if e["cause"] != "failback"),
                     "failbacks": sum(1 for e in failovers if e["cause"] == "failback"),
                     "failover_events": failovers,
                     # The core's other verdicts in the same stretch: gray, hold, damped, ...
                     "decisions": dict(Counter(e["event"] for e in events if e.get("event") in DECISIONS
                                               and start_ns <= e["mono_ns"] <= end_ns)),
                     "heartbeat_late_periods": stopped.get("late_periods"),
                     "heartbeat_max_late_us": stopped.get("max_late_us"),
                     "streams": {name: {"issued": sent["issued"], "received": got["received"],
                                         "socket_drops": got["socket_drops"]} for name, (sent, got) in done.items()}},
        "bfdd": {"setting": "10ms_x3", "false_failovers": len(downs), "session_downs": downs},
    }


def _wait(proc: subprocess.Popen, seconds: float, advance: Advance) -> None:
    """proc.wait() for a run of `seconds` (30 s grace), advance() every second of it."""
    for _ in range(math.ceil(seconds)):
        try:
            proc.wait(timeout=1)
            return
        except subprocess.TimeoutExpired:
            advance()
    proc.wait(timeout=30)


def _reap(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
