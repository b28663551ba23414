"""Failover in the lab: real programs on real veths, real packets, real faults.

Assertions are about behaviour (which link, how many packets lost, nothing
duplicated or reordered), with margins that do not depend on machine speed.
"""
import json
import os
import signal
import time

import numpy as np
import pytest

from lab import faults, processes, scenario, topology
from lab.traffic import analyze_stream

RATE = 10_000
INTERVAL_US, MULTIPLIER = 1000, 3


def max_lost(interval_us: int, multiplier: int) -> int:
    """Packets sent while the failed link is still in use: one dead interval
    plus one probe period, and a generous margin for a loaded 2-core machine."""
    return RATE * interval_us * (multiplier + 1) // 1_000_000 + 200


@pytest.fixture
def workdir(lab, request):
    path = lab.dir / request.node.name.replace("[", "-").rstrip("]")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def daemon(lab, workdir):
    """A running daemon; holddown short enough for failback tests."""
    config = topology.write_config(lab, interval_us=INTERVAL_US, multiplier=MULTIPLIER, holddown_ms=300)
    d = processes.DaemonProcess(lab, config, workdir / "daemon.jsonl")
    try:
        d.wait_for("ready", 30)
        yield d
    finally:
        d.stop()


def failovers(daemon, cause=None):
    return [e for e in daemon.events() if e.get("event") == "failover"
            and (cause is None or e["cause"] == cause)]


def stream(lab, workdir, port, seconds, during=None):
    """Runs a stream; calls during() while it flows; returns (analysis, arrivals)."""
    receiver, sender = processes.udp_stream(lab, workdir, RATE, seconds, port)
    try:
        if during:
            during()
        issued = sender.result(timeout_s=seconds + 15)["issued"]
        receiver.result(timeout_s=20)
    finally:
        sender.stop()
        receiver.stop()
    arrivals = np.load(workdir / f"arrivals-{port}.npy")
    return analyze_stream(arrivals, issued), arrivals


@pytest.mark.parametrize("port,handoff", [(9000, "hA"), (9100, "hB")])
def test_steering_follows_the_class_link(lab, workdir, daemon, port, handoff):
    result, arrivals = stream(lab, workdir, port, 0.3)
    assert result["lost"] == 0 and result["duplicated"] == 0
    assert set(arrivals["ifindex"]) == {lab.ifindex("exch", handoff)}


@pytest.mark.parametrize("interval_us", [1000, 200])
@pytest.mark.parametrize("name", scenario.SCENARIOS)
def test_scenario_fails_over_losing_only_the_dead_interval(lab, name, interval_us):
    r = scenario.run(name, lab, rate_pps=RATE, interval_us=interval_us, multiplier=MULTIPLIER)
    assert r["failed_over"], json.dumps(r)
    assert (r["from_link"], r["to_link"]) == ("A", "B")
    assert r["failover_us"] is not None and r["detect_us"] is not None
    assert r["duplicated"] == 0 and r["reordered"] == 0, json.dumps(r)
    assert r["received"] + r["lost"] == r["sent"]
    assert r["lost"] <= max_lost(interval_us, MULTIPLIER), json.dumps(r)
    assert len(r["lost_ranges"]) <= 1, "loss must be one contiguous burst at the fault"


def test_tcp_order_session_survives_blackhole_failover(lab, workdir, daemon):
    records = 3000
    server = processes.Tool.in_lab(
        lab, "exch", "tcp-server", "--bind", topology.EXCHANGE_ADDR, "--port", "9001", "--timeout", "30",
        "--out", str(workdir / "tcp.json"))
    server.wait_ready()
    client = processes.Tool.in_lab(
        lab, "trader", "tcp-client", "--dst", topology.EXCHANGE_ADDR, "--port", "9001", "--rate", "1000",
        "--count", str(records), "--timeout", "25")
    try:
        client.wait_ready()
        time.sleep(1.0)
        faults.inject(lab, "blackhole", "A")
        client_result = client.result(timeout_s=30)
        server_result = server.result(timeout_s=30)
    finally:
        faults.clear(lab, "blackhole", "A")
        client.stop()
        server.stop()
    assert [(e["from"], e["to"]) for e in failovers(daemon, "heartbeat")] == [("A", "B")]
    assert client_result["error"] is None
    assert server_result["connections"] == 1, "the session must never reconnect"
    assert server_result["in_order"] and server_result["records"] == records
    assert server_result["ended"] == "eof"


def test_stalled_daemon_switches_nothing_and_forwarding_continues(lab, workdir, daemon):
    sender = daemon.wait_for("attached", 1)["sender_pid"]

    def stall():
        time.sleep(0.3)
        for pid in (daemon.proc.pid, sender):   # heartbeats stop: every link goes stale at once
            os.kill(pid, signal.SIGSTOP)
        time.sleep(0.5)
        for pid in (sender, daemon.proc.pid):
            os.kill(pid, signal.SIGCONT)

    result, arrivals = stream(lab, workdir, 9000, 1.2, during=stall)
    assert failovers(daemon) == []
    assert result["lost"] == 0 and result["duplicated"] == 0
    assert set(arrivals["ifindex"]) == {lab.ifindex("exch", "hA")}


def test_killed_daemon_leaves_forwarding_on_last_state(lab, workdir, daemon):
    daemon.signal(signal.SIGKILL)
    daemon.proc.wait(timeout=5)
    result, arrivals = stream(lab, workdir, 9000, 0.5)
    assert result["lost"] == 0
    assert set(arrivals["ifindex"]) == {lab.ifindex("exch", "hA")}


def test_failback_only_after_holddown(lab, workdir, daemon):
    faults.inject(lab, "blackhole", "A")
    try:
        result, _ = stream(lab, workdir, 9000, 0.3)   # traffic makes the data path switch
    finally:
        cleared_ns = faults.clear(lab, "blackhole", "A")
    assert [(e["from"], e["to"]) for e in failovers(daemon, "heartbeat")] == [("A", "B")]
    back = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not back:
        back = failovers(daemon, "failback")
        time.sleep(0.05)
    assert back and (back[0]["from"], back[0]["to"]) == ("B", "A")
    assert back[0]["mono_ns"] - cleared_ns >= 300_000_000, "failback before the hold-down"
    result, arrivals = stream(lab, workdir, 9000, 0.3)
    assert result["lost"] == 0
    assert set(arrivals["ifindex"]) == {lab.ifindex("exch", "hA")}


def test_a_dead_probe_sender_is_restarted_and_detection_resumes(lab, workdir, daemon):
    """A probe sender killed under a running daemon (the OOM killer, a stray
    kill) left every link unprobed: the data path detected nothing, and
    nothing said so. The daemon now reports it and starts a new one, which
    carries on the sequence; the gap moves nothing."""
    first = daemon.wait_for("attached", 1)["sender_pid"]
    os.kill(first, signal.SIGKILL)
    restarted = daemon.wait_for("sender-restarted", 10)
    assert (restarted["previous_pid"], restarted["status"]) == (first, -signal.SIGKILL)
    assert restarted["pid"] != first and os.path.exists(f"/proc/{restarted['pid']}")
    assert [e["where"] for e in daemon.events() if e.get("event") == "error"] == ["sender"]
    result, arrivals = stream(lab, workdir, 9000, 0.3)
    assert failovers(daemon) == [] and result["lost"] == 0, result
    assert set(arrivals["ifindex"]) == {lab.ifindex("exch", "hA")}
    faults.inject(lab, "blackhole", "A")
    try:
        stream(lab, workdir, 9000, 0.3)               # traffic makes the data path switch
    finally:
        faults.clear(lab, "blackhole", "A")
    assert [(e["from"], e["to"]) for e in failovers(daemon, "heartbeat")] == [("A", "B")]


def test_a_stopped_probe_sender_is_replaced_and_detection_resumes(lab, workdir, daemon):
    """A sender that lives but sends nothing (stopped here; wedged alike)
    left every link unprobed with no word: the daemon now kills it after a
    second of silence and starts a new one."""
    first = daemon.wait_for("attached", 1)["sender_pid"]
    os.kill(first, signal.SIGSTOP)
    restarted = daemon.wait_for("sender-restarted", 15)
    assert (restarted["previous_pid"], restarted["status"], restarted["cause"]) == (first, -signal.SIGKILL, "stalled")
    [error] = [e for e in daemon.events() if e.get("event") == "error"]
    assert error["where"] == "sender" and f"pid {first}, state T" in error["error"], error
    result, arrivals = stream(lab, workdir, 9000, 0.3)
    assert failovers(daemon) == [] and result["lost"] == 0, result
    assert set(arrivals["ifindex"]) == {lab.ifindex("exch", "hA")}
    faults.inject(lab, "blackhole", "A")
    try:
        stream(lab, workdir, 9000, 0.3)
    finally:
        faults.clear(lab, "blackhole", "A")
    assert [(e["from"], e["to"]) for e in failovers(daemon, "heartbeat")] == [("A", "B")]


def _restart_during_stream(lab, workdir, old, seconds=3.0):
    """Kills `old` (its programs keep forwarding) and starts a new daemon on
    the same config while an order stream runs; returns (analysis,
    arrivals, the new daemon's events)."""
    old.signal(signal.SIGKILL)
    old.proc.wait(timeout=5)
    config = topology.write_config(lab, interval_us=INTERVAL_US, multiplier=MULTIPLIER, holddown_ms=300)
    new = processes.DaemonProcess(lab, config, workdir / "daemon-restarted.jsonl")
    try:
        def wait_ready():
            new.wait_for("ready", 30)
        result, arrivals = stream(lab, workdir, 9000, seconds, during=wait_ready)
        return result, arrivals, new.events()
    finally:
        new.stop()


def test_restart_hands_over_without_moving_traffic(lab, workdir, daemon):
    """The new daemon's programs take over while orders flow: no order lost
    or sent over B (the old steer program used to keep reading its own maps
    while the new heartbeat programs took the replies, and moved orders to
    B and back)."""
    result, arrivals, events = _restart_during_stream(lab, workdir, daemon)
    assert [e for e in events if e.get("event") == "failover"] == []
    assert result["lost"] == 0 and result["duplicated"] == 0, result
    assert set(arrivals["ifindex"]) == {lab.ifindex("exch", "hA")}


def test_restart_keeps_a_failed_over_class_where_it_is(lab, workdir, daemon):
    """After a failover to B, a restarted daemon adopts the data path's
    state instead of sending orders back to the dead preferred link."""
    faults.inject(lab, "blackhole", "A")
    try:
        stream(lab, workdir, 9000, 0.3)               # traffic makes the data path switch
        assert [(e["from"], e["to"]) for e in failovers(daemon, "heartbeat")] == [("A", "B")]
        result, arrivals, events = _restart_during_stream(lab, workdir, daemon)
    finally:
        faults.clear(lab, "blackhole", "A")
    # quotes carried no packet, so the data path had no reason to move it off A.
    assert [e["active"] for e in events if e.get("event") == "adopted"] == [{"orders": "B", "marketdata": "B",
                                                                              "quotes": "A"}]
    assert result["lost"] == 0 and result["duplicated"] == 0, result
    assert set(arrivals["ifindex"]) == {lab.ifindex("exch", "hB")}
