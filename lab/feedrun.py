"""Market data through the lab: exch publishes a FeedPlan on both lines, the
trader records what arrives, and the arbitration scenarios of the
measurement contract (`python -m bench.arbitration`) compare it with what a
correct arbiter must deliver and with the gaps the daemon reported."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from lab import topology
from lab.feedplan import FeedPlan, LineFaults, check, expected
from lab.marketdata import load_received
from lab.processes import DaemonProcess, Tool

MARKETDATA = "lab.marketdata"
FEED_NAMES = {"moldudp64": "itch", "mdp3": "mdp3"}  # the lab config's feeds
SETTLE_S = 0.3  # past the daemon's grace window (20 ms) and its 10 ms tick, with margin


@dataclass
class FeedRun:
    published: dict
    received: dict
    result: dict      # check(): what the trader got against the plan
    start_ns: int     # when the publisher started, CLOCK_MONOTONIC


def run_feed(lab: topology.Lab, plan: FeedPlan, workdir: Path, port: int | None = None,
             timeout_s: float = 30.0) -> FeedRun:
    """Publishes `plan` from exch to the trader on both lines and checks what arrived."""
    port = port or topology.FEED_PORTS[plan.protocol]
    plan_path, out = workdir / "plan.json", workdir / "received.npy"
    plan_path.write_text(plan.model_dump_json())
    with Tool.in_lab(lab, "trader", "receive", "--protocol", plan.protocol, "--bind", topology.FEED_DST,
                     "--port", str(port), "--timeout", str(timeout_s), "--idle", "0.5", "--out", str(out),
                     module=MARKETDATA) as receiver:
        receiver.wait_ready()
        with Tool.in_lab(lab, "exch", "publish", "--plan", str(plan_path), "--dst", topology.FEED_DST,
                         "--port", str(port), "--src-a", topology.FEED_SOURCES["A"],
                         "--src-b", topology.FEED_SOURCES["B"], "--timeout", str(timeout_s),
                         module=MARKETDATA) as publisher:
            publisher.wait_ready(timeout_s=timeout_s)
            published = publisher.result(timeout_s=timeout_s)
        received = receiver.result(timeout_s=timeout_s)
    return FeedRun(published, received, check(plan, load_received(out), topology.FEED_SOURCES),
                   published["start_ns"])


def _plan(session: str, **faults) -> FeedPlan:
    lines = {k: LineFaults(**v) for k, v in faults.items() if k in ("line_a", "line_b")}
    rest = {k: v for k, v in faults.items() if k not in lines}
    return FeedPlan(protocol="moldudp64", messages=20_000, rate=30_000, batch_a=2, batch_b=2,
                    heartbeat_every=2_000, end_of_session=True, session=session, seed=7, **lines, **rest)


# Each scenario publishes its own session, so the arbiter starts it afresh.
SCENARIOS = {
    "loss_a": _plan("LOSSA", line_a={"loss": 0.05}),
    "loss_b": _plan("LOSSB", line_b={"loss": 0.05}),
    "disjoint_loss": _plan("DISJOINT", line_a={"loss": 0.05}, line_b={"loss": 0.05}, overlap=0.0),
    "overlap_loss": _plan("OVERLAP", line_a={"loss": 0.05}, line_b={"loss": 0.05}, overlap=0.2),
    "line_down": _plan("LINEDOWN", line_b={"down_after": 10_000}),
    "reorder": _plan("REORDER", line_a={"reorder": 0.05}, line_b={"reorder": 0.05}),
}


def merge(ranges: list[list[int]]) -> list[list[int]]:
    """Sorted, with adjacent and overlapping ranges joined."""
    out: list[list[int]] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], last)
        else:
            out.append([first, last])
    return out


def reported_gaps(daemon: DaemonProcess, feed: str, since_ns: int) -> list[list[int]]:
    """What the daemon settled as lost for `feed` since `since_ns`."""
    lost = [r for e in daemon.events() if e.get("event") == "gap-lost" and e.get("feed") == feed
            and e["mono_ns"] >= since_ns for r in e["lost"]]
    return merge(lost)


def run_scenario(lab: topology.Lab, daemon: DaemonProcess, name: str, workdir: Path) -> dict:
    """One scenario of the measurement contract against a running daemon."""
    plan = SCENARIOS[name]
    workdir.mkdir(parents=True, exist_ok=True)
    run = run_feed(lab, plan, workdir)
    time.sleep(SETTLE_S)
    r = run.result
    return {
        "sent": r["sent"], "delivered": r["delivered"], "delivered_twice": r["delivered_twice"],
        "redundant_messages": r["redundant_messages"], "out_of_order": r["out_of_order"],
        "late_fills": r["late_fills"],
        "gaps_expected": expected(plan)["gaps_expected"].get(plan.session, []),
        "gaps_reported": reported_gaps(daemon, FEED_NAMES[plan.protocol], run.start_ns),
        "missing": r["missing"].get(plan.session, []), "corrupt": r["corrupt"],
        "heartbeats_received": r["heartbeats_received"], "end_of_session_received": r["end_of_session_received"],
        "publisher_rate": run.published["rate"],
    }
