"""The A/B feed plan, its schedule, expectations and the arrival check (no root)."""
import json

import numpy as np
import pytest
from pydantic import ValidationError

from lab import feedproto
from lab.feedplan import (
    DATA,
    END,
    HEARTBEAT,
    RECORD_DTYPE,
    FeedPlan,
    LineFaults,
    build,
    check,
    expected,
    packet_bytes,
    read_packet,
)

SOURCES = {"A": "198.18.30.1", "B": "198.18.30.2"}
SRC = {0: 0xC6121E01, 1: 0xC6121E02}  # SOURCES as integers, by line index


def plan(**fields) -> FeedPlan:
    return FeedPlan(**{"messages": 10, "rate": 1000, **fields})


def sends(p: FeedPlan, line: int | None = None) -> list[tuple]:
    """(t_ns, kind, session, seq, count) of the schedule, optionally one line's."""
    s = build(p)
    if line is not None:
        s = s[s["line"] == line]
    return [(int(r["t_ns"]), int(r["kind"]), int(r["session"]), int(r["seq"]), int(r["count"])) for r in s]


def arrivals(p: FeedPlan, rows) -> np.ndarray:
    """Receiver records from (line, kind, session index, seq, count[, corrupt]) rows, in arrival order."""
    out = np.zeros(len(rows), dtype=RECORD_DTYPE)
    for i, (line, kind, session, seq, count, *corrupt) in enumerate(rows):
        name = b"" if p.protocol == "mdp3" else p.sessions[session].encode()
        out[i] = (i * 1000, SRC[line], kind, name, seq, count, corrupt[0] if corrupt else 0, 0)
    return out


def as_received(p: FeedPlan) -> np.ndarray:
    """The whole schedule, arriving in send order."""
    s = build(p)
    return arrivals(p, [(r["line"], r["kind"], r["session"], r["seq"], r["count"]) for r in s])


def data(line, *seqs, count=1):
    return [(line, DATA, 0, seq, count) for seq in seqs]


# ---------------------------------------------------------------- the plan

def test_plan_json_round_trip_and_defaults():
    p = plan(batch_a=3, line_b=LineFaults(loss=0.1, silent=((5, 6),)), overlap=0.0)
    again = FeedPlan.model_validate_json(p.model_dump_json())
    assert again == p
    assert build(again).tobytes() == build(p).tobytes()
    raw = json.loads(p.model_dump_json())
    assert raw["line_b"]["silent"] == [[5, 6]]
    assert raw["protocol"] == "moldudp64" and raw["session"] == "TWINPATH01"


@pytest.mark.parametrize("fields, error", [
    ({"protocol": "mdp3", "batch_a": 2}, "batch_a must keep the default"),
    ({"protocol": "mdp3", "heartbeat_every": 5}, "heartbeat_every must keep the default"),
    ({"msg_size": 8}, "msg_size must be >= 9"),
    ({"batch_a": 82, "msg_size": 16}, "1496 bytes, above 1472"),
    ({"session_change_at": 10}, "session_change_at must be below messages"),
    ({"session_change_at": 5, "next_session": "TWINPATH01"}, "next_session must differ"),
    ({"session": "HAS SPACE"}, "session"),
    ({"line_a": {"silent": [[5, 4]]}}, "1 <= first <= last"),
    ({"line_a": {"lossy": 0.1}}, "lossy"),
])
def test_plan_rejects_inconsistent_fields(fields, error):
    with pytest.raises(ValidationError, match=error):
        plan(**fields)


def test_mdp3_accepts_eight_byte_messages():
    assert plan(protocol="mdp3", msg_size=8).msg_size == 8


# ---------------------------------------------------------------- schedule

def test_no_faults_both_lines_send_every_message_at_its_time_a_first():
    s = sends(plan(messages=3))
    assert s == [(0, DATA, 0, 1, 1), (0, DATA, 0, 1, 1), (1_000_000, DATA, 0, 2, 1), (1_000_000, DATA, 0, 2, 1),
                 (2_000_000, DATA, 0, 3, 1), (2_000_000, DATA, 0, 3, 1)]
    assert build(plan(messages=3))["line"].tolist() == [0, 1, 0, 1, 0, 1]


def test_batches_go_out_with_their_last_message():
    p = plan(batch_a=4, batch_b=3)
    assert sends(p, 0) == [(3_000_000, DATA, 0, 1, 4), (7_000_000, DATA, 0, 5, 4), (9_000_000, DATA, 0, 9, 2)]
    assert sends(p, 1) == [(2_000_000, DATA, 0, 1, 3), (5_000_000, DATA, 0, 4, 3), (8_000_000, DATA, 0, 7, 3),
                           (9_000_000, DATA, 0, 10, 1)]


def test_heartbeats_name_each_lines_next_seq_and_ends_close_the_session():
    p = plan(messages=12, batch_a=4, heartbeat_every=5, end_of_session=True)
    a = [r for r in sends(p, 0) if r[1] != DATA]
    b = [r for r in sends(p, 1) if r[1] != DATA]
    # Heartbeats halfway after messages 5 and 10; A has sent 1-4 and 1-8 by then.
    assert a == [(4_500_000, HEARTBEAT, 0, 5, 0), (9_500_000, HEARTBEAT, 0, 9, 0), (11_000_000, END, 0, 13, 0)]
    assert b == [(4_500_000, HEARTBEAT, 0, 6, 0), (9_500_000, HEARTBEAT, 0, 11, 0), (11_000_000, END, 0, 13, 0)]
    # The end follows the last data packet sent at the same time.
    assert sends(p, 0)[-2:] == [(11_000_000, DATA, 0, 9, 4), (11_000_000, END, 0, 13, 0)]


def test_session_change_restarts_seqs_and_batching():
    p = plan(batch_a=4, session_change_at=6, end_of_session=True, heartbeat_every=6)
    assert sends(p, 0) == [(3_000_000, DATA, 0, 1, 4), (5_000_000, DATA, 0, 5, 2), (5_000_000, END, 0, 7, 0),
                           (5_500_000, HEARTBEAT, 1, 1, 0),
                           (9_000_000, DATA, 1, 1, 4), (9_000_000, END, 1, 5, 0)]
    assert p.sessions == ["TWINPATH01", "TWINPATH02"]


def test_delay_shifts_one_line():
    p = plan(messages=2, line_a=LineFaults(delay_us=1500))
    assert build(p)["line"].tolist() == [1, 1, 0, 0]
    assert sends(p, 0) == [(1_500_000, DATA, 0, 1, 1), (2_500_000, DATA, 0, 2, 1)]


def test_same_seed_same_schedule_other_seed_other_losses():
    p = plan(messages=2000, batch_a=3, line_a=LineFaults(loss=0.1, reorder=0.1, duplicate=0.1),
             line_b=LineFaults(burst_start=0.01, burst_length=5), heartbeat_every=100)
    assert build(p).tobytes() == build(p.model_copy()).tobytes()
    assert expected(p) == expected(p.model_copy())
    other = p.model_copy(update={"seed": 1})
    assert build(other).tobytes() != build(p).tobytes()


def test_one_fault_does_not_move_anothers_decisions():
    lossy = plan(messages=2000, line_a=LineFaults(loss=0.1))
    shuffled = plan(messages=2000, line_a=LineFaults(loss=0.1, reorder=0.3, duplicate=0.2))
    assert sorted(set(r[3] for r in sends(lossy, 0))) == sorted(set(r[3] for r in sends(shuffled, 0)))


def test_loss_is_per_packet_and_counted():
    p = plan(messages=4000, batch_a=4, line_a=LineFaults(loss=0.1))
    exp = expected(p)["lines"]["A"]
    assert exp["data_packets"] + exp["lost_packets"] == 1000
    assert 60 < exp["lost_packets"] < 140
    assert exp["messages"] == 4 * exp["data_packets"]  # whole packets are lost
    assert expected(p)["gaps_expected"] == {}  # B delivers everything


def test_bursts_lose_consecutive_packets():
    p = plan(messages=5000, line_b=LineFaults(burst_start=0.002, burst_length=20))
    lost = sorted(set(range(1, 5001)) - {r[3] for r in sends(p, 1)})
    runs = np.split(np.array(lost), np.flatnonzero(np.diff(lost) != 1) + 1)
    assert len(runs) >= 3
    assert all(len(run) >= 20 for run in runs[:-1])  # a run only ends early at the end of the feed


def test_disjoint_losses_never_hit_the_same_seq():
    p = plan(messages=20000, batch_a=2, batch_b=3, line_a=LineFaults(loss=0.05, burst_start=0.01, burst_length=4),
             line_b=LineFaults(loss=0.05, burst_start=0.01, burst_length=4), overlap=0.0)
    exp = expected(p)
    assert exp["gaps_expected"] == {}
    assert exp["lines"]["A"]["lost_packets"] > 500 and exp["lines"]["B"]["lost_packets"] > 300
    assert exp["both"] + exp["only_a"] + exp["only_b"] == 20000
    independent = expected(p.model_copy(update={"overlap": None}))
    assert independent["gaps_expected"] != {}


def test_overlap_loses_exactly_that_fraction_of_as_losses_on_b():
    p = plan(messages=20000, line_a=LineFaults(loss=0.1), overlap=0.25)
    exp = expected(p)
    lost_on_a = exp["only_b"]  # B loses nothing else; A's lost seqs reach the gateway on B only
    lost_on_both = sum(last - first + 1 for first, last in exp["gaps_expected"]["TWINPATH01"])
    assert lost_on_both == round(0.25 * (lost_on_both + lost_on_a))
    assert exp["lines"]["B"]["lost_packets"] == lost_on_both


def test_down_after_silences_everything_after_it():
    p = plan(messages=200, batch_b=3, heartbeat_every=10, end_of_session=True, line_b=LineFaults(down_after=100))
    b = sends(p, 1)
    last_data = max(r for r in b if r[1] == DATA)
    assert last_data[3:] == (97, 3)  # [100, 102] straddles the end: not sent
    assert [r[3] for r in b if r[1] == HEARTBEAT] == [10, 19, 31, 40, 49, 61, 70, 79, 91, 100]
    assert not [r for r in b if r[1] == END]
    exp = expected(p)
    assert exp["lines"]["B"]["messages"] == 99
    # 34 data packets from 100 on, heartbeats after messages 110..190, the end.
    assert exp["lines"]["B"]["silenced_packets"] == 34 + 9 + 1
    assert exp["lines"]["A"]["heartbeats"] == 19
    assert exp["heartbeats_published"] == 19
    assert exp["gaps_expected"] == {}


def test_a_silenced_packet_is_not_also_lost():
    exp = expected(plan(line_b=LineFaults(loss=1.0, down_after=6)))["lines"]["B"]
    assert (exp["lost_packets"], exp["silenced_packets"], exp["data_packets"]) == (6, 4, 0)


def test_silent_range_by_message_index():
    p = plan(line_a=LineFaults(silent=((3, 5),)), heartbeat_every=4)
    a = sends(p, 0)
    assert [r[3] for r in a if r[1] == DATA] == [1, 2, 6, 7, 8, 9, 10]
    assert [r[3] for r in a if r[1] == HEARTBEAT] == [9]  # after message 4: silent; after 8: sent
    assert expected(p)["lines"]["A"]["silenced_packets"] == 4


def test_reorder_swaps_neighbours_in_the_same_time_slots():
    p = plan(messages=5, line_b=LineFaults(reorder=1.0))
    assert sends(p, 1) == [(0, DATA, 0, 2, 1), (1_000_000, DATA, 0, 1, 1), (2_000_000, DATA, 0, 4, 1),
                           (3_000_000, DATA, 0, 3, 1), (4_000_000, DATA, 0, 5, 1)]


def test_duplicate_sends_twice_back_to_back():
    p = plan(messages=3, line_a=LineFaults(duplicate=1.0))
    assert [r[3] for r in sends(p, 0)] == [1, 1, 2, 2, 3, 3]
    exp = expected(p)["lines"]["A"]
    assert (exp["data_packets"], exp["messages"], exp["lost_packets"]) == (6, 3, 0)


# ---------------------------------------------------------------- check

def test_check_one_perfect_line():
    p = plan()
    result = check(p, arrivals(p, data(0, *range(1, 11))), SOURCES)
    assert result == {
        "sent": 10, "packets": 10, "delivered": 10, "delivered_twice": 0, "redundant_messages": 0,
        "out_of_order": 0, "late_fills": 0, "missing": {}, "missing_messages": 0, "gaps_expected": {},
        "missing_matches_expected": True, "corrupt": 0, "unexpected": 0,
        "heartbeats_sent": {"A": 0, "B": 0}, "heartbeats_received": 0,
        "end_of_session_sent": {"A": 0, "B": 0}, "end_of_session_received": 0,
        "by_line": {"A": {"data": 10, "heartbeat": 0, "end": 0}, "B": {"data": 0, "heartbeat": 0, "end": 0}},
    }
    json.dumps(result)


def test_check_both_lines_forwarded_counts_every_second_copy():
    p = plan(heartbeat_every=3, end_of_session=True)
    result = check(p, as_received(p), SOURCES)
    assert (result["delivered"], result["missing"], result["out_of_order"]) == (10, {}, 0)
    assert result["heartbeats_sent"] == {"A": 3, "B": 3}
    assert result["heartbeats_received"] == 6
    assert result["delivered_twice"] == 10 + 3 + 1  # B's data copies, 3 extra heartbeats, 1 extra end


def test_check_partial_overlap_is_redundant_not_twice():
    p = plan(messages=8, batch_a=4)
    received = arrivals(p, data(1, 1, 2, 3) + data(0, 1, count=4) + data(1, 4) + data(0, 5, count=4)
                        + data(1, 5, 6, 7, 8))
    result = check(p, received)
    assert (result["delivered"], result["redundant_messages"], result["delivered_twice"]) == (8, 3, 5)
    assert result["out_of_order"] == 0
    assert "by_line" not in result


def test_check_out_of_order_counts_late_new_seqs():
    p = plan(messages=6)
    result = check(p, arrivals(p, data(0, 1, 2, 5, 3, 4, 5, 6)))
    assert (result["out_of_order"], result["delivered_twice"], result["delivered"]) == (2, 1, 6)
    assert result["late_fills"] == 0  # both lines carried 3 and 4: the arbiter reordered them


def test_check_late_fill_is_a_message_only_the_late_line_carried():
    p = plan(messages=6, line_a=LineFaults(silent=((3, 3),)))
    result = check(p, arrivals(p, data(0, 1, 2, 4) + data(1, 3) + data(0, 6, 5)))
    assert (result["out_of_order"], result["late_fills"], result["delivered"]) == (2, 1, 6)


def test_check_out_of_order_inside_a_batch_counts_only_the_late_part():
    p = plan(messages=8, batch_a=4)
    result = check(p, arrivals(p, data(1, 6) + data(0, 1, count=4) + data(0, 5, count=4)))
    # 1-4 are late behind 6; of 5-8, 5 is new and late, 6 redundant, 7-8 new in order.
    assert (result["out_of_order"], result["redundant_messages"], result["delivered"]) == (5, 1, 8)


def test_check_missing_ranges_against_expected():
    p = plan()
    result = check(p, arrivals(p, data(0, 1, 2, 5, 6, 7, 8)))
    assert result["missing"] == {"TWINPATH01": [[3, 4], [9, 10]]}
    assert result["missing_messages"] == 4
    assert result["missing_matches_expected"] is False


def test_check_of_a_lossy_schedule_matches_its_expectation():
    p = plan(messages=5000, batch_a=4, batch_b=1, heartbeat_every=100, session_change_at=2500,
             end_of_session=True, line_a=LineFaults(loss=0.05, reorder=0.05),
             line_b=LineFaults(loss=0.05, duplicate=0.05, down_after=4000))
    exp = expected(p)
    result = check(p, as_received(p), SOURCES)
    assert set(exp["gaps_expected"]) == {"TWINPATH01", "TWINPATH02"}
    assert result["missing"] == exp["gaps_expected"]
    assert result["missing_matches_expected"] is True
    assert result["delivered"] == 5000 - result["missing_messages"]
    assert result["delivered"] == exp["both"] + exp["only_a"] + exp["only_b"]
    for line in "AB":
        assert result["by_line"][line] == {"data": exp["lines"][line]["data_packets"],
                                           "heartbeat": exp["lines"][line]["heartbeats"],
                                           "end": exp["lines"][line]["end_of_session"]}


def test_check_counts_corrupt_and_unexpected():
    p = plan(session_change_at=5)
    received = arrivals(p, [(0, DATA, 0, 1, 1, 1), (0, DATA, 1, 1, 1), (0, DATA, 1, 6, 1), (0, DATA, 0, 0, 1)])
    received[-1]["session"] = b"OTHER"
    result = check(p, received)
    assert (result["corrupt"], result["unexpected"], result["delivered"]) == (1, 2, 2)
    assert result["missing"] == {"TWINPATH01": [[2, 5]], "TWINPATH02": [[2, 5]]}


def test_check_mdp3():
    p = plan(protocol="mdp3", messages=4)
    result = check(p, arrivals(p, data(0, 1, 2, 4) + data(1, 1, 2, 3, 4)))
    assert (result["delivered"], result["delivered_twice"], result["out_of_order"]) == (4, 3, 1)


# ---------------------------------------------------------------- packets

@pytest.mark.parametrize("fields", [{"batch_a": 3, "heartbeat_every": 4, "end_of_session": True,
                                     "session_change_at": 5}, {"protocol": "mdp3"}])
def test_packets_read_back_as_their_sends(fields):
    p = plan(**fields)
    for _t, kind, session, seq, count in sends(p):
        payload = packet_bytes(p, kind, session, seq, count)
        name = b"" if p.protocol == "mdp3" else p.sessions[session].encode()
        assert read_packet(p.protocol, payload) == (kind, name, seq, count, 0, 0)
        if kind == DATA:
            assert len(payload) == p.payload_bytes(count)


def test_read_packet_counts_blocks_under_the_wrong_seq():
    wrong = feedproto.mold_packet("S", 5, [feedproto.lab_message("moldudp64", s, 16) for s in (5, 7, 7)])
    assert read_packet("moldudp64", wrong) == (DATA, b"S", 5, 3, 1, 0)
    with pytest.raises(ValueError):
        read_packet("moldudp64", wrong[:-1])
