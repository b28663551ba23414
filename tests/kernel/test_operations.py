"""Operations in the lab, with orders and an A/B feed flowing: a restart,
a reload, an upgrade across a layout change lose and duplicate nothing; a
daemon killed with SIGKILL leaves a data path that still fails over; stop
leaves the data path forwarding (fail static) and `twinpath detach` then
removes exactly what twinpath added."""
import ctypes
import json
import os
import signal
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.edge import bpfsys
from lab import feedrun, ops, processes, topology
from lab.feedplan import FeedPlan


def ops_result(lab, name):
    result = ops.run(name, lab)
    assert result["sent"] > 0 and result["feed_sent"] > 0, result
    return result


@pytest.mark.parametrize("name", ["daemon-restart", "upgrade", "reload"])
def test_an_operation_loses_and_duplicates_nothing(lab, name):
    r = ops_result(lab, name)
    assert (r["lost"], r["duplicated"], r["delivered_twice"]) == (0, 0, 0), \
        {k: r[k] for k in ("lost_ranges", "feed_heartbeats", "feed_ends", "feed_missing", "operation")}
    assert r["feed_missing"] == [], r
    assert not r["failed_over"] and r["reflex_failovers"] == 0, \
        {k: r[k] for k in ("cause", "detect_us", "failover_us", "reflex_failovers", "daemon_failovers", "operation")}
    if name == "upgrade":
        assert r["operation"]["migrated"] == {"tp_health": 8}, r["operation"]
    if name == "daemon-restart":
        assert r["operation"]["migrated"] == {}, r["operation"]


@pytest.mark.parametrize("name", ["daemon-restart", "upgrade"])
def test_an_operation_with_xdp_steering_loses_nothing(lab, name):
    """The new daemon adopts the running XDP program's state and replaces it
    in place; until it knows which links take XDP frames, XDP passes orders
    to TC, which is attached throughout."""
    r = ops.run(name, lab, steer_xdp=True)
    assert r["sent"] > 0 and r["xdp_forwarded"] >= r["sent"] // 2, r["xdp_forwarded"]
    assert (r["lost"], r["duplicated"], r["delivered_twice"]) == (0, 0, 0), r["lost_ranges"]
    assert not r["failed_over"] and r["reflex_failovers"] == 0, \
        {k: r[k] for k in ("cause", "detect_us", "failover_us", "reflex_failovers", "daemon_failovers", "operation")}


def test_a_restart_keeps_orders_on_a_current_link_slower_than_the_interval(lab):
    # Link A answers in 15 ms at a 10 ms interval, so one probe is always in
    # flight. The restarted sender found A's last reply past the dead interval
    # (its start-up was the gap), and that probe plus the next one counted as
    # two missed: every restart moved orders to B until silence was counted
    # from the sender's resumption.
    r = ops.run("daemon-restart", lab, interval_us=10_000, slow_link_us=15_000)
    assert not r["failed_over"] and r["reflex_failovers"] == 0, \
        {k: r[k] for k in ("cause", "failover_us", "reflex_failovers", "daemon_failovers", "operation")}
    assert (r["lost"], r["duplicated"]) == (0, 0), r["lost_ranges"]


def test_a_killed_daemon_leaves_a_data_path_that_still_fails_over(lab):
    r = ops_result(lab, "daemon-kill")
    assert r["failed_over"] and r["to_link"] == "B", r
    assert r["reflex_failovers"] >= 1, r          # the move the data path made alone, from its own counters
    assert r["duplicated"] == 0 and r["delivered_twice"] == 0, r


def tc_filters(lab, dev):
    out = lab.run("gw", ["tc", "filter", "show", "dev", dev, "ingress"]).stdout
    out += lab.run("gw", ["tc", "filter", "show", "dev", dev, "egress"]).stdout
    return out


def test_stop_is_fail_static_and_detach_removes_only_what_twinpath_added(lab, tmp_path):
    config = topology.write_config(lab, feeds=True)
    daemon = processes.DaemonProcess(lab, config, tmp_path / "daemon.jsonl")
    daemon.wait_for("ready", 60)
    sender_pid = daemon.wait_for("attached", 1)["sender_pid"]
    # Another tool's filter in the clsact twinpath created on the trader side (egress, where twinpath has
    # none): detach must leave it, and the qdisc with it.
    lab.run("gw", ["tc", "filter", "add", "dev", "int", "egress", "prio", "7", "protocol", "all", "u32", "match",
                   "u32", "0", "0"])
    daemon.stop(detach=False)
    assert any(e.get("event") == "fail-static" for e in daemon.events())
    assert "tp_hb_ingress" in tc_filters(lab, "lnkA") and "tp_steer" in tc_filters(lab, "int")
    assert (lab.gw_pin_dir / "tp_active_v1").exists()
    assert subprocess.run(["kill", "-0", str(sender_pid)]).returncode == 0, "the sender keeps probing"

    out = lab.run("gw", [sys.executable, "-m", "appliance.cli", "detach", "--config", str(config)]).stdout
    assert f"probe sender pid {sender_pid}" in out
    for dev in ("lnkA", "lnkB", "int"):
        assert "tp_" not in tc_filters(lab, dev)
    assert "u32" in tc_filters(lab, "int")
    link = lab.run("gw", ["ip", "-d", "link", "show", "lnkA"]).stdout
    assert "xdp" not in link
    assert not lab.gw_pin_dir.exists()
    again = lab.run("gw", [sys.executable, "-m", "appliance.cli", "detach", "--config", str(config)]).stdout
    assert "nothing to detach" in again
    lab.run("gw", ["tc", "qdisc", "del", "dev", "int", "clsact"])


def test_a_stopped_daemons_arbitration_still_takes_new_sessions(lab, tmp_path):
    """A feed's first packet, a session change and a resync run the packet
    again by tail call. The kernel empties a program array that no fd or
    pin holds, so with the daemon gone they were dropped: every session
    lost its first message until a daemon came back."""
    config = topology.write_config(lab, feeds=True)
    daemon = processes.DaemonProcess(lab, config, tmp_path / "daemon.jsonl")
    try:
        daemon.wait_for("ready", 60)
        daemon.stop(detach=False)
        plan = FeedPlan(messages=400, rate=20_000, session="STOPPED01", session_change_at=200,
                        next_session="STOPPED02", seed=7)
        r = feedrun.run_feed(lab, plan, tmp_path).result
        assert (r["delivered"], r["delivered_twice"], r["missing"]) == (r["sent"], 0, {}), r
    finally:
        cli(lab, "detach", "--config", str(config))


def test_a_restart_without_feeds_takes_the_previous_arbitration_off_the_lines(lab, tmp_path):
    """The previous daemon's arbitration programs stayed on the lines and
    went on arbitrating on the old config, with nothing of this one's to
    say so; now the new daemon detaches and unpins what it did not attach."""
    config = topology.write_config(lab, feeds=True)
    first = processes.DaemonProcess(lab, config, tmp_path / "first.jsonl")
    first.wait_for("ready", 60)
    first.stop(detach=False)
    assert (lab.gw_pin_dir / "prog_array_tp_arb_progs").exists()
    second = processes.DaemonProcess(lab, topology.write_config(lab), tmp_path / "second.jsonl")
    try:
        second.wait_for("ready", 60)
        removed = second.wait_for("detached-stale", 5)["removed"]
        assert len(removed) == 3 and sum(r.startswith("xdp program") for r in removed) == 2, removed
        for dev in ("lnkA", "lnkB"):
            assert "xdp" not in lab.run("gw", ["ip", "-d", "link", "show", dev]).stdout
        pins = {p.name for p in lab.gw_pin_dir.iterdir()}
        assert not {p for p in pins if p.startswith(("prog_xdp", "prog_array"))}, pins
        assert "tp_steer" in tc_filters(lab, "int") and "tp_hb_ingress" in tc_filters(lab, "lnkA")
    finally:
        second.stop()


def test_detach_is_refused_while_a_daemon_runs(lab, tmp_path):
    config = topology.write_config(lab)
    daemon = processes.DaemonProcess(lab, config, tmp_path / "daemon.jsonl")
    try:
        daemon.wait_for("ready", 60)
        done = lab.run("gw", [sys.executable, "-m", "appliance.cli", "detach", "--config", str(config)],
                       check=False)
        assert done.returncode == 2 and "already runs this gateway" in done.stderr
        assert "tp_steer" in tc_filters(lab, "int")
    finally:
        daemon.stop()


def test_a_restart_reuses_the_pinned_maps(lab, tmp_path):
    config = topology.write_config(lab)
    first = processes.DaemonProcess(lab, config, tmp_path / "first.jsonl")
    first.wait_for("ready", 60)
    first.signal(signal.SIGTERM)
    first.proc.wait(timeout=10)
    fd = bpfsys.obj_get(str(lab.gw_pin_dir / "tp_active_v1"))
    try:
        map_id = bpfsys.map_info(fd)[1]
    finally:
        os.close(fd)
    second = processes.DaemonProcess(lab, config, tmp_path / "second.jsonl")
    try:
        second.wait_for("ready", 60)
        replaced = second.wait_for("sender-replaced", 1)
        assert replaced["previous_pid"] == first.wait_for("attached", 1)["sender_pid"]
        fd = bpfsys.obj_get(str(lab.gw_pin_dir / "tp_active_v1"))
        try:
            assert bpfsys.map_info(fd)[1] == map_id
        finally:
            os.close(fd)
    finally:
        second.stop()


def cli(lab, *args, check=True):
    return lab.run("gw", [sys.executable, "-m", "appliance.cli", *args], check=check)


def active_link(lab, class_id):
    fd = bpfsys.obj_get(str(lab.gw_pin_dir / "tp_active_v1"))
    try:
        where = ctypes.c_uint64()
        bpfsys.map_lookup(fd, ctypes.c_uint32(class_id), where)
        return "AB"[where.value]
    finally:
        os.close(fd)


def test_operator_commands_reach_the_maps_and_status_and_metrics_show_them(lab, tmp_path):
    config = topology.write_config(lab)
    daemon = processes.DaemonProcess(lab, config, tmp_path / "daemon.jsonl")
    try:
        daemon.wait_for("ready", 60)
        assert active_link(lab, 0) == "A"                   # orders
        assert cli(lab, "drain", "A").returncode == 0
        assert active_link(lab, 0) == "B"
        status = json.loads(cli(lab, "status", "--json").stdout)
        assert status["links"]["A"]["state"] == "drained" and status["classes"]["orders"]["link"] == "B"
        refused = cli(lab, "force", "orders", "A", check=False)
        assert refused.returncode == 1 and "drained" in refused.stderr
        assert cli(lab, "undrain", "A").returncode == 0
        assert cli(lab, "force", "marketdata", "A").returncode == 0
        assert active_link(lab, 1) == "A"
        assert cli(lab, "release", "marketdata").returncode == 0
        audit = [e for e in daemon.events() if e.get("event") == "control"]
        assert [e["cmd"] for e in audit] == ["drain", "force", "undrain", "force", "release"]
        assert all(e["peer_uid"] == 0 for e in audit)
        metrics = lab.run("gw", [sys.executable, "-c", "import urllib.request; print(urllib.request.urlopen("
                                 "'http://127.0.0.1:9464/metrics', timeout=5).read().decode())"]).stdout
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(metrics) for s in family.samples}
        assert samples[("twinpath_link_up", (("link", "A"),))] == 1, metrics
        assert samples[("twinpath_failovers_total", (("cause", "drained"), ("class", "orders")))] == 1, metrics
        assert samples[("twinpath_link_rtt_seconds_count", (("link", "B"),))] > 0, metrics
    finally:
        daemon.stop()


def test_an_unreachable_daemon_is_exit_status_2(lab):
    done = cli(lab, "status", check=False)
    assert done.returncode == 2 and "no twinpath daemon is listening" in done.stderr
