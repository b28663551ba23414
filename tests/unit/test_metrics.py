"""The Prometheus endpoint: a Snapshot scraped as the text format, parsed back
with prometheus_client's own parser; and the HTTP server's life cycle."""
import logging
import socket
import urllib.request
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from appliance import layout
from appliance.core.config import ConfigError
from appliance.edge.metrics import ARB_COUNTERS, ClassMetrics, Collector, LinkMetrics, MetricsServer, Snapshot


def rtt_counts(by_bucket: dict[int, int]) -> list[int]:
    return [by_bucket.get(b, 0) for b in range(layout.HIST_BUCKETS)]


def snapshot() -> Snapshot:
    return Snapshot(
        up_since_s=1_700_000_000.5,
        links={"fiber": LinkMetrics(rtt_counts({0: 1, 9: 5, 20: 3, 63: 2}), probes_sent=100, replies=98,
                                    send_errors=1, fresh=True, carrier=True, drained=False),
               "radio": LinkMetrics(rtt_counts({}), probes_sent=100, replies=0, send_errors=0,
                                    fresh=False, carrier=False, drained=True)},
        classes={"orders": ClassMetrics(link="fiber", links=["fiber", "radio"],
                                        packets={"fiber": 10, "radio": 2}, bytes={"fiber": 1000, "radio": 200},
                                        failovers={"blackhole": 2, "operator": 1})},
        sender_periods=1000, sender_late_periods=3, sender_skipped_periods=1, sender_restarts=2,
        readings=500, quiet_readings=450, kernel_wakes=7,
        datapath_stats={name: i for i, name in enumerate(layout.STATS)},
        feeds={"itch": {line: {c: i + (10 if line == "B" else 0) for i, c in enumerate(ARB_COUNTERS)}
                        for line in "AB"}},
        arbitration_passed={line: {r: 1 for r in layout.ARB_STATS} for line in "AB"})


def scrape(snapshot_fn) -> dict:
    registry = CollectorRegistry()
    registry.register(Collector(snapshot_fn))
    return {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}


def values(families: dict, name: str) -> dict:
    """One family's values by their labels, as sorted (name, value) pairs;
    name as scraped (a counter's without _total)."""
    return {tuple(sorted(s.labels.items())): s.value for s in families[name].samples}


def test_rtt_histogram_buckets_are_the_kernels_upper_bounds_cumulative_with_inf_the_total():
    fams = scrape(snapshot)
    rtt = fams["twinpath_link_rtt_seconds"]
    assert rtt.type == "histogram"
    buckets = [(s.labels["le"], s.value) for s in rtt.samples
               if s.name.endswith("_bucket") and s.labels["link"] == "fiber"]
    finite = [layout.hist_bucket_bounds_us(b)[1] for b in range(layout.HIST_BUCKETS - 1)]
    assert [float(le) for le, _ in buckets[:-1]] == pytest.approx([us / 1e6 for us in finite])
    counts = [n for _, n in buckets]
    assert counts == sorted(counts)  # cumulative
    assert counts[0] == 1 and counts[8] == 1 and counts[9] == 6 and counts[20] == 9 and counts[62] == 9
    assert buckets[-1] == ("+Inf", 11)  # the open-ended last bucket's 2 only here
    assert [s.value for s in rtt.samples if s.name == "twinpath_link_rtt_seconds_count"] == [11, 0]
    # _sum from midpoints, the open-ended bucket at its lower bound.
    mid = [sum(layout.hist_bucket_bounds_us(b)) / 2 for b in (0, 9, 20)]
    expected_us = mid[0] + 5 * mid[1] + 3 * mid[2] + 2 * layout.hist_bucket_bounds_us(63)[0]
    sums = {s.labels["link"]: s.value for s in rtt.samples if s.name == "twinpath_link_rtt_seconds_sum"}
    assert sums == {"fiber": pytest.approx(expected_us / 1e6), "radio": 0}


def test_names_follow_prometheus_conventions():
    fams = scrape(snapshot)
    for f in fams.values():
        assert f.name.startswith("twinpath_")
        if f.type == "counter":
            assert all(s.name == f.name + "_total" for s in f.samples), f.name
        else:
            assert not f.name.endswith("_total"), f.name
    # Durations and times in seconds, never another unit.
    assert fams["twinpath_link_rtt_seconds"].type == "histogram"
    assert fams["twinpath_daemon_start_time_seconds"].type == "gauge"
    assert not [name for name in fams if name.endswith(("_ns", "_us", "_ms", "_microseconds", "_milliseconds"))]


def test_every_snapshot_value_is_exposed_with_its_labels():
    fams = scrape(snapshot)
    fiber, radio = (("link", "fiber"),), (("link", "radio"),)
    for name, on_fiber, on_radio in [("heartbeat_probes_sent", 100, 100), ("heartbeat_replies", 98, 0),
                                     ("heartbeat_send_errors", 1, 0), ("link_up", 1, 0), ("link_carrier", 1, 0),
                                     ("link_drained", 0, 1)]:
        assert values(fams, f"twinpath_{name}") == {fiber: on_fiber, radio: on_radio}, name
    for name, value in [("periods", 1000), ("late_periods", 3), ("skipped_periods", 1), ("restarts", 2)]:
        assert values(fams, f"twinpath_heartbeat_sender_{name}") == {(): value}
    orders = ("class", "orders")
    assert values(fams, "twinpath_class_packets") == {(orders, *fiber): 10, (orders, *radio): 2}
    assert values(fams, "twinpath_class_bytes") == {(orders, *fiber): 1000, (orders, *radio): 200}
    assert values(fams, "twinpath_class_active_link") == {(orders, *fiber): 1, (orders, *radio): 0}
    assert values(fams, "twinpath_failovers") == {(("cause", "blackhole"), orders): 2,
                                                  (("cause", "operator"), orders): 1}
    assert values(fams, "twinpath_datapath_packets") == {(("stat", name),): i for i, name in enumerate(layout.STATS)}
    for i, counter in enumerate(ARB_COUNTERS):
        assert values(fams, f"twinpath_arbitration_{counter}") == {
            (("feed", "itch"), ("line", "A")): i, (("feed", "itch"), ("line", "B")): i + 10}
    assert values(fams, "twinpath_arbitration_passed") == {
        (("line", line), ("reason", r)): 1 for line in "AB" for r in layout.ARB_STATS}
    assert values(fams, "twinpath_daemon_start_time_seconds") == {(): 1_700_000_000.5}
    assert values(fams, "twinpath_scrape_errors") == {(): 0}


def test_arbitration_counters_are_every_scalar_of_line_stats():
    assert ARB_COUNTERS == [name for name, _ in layout.LineStats._fields_ if not name.endswith("_hist")]


def test_no_feeds_no_arbitration_families():
    fams = scrape(lambda: replace(snapshot(), feeds={}, arbitration_passed={}))
    assert not [name for name in fams if name.startswith("twinpath_arbitration_")]


def test_a_failing_snapshot_leaves_the_scrape_answering_and_counts(caplog):
    registry = CollectorRegistry()
    outcomes = [RuntimeError("map gone"), snapshot(),
                replace(snapshot(), feeds={"itch": {"A": {}}})]  # its counters missing: fails rendering

    def flaky() -> Snapshot:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    registry.register(Collector(flaky))
    with caplog.at_level(logging.ERROR, logger="appliance.edge.metrics"):
        first = {f.name for f in text_string_to_metric_families(generate_latest(registry).decode())}
        second = text_string_to_metric_families(generate_latest(registry).decode())
        third = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert first == {"twinpath_scrape_errors"}
    assert len({f.name for f in second}) > 10
    assert set(third) == {"twinpath_scrape_errors"}  # never half a snapshot
    assert third["twinpath_scrape_errors"].samples[0].value == 2
    assert [r.exc_info[0] for r in caplog.records] == [RuntimeError, KeyError]


def test_server_answers_on_loopback_and_stop_frees_the_port():
    with MetricsServer(0, snapshot) as server:
        port = server.port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        assert reply.status == 200
        assert "twinpath_link_rtt_seconds_bucket" in text
        assert 'twinpath_failovers_total{cause="blackhole",class="orders"} 2.0' in text
        assert server._server.server_address[0] == "127.0.0.1"  # loopback only
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))  # free again: a restarted daemon can bind it
    with MetricsServer(port, snapshot) as again:
        assert again.port == port


def test_port_in_use_names_the_port_and_the_config_key():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MetricsServer(port, snapshot)
        with pytest.raises(ConfigError, match=rf"metrics\.port: .*127\.0\.0\.1:{port}: Address already in use"):
            server.start()
        server.stop()  # harmless on a server that never started


def test_the_pair_is_exposed_only_on_a_pair_member():
    from appliance.edge.metrics import PairMetrics
    assert not [name for name in scrape(snapshot) if name.startswith("twinpath_pair_")]
    pair = PairMetrics(role="active", token=42, witness_reachable=False,
                       peer_paths={"peer-lan": "fresh", "peer-xl": "unknown"}, fenced_packets=7,
                       role_changes={"peer-dead": 2, "vacant": 1})
    fams = scrape(lambda: replace(snapshot(), pair=pair))
    assert values(fams, "twinpath_pair_role") == {(("role", "active"),): 1, (("role", "standby"),): 0,
                                                  (("role", "suspended"),): 0}
    assert values(fams, "twinpath_pair_peer_path_up") == {(("link", "peer-lan"),): 1, (("link", "peer-xl"),): 0}
    assert values(fams, "twinpath_pair_role_changes") == {(("cause", "peer-dead"),): 2, (("cause", "vacant"),): 1}
    assert values(fams, "twinpath_pair_token") == {(): 42}
    assert values(fams, "twinpath_pair_witness_up") == {(): 0}
    assert values(fams, "twinpath_pair_fenced_packets") == {(): 7}


def test_the_daemons_reading_pace_is_counted():
    fams = scrape(snapshot)
    assert [values(fams, f"twinpath_daemon_{name}")[()] for name in ("readings", "quiet_readings", "kernel_wakes")] \
        == [500, 450, 7]
