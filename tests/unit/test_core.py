"""The decision core: its room rule (no edge, no I/O), its link and feed
decisions, and traces that replay to the same decisions."""
import ast
import json
import random
from pathlib import Path

import pytest

from appliance.core.damping import DampingParams
from appliance.core.decision import Core, Start, replay
from appliance.core.detect import DetectParams, Window
from appliance.core.feeds import DELIVERY_COUNTERS, FeedParams
from appliance.core.links import LinkParams
from appliance.core.policy import LOWEST_LATENCY, ClassPolicy, Prediction
from appliance.edge import trace

CORE = Path(__file__).resolve().parents[2] / "appliance" / "core"
# What a pure core may import: the standard library's data and arithmetic
# modules, pydantic (config validation), its own modules and the one layout
# definition.
ALLOWED = {"__future__", "collections", "dataclasses", "ipaddress", "math", "re", "tomllib", "typing", "pydantic",
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
    [(event, fields)] = events(moved)
    assert event == "failover" and set(fields["evidence"]) == {"A", "B"}
    assert {k: v for k, v in fields.items() if k != "evidence"} == {
        "class": "orders", "from": "A", "to": "B", "cause": "heartbeat", "detect_us": 3100.0}


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


# -- gray failures, damping, per-class policy and operator inputs ----------------
TICK = 5 * MS
RICH_LINKS = LinkParams(names=["A", "B"], gateways=LINKS.gateways, class_names=["orders", "md"],
                        class_links=[[0, 1], [1, 0]], dead_ns=3 * MS, holddown_ns=300 * MS,
                        ready_timeout_ns=5000 * MS,
                        class_policies=[ClassPolicy(), ClassPolicy(policy=LOWEST_LATENCY, hysteresis_ns=50_000,
                                                                   confirm=3, min_dwell_ns=100 * MS)],
                        detection=DetectParams(clear=20), prediction=Prediction(enabled=True, threshold=0.8))


def win(p50_us=30, answered=5, lost=0, jitter_us=5, gap=0) -> Window:
    rtt = p50_us * 1000
    return Window(answered + lost, answered, lost, rtt, rtt, rtt, rtt, jitter_us * 1000, gap)


BAD = win(3000, jitter_us=1000)   # rtt and jitter both trip: a quorum


class Clock:
    """Health readings TICK apart, every link fresh since T0 unless told."""

    def __init__(self, core, ts=T0):
        self.core, self.ts = core, ts

    def health(self, active, windows=None, late_ns=0, fresh_links=None, step=TICK):
        self.ts += step
        fields = {"links": fresh(self.ts, *(fresh_links or [True] * len(self.core.links.p.names))), "active": active}
        if windows is not None:
            fields |= {"windows": windows, "sender_late_ns": late_ns}
        return self.core.consume("health", self.ts, fields)

    def readings(self, n, active, windows, **kw):
        return [d for _ in range(n) for d in self.health(active, windows, **kw)]

    def consume(self, kind, fields, step=MS):
        self.ts += step
        return self.core.consume(kind, self.ts, fields)


def warmed(links=LINKS, active=(0,), ts=T0 + 400 * MS):
    """A core past readiness and the hold-down, its links' baselines learned."""
    clock = Clock(Core(start(links=links)), ts)
    clock.readings(20, list(active), [win(), win()])
    return clock


def test_a_gray_current_link_moves_its_class_with_both_links_evidence():
    clock = warmed()
    out = clock.readings(4, [0], [BAD, win()])
    assert [d.event for d in out] == ["gray", "failover"]
    assert out[0].fields["link"] == "A" and out[0].fields["evidence"]["gray"]
    moved = out[1]
    assert moved.effect == ("active", 0, 1)
    assert {k: moved.fields[k] for k in ("class", "from", "to", "cause")} == {"class": "orders", "from": "A",
                                                                             "to": "B", "cause": "gray"}
    a, b = moved.fields["evidence"]["A"], moved.fields["evidence"]["B"]
    assert a["rtt"] == {"value_us": 3000.0, "threshold_us": 530.0, "tripped": True} and a["jitter"]["tripped"]
    assert b["rtt"] == {"value_us": 30.0, "threshold_us": 530.0, "tripped": False} and not b["gray"]
    assert a["baseline_us"] == b["baseline_us"] == 30.0 and a["penalty"] == 1000


def test_a_gray_link_is_no_failback_target_until_cleared():
    clock = warmed(LinkParams(**{**LINKS.__dict__, "detection": DetectParams(clear=10)}))
    clock.readings(4, [0], [BAD, win()])
    assert clock.readings(9, [1], [win(), win()]) == []
    cleared = clock.readings(1, [1], [win(), win()])
    assert [d.event for d in cleared] == ["gray-cleared", "failover"] and cleared[1].fields["cause"] == "failback"


def test_links_degraded_together_move_no_class_when_one_clears_first():
    # The bench's capacity run: gw's receive core saturated, both links gray
    # at one reading; B cleared a few readings before A, and the class on A
    # moved to B, then back. Nothing moved now: A trips nothing B does not.
    clock = warmed(LinkParams(**{**LINKS.__dict__, "detection": DetectParams(clear=10)}))
    both = clock.readings(4, [0], [BAD, BAD])
    assert [(d.event, d.fields["link"]) for d in both] == [("gray", "A"), ("gray", "B")]
    clock.readings(2, [0], [BAD, win()])
    out = clock.readings(30, [0], [win(), win()])
    assert [(d.event, d.fields.get("link")) for d in out] == [("gray-cleared", "B"), ("gray-held", "A"),
                                                              ("gray-cleared", "A")]
    held = out[1].fields
    assert held["class"] == "orders" and held["standbys"] == ["B"]
    assert held["evidence"]["A"]["gray"] and not held["evidence"]["A"]["rtt"]["tripped"]


def test_a_gray_link_still_failing_is_left_once_its_standby_clears():
    clock = warmed(LinkParams(**{**LINKS.__dict__, "detection": DetectParams(clear=10)}))
    clock.readings(4, [0], [BAD, BAD])
    out = clock.readings(10, [0], [BAD, win()])
    assert [(d.event, d.fields.get("link"), d.fields.get("cause")) for d in out] == [
        ("gray-cleared", "B", None), ("failover", None, "gray")]


def test_one_tripped_detector_moves_no_traffic():
    clock = warmed()
    assert clock.readings(100, [0], [win(3000), win()]) == []


def test_a_late_sender_holds_every_verdict_and_logs_one_hold():
    clock = warmed()
    first = clock.health([0], [BAD, win()], late_ns=50 * MS)
    assert [(d.event, d.fields) for d in first] == [("hold", {"sender_late_ms": 50.0, "reading_gap_ms": 5.0,
                                                              "held_ms": 50.0, "until_ns": clock.ts + 50 * MS})]
    # bad windows for the rest of the stall, which goes on a while: no verdict, no second hold
    assert clock.readings(8, [0], [BAD, win()], late_ns=20 * MS) == []
    assert clock.readings(3, [0], [BAD, win()]) == []      # held until 20 ms after the last late reading
    assert [d.event for d in clock.readings(4, [0], [BAD, win()])] == ["gray", "failover"]


def test_a_late_reading_alone_holds_nothing():
    # Windows come from the kernel's ring by sequence: the daemon reading
    # late changes none of them.
    clock = warmed()
    assert "hold" not in [d.event for d in clock.health([0], [BAD, win()], step=40 * MS)]


def test_a_trace_without_windows_detects_nothing_and_holds_nothing():
    clock = warmed()
    assert clock.readings(10, [0], None, step=50 * MS) == []


def reflex(clock, from_link=0, to_link=1, class_id=0):
    return clock.consume("reflex", {"class_id": class_id, "from_link": from_link, "to_link": to_link,
                                    "cause": "heartbeat", "silence_ns": 3 * MS})


def test_a_reflex_counts_a_flap_of_the_link_it_left_once_per_failure():
    clock = warmed()
    reflex(clock)
    assert clock.core.links.damping[0].merit == 1000
    clock.consume("carrier", {"link": 0, "up": False})     # the same failure, seen by netlink too
    reflex(clock, class_id=0)
    assert clock.core.links.damping[0].merit == 1000


def test_a_link_that_keeps_failing_is_damped_and_no_failback_target_until_undamped():
    clock = warmed()
    for _ in range(2):
        assert [d.event for d in reflex(clock)] == ["failover"]
        # A answers again (fresh since T0, past the hold-down): orders fails back
        assert [d.fields["cause"] for d in clock.health([1])] == ["failback"]
    out = reflex(clock)
    assert [d.event for d in out] == ["failover", "damped"]
    damped = out[1].fields
    assert damped["link"] == "A" and damped["penalty"] > 2000 and 25 < damped["for_s"] <= 30
    assert abs(damped["until_ns"] - clock.ts - damped["for_s"] * 1e9) < 1e8
    # A is fresh past the hold-down the whole time, yet orders stays on B
    assert clock.readings(10, [1], None, step=2000 * MS) == []
    back = clock.health([1], step=damped["until_ns"] - clock.ts)
    assert [d.event for d in back] == ["undamped", "failover"] and back[1].fields["cause"] == "failback"


def test_carrier_loss_is_a_flap_of_a_usable_link():
    clock = warmed()
    clock.consume("carrier", {"link": 1, "up": False})
    assert clock.core.links.damping[1].merit == 1000 and clock.core.links.damping[0].merit == 0


def test_force_moves_and_pins_a_class_and_release_frees_it():
    clock = warmed()
    forced = clock.consume("force", {"class_name": "orders", "link_name": "B"})
    assert [(d.event, d.fields.get("cause")) for d in forced] == [("forced", None), ("failover", "forced")]
    assert forced[1].effect == ("active", 0, 1) and "evidence" in forced[1].fields
    assert clock.readings(5, [1], [win(), win()]) == []       # no failback while pinned
    released = clock.consume("release", {"class_name": "orders"})
    assert events(released) == [("released", {"class": "orders", "link": "B"})]
    assert [d.fields["cause"] for d in clock.health([1], [win(), win()])] == ["failback"]


def test_drain_moves_every_class_off_a_link_until_undrain():
    clock = warmed()
    drained = clock.consume("drain", {"link_name": "A"})
    assert [d.event for d in drained] == ["drained", "failover"] and drained[1].fields["cause"] == "drained"
    assert drained[1].effect == ("active", 0, 1)
    assert clock.readings(5, [1], [win(), win()]) == []       # A is fresh, but drained: no failback
    assert events(clock.consume("undrain", {"link_name": "A"})) == [("undrained", {"link": "A"})]
    assert [d.fields["cause"] for d in clock.health([1], [win(), win()])] == ["failback"]


REFUSALS = [
    ("force", {"class_name": "ordrs", "link_name": "B"}, "unknown class 'ordrs'; classes are orders"),
    ("force", {"class_name": "orders", "link_name": "C"}, "unknown link 'C'; links are A, B"),
    ("force", {"class_name": "orders", "link_name": None}, "unknown link None"),
    ("release", {"class_name": "orders"}, "class orders is not forced"),
    ("drain", {"link_name": "Z"}, "unknown link 'Z'"),
    ("undrain", {"link_name": "A"}, "A is not drained"),
]


@pytest.mark.parametrize("kind,fields,reason", REFUSALS)
def test_bad_operator_input_is_refused_with_the_reason(kind, fields, reason):
    clock = warmed()
    [refused] = clock.consume(kind, fields)
    assert refused.event == "refused" and refused.effect is None
    assert refused.fields["input"] == kind and reason in refused.fields["reason"]


def test_operator_input_with_the_wrong_fields_is_refused_not_raised():
    clock = warmed()
    [refused] = clock.consume("force", {"class": "orders", "link_name": "B"})
    assert events([refused]) == [("refused", {"input": "force", "reason": "takes class_name, link_name; got class, "
                                                                          "link_name"})]
    [refused] = clock.consume("drain", {})
    assert refused.fields["reason"] == "takes link_name; got nothing"


def test_draining_or_forcing_what_would_strand_a_class_is_refused():
    clock = warmed()
    clock.health([0], fresh_links=[True, False])              # B is stale
    [refused] = clock.consume("drain", {"link_name": "A"})
    assert refused.fields["reason"] == "A is the last usable link of class orders"
    [refused] = clock.consume("force", {"class_name": "orders", "link_name": "B"})
    assert "B is not fresh now" in refused.fields["reason"]
    clock.health([0])
    clock.consume("force", {"class_name": "orders", "link_name": "B"})
    [refused] = clock.consume("drain", {"link_name": "B"})
    assert refused.fields["reason"] == "class orders is forced onto B: release it first"
    clock.health([1])
    clock.consume("release", {"class_name": "orders"})
    assert [d.event for d in clock.consume("drain", {"link_name": "B"})] == ["drained", "failover"]
    [refused] = clock.consume("force", {"class_name": "orders", "link_name": "B"})
    assert refused.fields["reason"] == "B is drained"


def test_operator_input_before_the_first_health_reading_is_refused():
    [refused] = Core(start()).consume("drain", T0, {"link_name": "A"})
    assert refused.fields["reason"] == "no health reading yet"


def test_a_prediction_is_ignored_unless_enabled():
    clock = warmed()
    assert clock.consume("predict", {"link": 0, "probability": 1.0}) == []
    assert clock.readings(5, [0], [win(40), win(30)]) == []


def test_an_enabled_prediction_moves_a_class_only_to_a_link_no_worse():
    clock = warmed(RICH_LINKS, active=(0, 1))
    assert clock.consume("predict", {"link": 0, "probability": 0.9}) == []
    assert clock.readings(5, [0, 1], [win(30), win(31)]) == []        # B is slower: stay
    out = clock.readings(1, [0, 1], [win(30), win(30)])
    assert [(d.fields["class"], d.fields["cause"]) for d in out] == [("orders", "predicted")]
    assert out[0].fields["probability"] == 0.9 and set(out[0].fields["evidence"]) == {"A", "B"}
    [refused] = clock.consume("predict", {"link": 0, "probability": 2})
    assert refused.event == "refused" and "within 0..1" in refused.fields["reason"]


def test_a_lowest_latency_class_moves_to_the_faster_link_past_the_margin():
    clock = warmed(RICH_LINKS, active=(0, 1))
    # md prefers B, but A is faster by 270 us: more than the 60 us margin, for 3 readings
    out = clock.readings(3, [0, 1], [win(30), win(300)])
    assert [(d.fields["class"], d.fields["cause"]) for d in out] == [("md", "lower-latency")]
    moved = out[0].fields
    assert (moved["rtt_from_us"], moved["rtt_to_us"], moved["margin_us"]) == (300.0, 30.0, 60.0)
    assert moved["evidence"]["A"]["rtt"]["value_us"] == 30.0
    assert clock.readings(10, [0, 0], [win(300), win(30)]) == []       # min_dwell: 100 ms
    assert [d.fields["cause"] for d in clock.readings(20, [0, 0], [win(300), win(30)])] == ["lower-latency"]


def test_start_round_trips_and_a_trace_from_before_the_new_settings_loads():
    rich = start(links=LinkParams(**{**RICH_LINKS.__dict__, "damping": DampingParams(half_life_ns=7 * 10**9)}))
    assert Start.from_json(json.loads(json.dumps(rich.to_json()))) == rich
    old = start().to_json()
    old["links"] = {k: old["links"][k] for k in ("names", "gateways", "class_names", "class_links", "dead_ns",
                                                 "holddown_ns", "ready_timeout_ns")}
    assert Start.from_json(old) == start()


class Colo:
    """A closed loop like the daemon's: health readings every TICK whose
    windows follow a script, link outages at random that the data path's
    reflex acts on, operator inputs (a script, and bad ones at random), and
    tp_active following the core's decisions. Phases of 2 s: normal (A
    30 us, B 40 us); A degraded (gray); A recovered and B slow (md is
    lowest-latency); A predicted to fail, B a little faster."""

    PHASE = 400
    OPERATOR = {4 * PHASE + 100: ("force", {"class_name": "orders", "link_name": "B"}),
                4 * PHASE + 300: ("release", {"class_name": "orders"}),
                8 * PHASE + 100: ("drain", {"link_name": "B"}),
                8 * PHASE + 300: ("undrain", {"link_name": "B"})}
    BAD = [("force", {"class_name": "x", "link_name": "A"}), ("drain", {"link_name": "C"}),
           ("release", {"class_name": "md"}), ("undrain", {"link_name": "A"})]

    def __init__(self, seed: int, recorder: trace.Recorder | None = None):
        self.rng = random.Random(seed)
        self.recorder = recorder
        self.core = Core(start(links=RICH_LINKS))
        self.active = [0, 1]
        self.inputs, self.decisions = [], []
        self.last_reply = [T0, T0]
        self.fresh_since = [T0, T0]
        self.down_until = [0, 0]

    def feed(self, kind, ts, fields):
        self.inputs.append((kind, ts, fields))
        if self.recorder:
            self.recorder.input(kind, ts, fields)
        for d in self.core.consume(kind, ts, fields):
            if d.effect and d.effect[0] == "active":
                self.active[d.effect[1]] = d.effect[2]
            self.decisions.append(d)

    def outage(self, ts, link):
        """The link goes quiet; after the dead interval the reflex moves its classes."""
        self.down_until[link] = ts + self.rng.randrange(20, 60) * MS
        for class_id, current in enumerate(self.active):
            if current == link and ts - self.last_reply[1 - link] < 3 * MS:
                self.active[class_id] = 1 - link
                self.feed("reflex", ts + 3 * MS, {"class_id": class_id, "from_link": link, "to_link": 1 - link,
                                                  "cause": "heartbeat", "silence_ns": 3 * MS})

    def run(self, readings: int):
        rng, ts = self.rng, T0
        for i in range(readings):
            phase = (i // self.PHASE) % 4
            if i % self.PHASE == 0:
                self.feed("predict", ts + MS, {"link": 0, "probability": 0.9 if phase == 3 else 0.0})
            if rng.random() < 0.0015:
                self.outage(ts + MS, rng.randrange(2))
            if i in self.OPERATOR:
                self.feed(self.OPERATOR[i][0], ts + MS, self.OPERATOR[i][1])
            elif rng.random() < 0.002:
                kind, fields = rng.choice(self.BAD)
                self.feed(kind, ts + MS, fields)
            ts += TICK
            for link in range(2):
                if ts >= self.down_until[link]:
                    if self.last_reply[link] < self.down_until[link]:   # back from an outage
                        self.fresh_since[link] = ts
                    self.last_reply[link] = ts
            a_us, b_us = {0: (30, 40), 1: (3000, 40), 2: (30, 300), 3: (40, 35)}[phase]
            windows = [win(a_us + rng.randrange(5), jitter_us=1000 if phase == 1 else 5),
                       win(b_us + rng.randrange(5))]
            self.feed("health", ts, {"links": [[self.last_reply[l], self.fresh_since[l]] for l in range(2)],
                                     "active": list(self.active), "windows": windows,
                                     "sender_late_ns": 30 * MS if rng.random() < 0.002 else 0})
        return self


def test_the_same_inputs_replay_to_the_same_decisions_through_a_trace(tmp_path):
    path = tmp_path / "trace.jsonl"
    recorder = trace.Recorder(path, start(links=RICH_LINKS))
    colo = Colo(seed=11, recorder=recorder).run(12 * Colo.PHASE)
    recorder.close()
    twice = [list(replay(*trace.read(path))) for _ in range(2)]
    decided = {d.event for d in colo.decisions}
    assert {"gray", "gray-cleared", "hold", "damped", "failover", "refused", "forced", "drained"} <= decided, decided
    assert [d.record() for d in twice[0]] == [d.record() for d in twice[1]] == [d.record() for d in colo.decisions]
    assert [d.effect for d in twice[0]] == [d.effect for d in colo.decisions]


def test_every_failover_carries_its_cause_and_evidence():
    moves = [d.fields for d in Colo(seed=3).run(12 * Colo.PHASE).decisions if d.event == "failover"]
    causes = {m["cause"] for m in moves}
    assert causes == {"heartbeat", "gray", "failback", "lower-latency", "predicted", "forced", "drained"}, causes
    for m in moves:
        assert set(m["evidence"]) == {m["from"], m["to"]}, m
        for link in m["evidence"].values():
            assert {"gray", "baseline_us", "rtt", "loss", "jitter", "penalty", "suppressed"} <= set(link)
        if m["cause"] in ("gray", "lower-latency"):
            for link in m["evidence"].values():
                for detector in ("rtt", "loss", "jitter"):
                    assert {"threshold", "tripped"} <= {k.removesuffix("_us") for k in link[detector]}, m


FEEDS_AB = FeedParams(**{**FEEDS.__dict__, "line_links": [0, 1]})   # line A on link A, line B on link B
SLOW = win(3000)   # rtt alone trips: no quorum


def feed_on_links() -> Clock:
    clock = Clock(Core(start(feeds=FEEDS_AB)), T0 + 400 * MS)
    clock.readings(20, [0], [win(), win()])
    return clock


def test_a_market_data_line_behind_on_a_link_joins_its_quorum():
    clock = feed_on_links()
    assert "gray" not in [d.event for d in clock.readings(6, [0], [SLOW, win()])]   # rtt alone: noise
    ts = clock.ts
    behind = clock.consume("feed-lines", {"feed": 0, "samples": [[ts, 10], [ts, 300]], "delivery": None})
    assert ("line-health", "A", "behind") in [(d.event, d.fields.get("line"), d.fields.get("status"))
                                              for d in behind]
    out = clock.readings(4, [0], [SLOW, win()])
    assert [d.event for d in out] == ["gray", "failover"]
    feed = out[0].fields["evidence"]["feed"]
    assert feed == {"lines": {"itch/A": "behind"}, "tripped": True}
    assert out[1].fields["cause"] == "gray" and out[1].fields["evidence"]["A"]["feed"]["tripped"]


def test_a_market_data_line_alone_declares_nothing_and_its_recovery_clears_the_signal():
    clock = feed_on_links()
    ts = clock.ts
    clock.consume("feed-lines", {"feed": 0, "samples": [[ts, 10], [ts, 300]], "delivery": None})
    assert "gray" not in [d.event for d in clock.readings(10, [0], [win(), win()])]
    ts = clock.ts
    clock.consume("feed-lines", {"feed": 0, "samples": [[ts, 300], [ts, 300]], "delivery": None})
    assert clock.core.links.detectors[0].feed_lines == {}


def test_without_line_links_a_feed_says_nothing_about_links():
    clock = warmed()
    ts = clock.ts
    clock.consume("feed-lines", {"feed": 0, "samples": [[ts, 10], [ts, 300]], "delivery": None})
    assert clock.core.links.detectors[0].feed_lines == {}


def reconfigure(core, ts, links=LINKS, feeds=FEEDS):
    return core.consume("reconfigure", ts, {"links": links.to_json(), "feeds": feeds.__dict__})


def test_a_reload_takes_a_new_holddown_from_its_input_on():
    core = Core(start())
    assert reconfigure(core, T0, LinkParams(**{**LINKS.__dict__, "holddown_ns": 600 * MS})) == []
    due = T0 + 300 * MS    # the old hold-down: no failback any more
    assert [d.event for d in core.consume("health", due, {"links": fresh(due, True, True), "active": [1]})] \
        == ["ready"]
    later = T0 + 600 * MS
    back = core.consume("health", later, {"links": fresh(later, True, True), "active": [1]})
    assert back[0].fields["cause"] == "failback"


def test_a_reload_that_drops_the_current_link_of_a_class_moves_it():
    core = Core(start())
    core.consume("health", T0 + MS, {"links": fresh(T0 + MS, True, True), "active": [0]})
    moved = reconfigure(core, T0 + 2 * MS, LinkParams(**{**LINKS.__dict__, "class_links": [[1]]}))
    assert [(d.event, d.fields["cause"], d.effect) for d in moved] == [("failover", "reconfigured", ("active", 0, 1))]


def test_a_reload_with_other_links_or_classes_is_refused_by_the_core():
    core = Core(start())
    refused = reconfigure(core, T0, LinkParams(**{**LINKS.__dict__, "names": ["A", "C"]}))
    assert [d.event for d in refused] == ["refused"]


def test_a_reload_appends_a_feed_and_changes_thresholds():
    core = Core(start())
    more = FeedParams(names=["itch", "mdp"], dsts=["198.18.1.1", "198.18.1.2"], grace_ns=10 * MS,
                      silence_ns=100 * MS, behind_seqs=10)
    assert reconfigure(core, T0, feeds=more) == []
    assert core.feeds.books[0].grace_ns == 10 * MS and len(core.feeds.health) == 2
    assert [d.event for d in reconfigure(core, T0, feeds=FEEDS)] == ["refused"]


def test_a_reload_replays_like_the_live_run(tmp_path):
    path = tmp_path / "trace.jsonl"
    rec = trace.Recorder(str(path), start())
    inputs = [("health", T0 + MS, {"links": fresh(T0 + MS, True, True), "active": [0]}),
              ("reconfigure", T0 + 2 * MS, {"links": LinkParams(**{**LINKS.__dict__, "class_links": [[1, 0]],
                                                                   "holddown_ns": MS}).to_json(),
                                            "feeds": FEEDS.__dict__}),
              ("health", T0 + 5 * MS, {"links": fresh(T0 + 5 * MS, True, True), "active": [0]})]
    core, live = Core(start()), []
    for kind, ts, fields in inputs:
        rec.input(kind, ts, fields)
        live += core.consume(kind, ts, json.loads(json.dumps(fields)))
    rec.close()
    again = list(replay(*trace.read(str(path))))
    assert [d.record() for d in again] == [d.record() for d in live]
    assert any(d.event == "failover" for d in live)
