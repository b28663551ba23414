"""A/B arbitration end to end in the lab: exch publishes every packet on both
lines with line faults, the daemon arbitrates in XDP on gw, the trader checks
what it got. One lab and one daemon for the module; each scenario publishes
its own MoldUDP64 session."""
import threading
import time

import pytest

from lab import faults, feedrun, topology
from lab.feedplan import FeedPlan
from lab.processes import DaemonProcess

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def lab_daemon(lab, tmp_path_factory):
    daemon = DaemonProcess(lab, topology.write_config(lab, feeds=True), tmp_path_factory.mktemp("arb") / "daemon.log",
                           stats_interval_s=1)
    try:
        daemon.wait_for("ready", timeout_s=60)
        yield lab, daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def scenarios(lab_daemon, tmp_path_factory):
    """Every scenario of the measurement contract, run once, in order."""
    lab, daemon = lab_daemon
    work = tmp_path_factory.mktemp("scenarios")
    return {name: feedrun.run_scenario(lab, daemon, name, work / name) for name in feedrun.SCENARIOS}


@pytest.mark.parametrize("name", ["loss_a", "loss_b", "disjoint_loss", "line_down"])
def test_recoverable_loss_delivers_every_message_once_in_order(scenarios, name):
    r = scenarios[name]
    assert r["gaps_expected"] == [], "the plan must leave one copy of every sequence"
    # Out of order only where one line lost a packet and the other's copy came late (see check()).
    assert (r["delivered"], r["delivered_twice"], r["out_of_order"] - r["late_fills"], r["corrupt"]) == \
        (r["sent"], 0, 0, 0)
    assert r["gaps_reported"] == []
    assert r["end_of_session_received"] == 1


def test_overlap_loss_reports_exactly_the_expected_gaps(scenarios):
    r = scenarios["overlap_loss"]
    assert r["gaps_expected"], "the plan must lose some sequences on both lines"
    assert r["gaps_reported"] == r["gaps_expected"]
    assert r["missing"] == r["gaps_expected"]
    lost = sum(b - a + 1 for a, b in r["gaps_expected"])
    assert (r["delivered"], r["delivered_twice"]) == (r["sent"] - lost, 0)


def test_reorder_delivers_every_message_once(scenarios):
    r = scenarios["reorder"]
    assert (r["delivered"], r["delivered_twice"], r["gaps_reported"]) == (r["sent"], 0, [])


def test_daemon_logs_gaps_fills_health_and_summaries(lab_daemon, scenarios):
    _lab, daemon = lab_daemon
    events = daemon.events()
    kinds = {e["event"] for e in events}
    assert {"session", "gap", "fill", "gap-filled", "gap-lost", "feed-summary"} <= kinds
    down = [e for e in events if e["event"] == "line-health" and e["line"] == "B" and e["status"] == "silent"]
    assert down, "line B dying mid-stream must be reported silent"
    health = [e for e in events if e["event"] == "health"]
    assert health and health[-1]["arbitration_passed"]["A"]["not_feed"] > 0  # heartbeat replies, at least
    summaries = [e for e in events if e["event"] == "feed-summary" and e["feed"] == "itch"
                 and e["lines"]["A"]["packets"]]
    assert summaries and {"won_pct", "lead_p50_us", "lag_p99_us", "silence_ms", "behind"} <= \
        set(summaries[-1]["lines"]["A"])


def test_mdp3_feed_is_arbitrated_with_one_way_latency(lab_daemon, tmp_path):
    lab, daemon = lab_daemon
    plan = FeedPlan(protocol="mdp3", messages=3000, rate=10_000, seed=3, line_a={"loss": 0.05})
    run = feedrun.run_feed(lab, plan, tmp_path)
    r = run.result
    assert (r["delivered"], r["delivered_twice"], r["out_of_order"] - r["late_fills"]) == (r["sent"], 0, 0)
    deadline = time.monotonic() + 5  # the next once-a-second summary covers the run
    while time.monotonic() < deadline:
        latencies = [e["lines"]["A"].get("owd_p50_us") for e in daemon.events()
                     if e["event"] == "feed-summary" and e["feed"] == "mdp3" and e["mono_ns"] >= run.start_ns]
        if any(v is not None for v in latencies):
            break
        time.sleep(0.1)
    assert any(v is not None for v in latencies)


def test_carrier_blackhole_on_line_b_loses_nothing_and_is_reported(lab_daemon, tmp_path):
    """A real carrier fault (the injector on carB, not the publisher's plan)
    mid-stream: A carries everything, and B is reported silent."""
    lab, daemon = lab_daemon
    plan = FeedPlan(messages=30_000, rate=20_000, batch_a=2, batch_b=2, session="BLACKHOLE", seed=5)
    start_ns = time.monotonic_ns()
    cut = threading.Timer(0.5, faults.inject, args=(lab, "blackhole", "B"))
    cut.start()
    try:
        r = feedrun.run_feed(lab, plan, tmp_path).result
    finally:
        cut.cancel()
        faults.clear(lab, "blackhole", "B")
    assert (r["delivered"], r["delivered_twice"], r["out_of_order"] - r["late_fills"]) == (r["sent"], 0, 0)
    silent = [e for e in daemon.events() if e["event"] == "line-health" and e["line"] == "B"
              and e["status"] == "silent" and e["mono_ns"] >= start_ns]
    assert silent
