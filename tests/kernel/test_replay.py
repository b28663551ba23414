"""Record and replay in the lab: a daemon run with --record through a lossy
A/B feed, a blackhole failover and its failback; `twinpath replay` on its
trace must print exactly the decisions the daemon logged, in the same order,
with the same times."""
import json
import subprocess
import sys
import time

from lab import faults, feedrun, processes, topology
from lab.feedplan import FeedPlan

# Log lines that report rather than decide: not made by the core, not replayed.
REPORTS = {"attached", "adopted", "health", "feed-summary", "stopped", "warning", "log",
           # operations (issue #12): pins, the probe sender, the control socket, stop
           "pinned", "migrated", "feeds-removed", "sender-replaced", "control-listening", "control",
           "reloaded", "reload-refused", "fail-static", "detached",
           # steering at XDP (issue #15): where steering attached, which links take XDP frames
           "steer-attached", "xdp-target"}


def decisions_logged(daemon) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "time"} for e in daemon.events() if e["event"] not in REPORTS]


def replayed(trace) -> list[dict]:
    """What `twinpath replay` prints for a recorded trace, as decisions."""
    out = subprocess.run([sys.executable, "-m", "appliance.cli", "replay", str(trace)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_replay_of_a_recorded_failover_and_failback_is_the_live_run(lab):
    work = lab.dir / "replay"
    work.mkdir(parents=True, exist_ok=True)
    trace = work / "trace.jsonl"
    config = topology.write_config(lab, holddown_ms=300, feeds=True)
    daemon = processes.DaemonProcess(lab, config, work / "daemon.jsonl", record=trace)
    try:
        daemon.wait_for("ready", 30)
        feed = FeedPlan(protocol="moldudp64", messages=2000, rate=10_000, seed=5, line_a={"loss": 0.05},
                        line_b={"loss": 0.05})
        feedrun.run_feed(lab, feed, work)  # gaps, and where both lines lost a sequence, gaps lost
        faults.inject(lab, "blackhole", "A")
        try:
            receiver, sender = processes.udp_stream(lab, work, 10_000, 0.3, 9000)  # traffic makes the data path switch
            sender.result(timeout_s=15)
            receiver.result(timeout_s=20)
        finally:
            faults.clear(lab, "blackhole", "A")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(e.get("cause") == "failback" for e in daemon.events()):
            time.sleep(0.05)
    finally:
        daemon.stop()

    live = decisions_logged(daemon)
    moves = [(e["cause"], e["from"], e["to"]) for e in live if e["event"] == "failover"]
    assert moves == [("heartbeat", "A", "B"), ("failback", "B", "A")], moves
    assert [e["event"] for e in live].count("ready") == 1
    kinds = {json.loads(line).get("kind") for line in trace.read_text().splitlines()[1:]}
    assert {"reflex", "health", "arb-event", "feed-lines"} <= kinds, kinds
    decided = {e["event"] for e in live}
    assert {"session", "gap"} <= decided and decided & {"gap-lost", "gap-filled"}, decided
    assert replayed(trace) == live
