"""The decision core: its room rule (no edge, no I/O), its link and feed
decisions, and traces that replay to the same decisions."""
import ast
import json
import random
from pathlib import Path

import pytest

from appliance.core.decision import Core, Start, replay
from appliance.core.feeds import DELIVERY_COUNTERS, FeedParams
from appliance.core.links import LinkParams
from appliance.edge import trace

CORE = Path(__file__).resolve().parents[2] / "appliance" / "core"
# What a pure core may import: the standard library's data modules, pydantic
# (config validation), its own modules and the one layout definition.
ALLOWED = {"__future__", "collections", "dataclasses", "ipaddress", "re", "tomllib", "typing", "pydantic",
           "appliance.core", "appliance.layout"}


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add(node.module if node.module != "appliance" else f"appliance.{node.names[0].name}")
    return out


@pytest.mark.parametrize("module", sorted(p.name for p in CORE.glob("*.py")))
def test_core_imports_no_edge_and_nothing_that_does_io(module):
    bad = {m for m in imports(CORE / module)
           if not any(m == a or m.startswith(a + ".") for a in ALLOWED) or m.startswith("appliance.edge")}
    assert not bad, f"appliance/core/{module} imports {sorted(bad)}"


def test_the_import_rule_sees_an_edge_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from appliance.edge import netlink\nimport time\nfrom appliance import daemon\n")
    assert imports(bad) == {"appliance.edge", "time", "appliance.daemon"}


MS = 1_000_000
LINKS = LinkParams(names=["A", "B"], gateways=["198.18.10.2", "198.18.11.2"], class_names=["orders"],
                   class_links=[[0, 1]], dead_ns=3 * MS, holddown_ns=300 * MS, ready_timeout_ns=5000 * MS)
FEEDS = FeedParams(names=["itch"], dsts=["198.18.1.1"], grace_ns=50 * MS, silence_ns=200 * MS, behind_seqs=100)
T0 = 1_000 * MS


def start(**kw) -> Start:
    base = dict(links=LINKS, feeds=FEEDS, carrier=[True, True], nexthop=["02:00:00:00:0a:02", "02:00:00:00:0b:02"],
                receivers=[None], started_ns=T0)
    return Start(**{**base, **kw})


def fresh(ts, *links_fresh):
    """A health reading: each link answered just now (True) or long ago."""
    return [[ts if f else 1, T0] for f in links_fresh]


def events(decisions):
    return [(d.event, d.fields) for d in decisions]


def test_carrier_loss_writes_the_link_once_and_times_the_reflex_from_it():
    core = Core(start())
    down = core.consume("carrier", T0 + 10 * MS, {"link": 0, "up": False})
    assert events(down) == [("carrier", {"link": "A", "up": False})]
    assert down[0].effect == ("link", 0, False, "02:00:00:00:0a:02")
    assert core.consume("carrier", T0 + 11 * MS, {"link": 0, "up": False}) == []
    moved = core.consume("reflex", T0 + 10 * MS + 42_000, {"class_id": 0, "from_link": 0, "to_link": 1,
                                                        "cause": "carrier", "silence_ns": 5 * MS})
    assert moved[0].fields["detect_us"] == 42.0 and moved[0].effect is None


def test_a_heartbeat_reflex_reports_the_silence_the_data_path_saw():
    moved = Core(start()).consume("reflex", T0, {"class_id": 0, "from_link": 0, "to_link": 1,
                                                 "cause": "heartbeat", "silence_ns": 3_100_000})
    assert events(moved) == [("failover", {"class": "orders", "from": "A", "to": "B", "cause": "heartbeat",
                                           "detect_us": 3100.0})]


def test_an_unresolved_next_hop_keeps_its_mac_and_another_neighbour_is_ignored():
    core = Core(start())
    kept = core.consume("neighbour", T0, {"link": 0, "ip": "198.18.10.2", "mac": None})
    assert events(kept) == [("nexthop-unresolved", {"link": "A", "kept": "02:00:00:00:0a:02"})]
    assert kept[0].effect is None
    assert core.consume("neighbour", T0, {"link": 0, "ip": "198.18.10.99", "mac": "02:00:00:00:00:99"}) == []
    moved = core.consume("neighbour", T0, {"link": 0, "ip": "198.18.10.2", "mac": "02:00:00:00:0a:99"})
    assert moved[0].effect == ("link", 0, True, "02:00:00:00:0a:99")


def test_ready_once_every_link_answers_or_at_the_timeout():
    core = Core(start())
    assert core.consume("health", T0 + MS, {"links": fresh(T0 + MS, True, False), "active": [0]}) == []
    ready = core.consume("health", T0 + 2 * MS, {"links": fresh(T0 + 2 * MS, True, True), "active": [0]})
    assert events(ready) == [("ready", {"fresh": {"A": True, "B": True}})] and ready[0].effect == ("steer",)
    assert core.consume("health", T0 + 3 * MS, {"links": fresh(T0 + 3 * MS, True, True), "active": [0]}) == []
    late = Core(start()).consume("health", T0 + 5001 * MS, {"links": fresh(T0 + 5001 * MS, True, False),
                                                            "active": [0]})
    assert events(late) == [("ready", {"fresh": {"A": True, "B": False}})]


def test_failback_only_after_the_holddown():
    core = Core(start())
    early = T0 + 299 * MS
    assert [d.event for d in core.consume("health", early, {"links": fresh(early, True, True), "active": [1]})] \
        == ["ready"]
    due = T0 + 300 * MS
    back = core.consume("health", due, {"links": fresh(due, True, True), "active": [1]})
    assert back[0].event == "failover" and back[0].fields["cause"] == "failback"
    assert back[0].effect == ("active", 0, 0)


def test_a_new_receiver_mac_is_written_and_a_vanished_one_kept():
    core = Core(start())
    got = core.consume("receiver", T0, {"ip": "198.18.1.1", "mac": "02:00:00:00:01:01"})
    assert events(got) == [("feed-receiver", {"feed": "itch", "ip": "198.18.1.1", "mac": "02:00:00:00:01:01"})]
    assert got[0].effect == ("feed", 0, "02:00:00:00:01:01")
    assert core.consume("receiver", T0, {"ip": "198.18.1.1", "mac": None}) == []
    assert core.consume("receiver", T0, {"ip": "198.18.1.2", "mac": "02:00:00:00:01:02"}) == []


def lines(ts, last_a, last_b, won=0, refused=0):
    delivery = {name: 0 for name in DELIVERY_COUNTERS}
    return {"feed": 0, "samples": [[last_a, 10], [last_b, 10]],
            "delivery": [{**delivery, "packets": won + refused, "won": won, "stale": refused}, delivery]}


def test_a_gap_neither_line_fills_is_lost_after_its_grace_window():
    core = Core(start())
    gap = core.consume("arb-event", T0, {"feed": 0, "line": 0, "kind": "gap", "first": 5, "last": 7})
    assert events(gap) == [("gap", {"feed": "itch", "line": "A", "first": 5, "last": 7})]
    core.consume("arb-event", T0 + MS, {"feed": 0, "line": 1, "kind": "fill", "first": 6, "last": 6})
    assert [d.event for d in core.consume("feed-lines", T0 + 49 * MS, lines(T0 + 49 * MS, T0, T0))] == []
    lost = core.consume("feed-lines", T0 + 50 * MS, lines(T0 + 50 * MS, T0, T0))
    assert events(lost) == [("gap-lost", {"feed": "itch", "first": 5, "last": 7, "lost": [[5, 5], [7, 7]]})]
    assert core.feeds.totals[0] == {"gaps": 1, "filled": 0, "lost_seqs": 2}


def test_a_session_change_settles_every_open_gap_before_it_is_reported():
    core = Core(start())
    core.consume("arb-event", T0, {"feed": 0, "line": 0, "kind": "gap", "first": 5, "last": 5})
    new = core.consume("arb-event", T0 + MS, {"feed": 0, "line": 0, "kind": "session", "first": 1, "last": 1,
                                              "session": "NEXT"})
    assert [d.event for d in new] == ["gap-lost", "session"] and new[1].fields["session"] == "NEXT"


def test_a_feed_that_refuses_everything_for_a_window_stalls_and_resumes():
    core = Core(start())
    assert core.consume("feed-lines", T0, lines(T0, T0, T0)) == []
    stalled = core.consume("feed-lines", T0 + 200 * MS, lines(T0 + 200 * MS, T0 + 199 * MS, T0, refused=20))
    assert [d.event for d in stalled if d.event.startswith("feed-")] == ["feed-stalled"]
    resumed = core.consume("feed-lines", T0 + 400 * MS, lines(T0 + 400 * MS, T0 + 399 * MS, T0, won=5, refused=20))
    assert [d.event for d in resumed if d.event.startswith("feed-")] == ["feed-resumed"]


def test_a_reading_without_delivery_counters_leaves_the_stall_watch_alone():
    core = Core(start())
    core.consume("feed-lines", T0, lines(T0, T0, T0))
    assert core.feeds.stall_due(0, T0 + 200 * MS)
    quiet = {**lines(T0 + 200 * MS, T0 + 199 * MS, T0), "delivery": None}
    assert [d.event for d in core.consume("feed-lines", T0 + 200 * MS, quiet) if d.event.startswith("feed-")] == []
    stalled = core.consume("feed-lines", T0 + 201 * MS, lines(T0 + 201 * MS, T0 + 199 * MS, T0, refused=20))
    assert [d.event for d in stalled if d.event.startswith("feed-")] == ["feed-stalled"]


def random_inputs(seed: int, n: int = 3000):
    rng = random.Random(seed)
    ts = T0
    for _ in range(n):
        ts += rng.randrange(1, 3 * MS)
        kind = rng.choice(["carrier", "neighbour", "reflex", "health", "health", "receiver", "arb-event",
                           "feed-lines"])
        link = rng.randrange(2)
        if kind == "carrier":
            yield kind, ts, {"link": link, "up": rng.random() < 0.7}
        elif kind == "neighbour":
            yield kind, ts, {"link": link, "ip": LINKS.gateways[link],
                             "mac": rng.choice([None, "02:00:00:00:0a:02", "02:00:00:00:0a:03"])}
        elif kind == "reflex":
            yield kind, ts, {"class_id": 0, "from_link": link, "to_link": 1 - link,
                             "cause": rng.choice(["heartbeat", "carrier"]), "silence_ns": rng.randrange(10 * MS)}
        elif kind == "health":
            yield kind, ts, {"links": [[ts - rng.randrange(5 * MS), ts - rng.randrange(600 * MS)] for _ in range(2)],
                             "active": [rng.randrange(2)]}
        elif kind == "receiver":
            yield kind, ts, {"ip": "198.18.1.1", "mac": rng.choice([None, "02:00:00:00:01:01", "02:00:00:00:01:02"])}
        elif kind == "arb-event":
            first = rng.randrange(1000)
            yield kind, ts, {"feed": 0, "line": link, "kind": rng.choice(["gap", "fill", "session", "resync"]),
                             "first": first, "last": first + rng.randrange(5), "session": "S"}
        else:
            yield kind, ts, lines(ts, ts - rng.randrange(400 * MS), ts - rng.randrange(400 * MS),
                                  won=rng.randrange(3), refused=rng.randrange(3))


def test_a_recorded_trace_replays_to_the_decisions_made_live(tmp_path):
    path = tmp_path / "trace.jsonl"
    recorder = trace.Recorder(path, start())
    core = Core(start())
    live = []
    for kind, ts, fields in random_inputs(seed=7):
        recorder.input(kind, ts, fields)
        live += core.consume(kind, ts, fields)
    recorder.close()
    again = list(replay(*trace.read(path)))
    assert len(live) > 100 and {d.event for d in live} >= {"carrier", "failover", "gap-lost", "ready"}
    assert [d.record() for d in again] == [d.record() for d in live]


def test_a_trace_cut_off_mid_line_replays_up_to_the_cut(tmp_path):
    path = tmp_path / "trace.jsonl"
    recorder = trace.Recorder(path, start())
    recorder.input("carrier", T0, {"link": 0, "up": False})
    recorder.close()
    with open(path, "a") as f:
        f.write('{"kind": "carrier", "ts_ns": 12')
    assert [d.event for d in replay(*trace.read(path))] == ["carrier"]


@pytest.mark.parametrize("text,error", [
    ("", "not a twinpath trace"),
    ('{"twinpath_trace": 99, "start": {}}\n', "not a version 1 twinpath trace"),
    ('{"twinpath_trace": 1}\n', "not a twinpath trace start line"),
])
def test_a_file_that_is_not_a_trace_is_refused_with_the_reason(tmp_path, text, error):
    path = tmp_path / "x.jsonl"
    path.write_text(text)
    with pytest.raises(trace.TraceError, match=error):
        trace.read(path)


def test_a_bad_input_line_names_its_line(tmp_path):
    path = tmp_path / "trace.jsonl"
    recorder = trace.Recorder(path, start())
    recorder.close()
    with open(path, "a") as f:
        f.write("not json\n")
    _, inputs = trace.read(path)
    with pytest.raises(trace.TraceError, match=r":2: not a trace input"):
        list(inputs)


def test_replay_cli_prints_the_decisions_and_refuses_a_bad_file(tmp_path, capsys):
    from appliance.cli import main
    path = tmp_path / "trace.jsonl"
    recorder = trace.Recorder(path, start())
    recorder.input("carrier", T0 + 5, {"link": 1, "up": False})
    recorder.close()
    assert main(["replay", str(path)]) == 0
    assert [json.loads(l) for l in capsys.readouterr().out.splitlines()] == [
        {"mono_ns": T0 + 5, "event": "carrier", "link": "B", "up": False}]
    (tmp_path / "bad").write_text("{}\n")
    assert main(["replay", str(tmp_path / "bad")]) == 2
    assert "not a version 1" in capsys.readouterr().err
