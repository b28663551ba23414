"""bench.latency's pure analysis on hand-built inputs (no root, no lab)."""
import json

import numpy as np
import pytest

from bench.latency import MODES, block_latencies, block_order, highest_passing, judge_step, ratio, summarize
from lab.traffic import ARRIVAL_DTYPE, NO_SENT_NS

T0 = 5_000_000_000  # the block's start: every intended send time is after it


def arrivals(seqs, sent_ns, t_ns):
    out = np.zeros(len(seqs), dtype=ARRIVAL_DTYPE)
    out["seq"], out["sent_ns"], out["t_ns"] = seqs, sent_ns, t_ns
    return out


def test_block_order_alternates_abba_with_equal_blocks_per_mode():
    assert block_order(3) == ["fastpath", "kernel", "kernel", "fastpath", "fastpath", "kernel"]
    assert block_order(0) == []
    order = block_order(4)
    assert all(order.count(m) == 4 for m in MODES)


def test_latency_is_receive_time_minus_intended_send_time_in_seq_order():
    sent = [T0 + 100, T0 + 200, T0 + 300]
    # Arrival order 2, 0, 1; seq 1 came back late (its sender stalled or the path did).
    got, counts = block_latencies(arrivals([2, 0, 1], [sent[2], sent[0], sent[1]],
                                           [T0 + 340, T0 + 130, T0 + 900]), issued=3, not_before_ns=T0)
    assert got.tolist() == [30, 700, 40]
    assert counts == {"issued": 3, "replies": 3, "lost": 0, "duplicated": 0, "unexpected": 0}


def test_lost_duplicated_and_unexpected_replies():
    recs = arrivals(
        seqs=[0, 0, 3, 7, 2, 1],
        sent_ns=[T0 + 10, T0 + 10, T0 + 40, T0 + 80, T0 - 5, NO_SENT_NS],
        t_ns=[T0 + 60, T0 + 90, T0 + 70, T0 + 99, T0 + 99, T0 + 99])
    got, counts = block_latencies(recs, issued=5, not_before_ns=T0)
    # seq 0 counts once (first arrival); 7 is out of range; 2 is a previous
    # block's straggler (sent before this block began); 1 carries no send time.
    assert got.tolist() == [50, 30]
    assert counts == {"issued": 5, "replies": 2, "lost": 3, "duplicated": 1, "unexpected": 3}


def test_nothing_came_back():
    got, counts = block_latencies(arrivals([], [], []), issued=4, not_before_ns=T0)
    assert len(got) == 0
    assert counts["lost"] == 4 and counts["replies"] == 0


def test_summary_percentiles_are_exact_nearest_rank_samples():
    rng = np.random.default_rng(1)
    samples = rng.permutation(np.arange(1, 1001) * 1000)  # 1 .. 1000 µs, shuffled
    s = summarize(samples, lost=2)
    assert s == {"p50_us": 500.0, "p99_us": 990.0, "p999_us": 999.0, "max_us": 1000.0, "min_us": 1.0,
                 "samples": 1000, "lost": 2}
    json.dumps(s)


def test_summary_never_interpolates_between_samples():
    s = summarize(np.array([10_000, 20_000]), lost=0)
    assert s["p50_us"] == 10.0     # a measured value, not 15
    assert s["p99_us"] == s["p999_us"] == s["max_us"] == 20.0


def test_one_outlier_in_a_thousand_shows_at_p999_not_p99():
    samples = np.full(1000, 30_000)
    samples[123] = 5_000_000
    s = summarize(samples, lost=0)
    assert (s["p50_us"], s["p99_us"], s["p999_us"], s["max_us"]) == (30.0, 30.0, 30.0, 5000.0)
    samples[124] = 5_000_000
    assert summarize(samples, lost=0)["p999_us"] == 5000.0


def test_summary_without_samples():
    s = summarize(np.array([], dtype=np.int64), lost=7)
    assert s["samples"] == 0 and s["lost"] == 7 and s["p50_us"] is None and s["max_us"] is None


def test_ratio():
    assert ratio(30.0, 40.0) == 0.75
    assert ratio(None, 40.0) is None
    assert ratio(30.0, None) is None
    assert ratio(30.0, 0.0) is None


@pytest.mark.parametrize("issued,sent,achieved,sunk,passed,limit", [
    (1000, 1000, 10_000.0, 1000, True, None),
    (1000, 1000, 9_500.0, 1000, True, None),       # exactly 95%
    (1000, 1000, 9_499.0, 1000, False, "sender"),  # under 95%, nothing lost
    (1000, 998, 10_000.0, 998, False, "sender"),   # send errors: never left the socket
    (1000, 1000, 10_000.0, 999, False, "path"),    # left the socket, not counted at the sink
    (1000, 1000, 8_000.0, 990, False, "path"),     # loss in the path outranks a slow sender
    (1, 1, None, 1, False, "sender"),              # no rate measured
])
def test_judge_step(issued, sent, achieved, sunk, passed, limit):
    verdict = judge_step(10_000, issued, sent, achieved, sunk)
    assert verdict == {"passed": passed, "limit": limit, "lost": issued - sunk}


def step(rate, achieved, limit=None):
    return {"rate_pps": rate, "achieved_pps": achieved, "passed": limit is None, "limit": limit}


def test_highest_passing_stops_at_the_first_failure():
    steps = [step(10_000, 10_000.0), step(20_000, 19_990.0), step(40_000, 30_000.0, "sender")]
    assert highest_passing(steps) == {"max_pps": 20_000, "limit": "sender", "sender_limited": True,
                                      "lossless_achieved_pps": 30_000.0}


def test_highest_passing_path_limit_does_not_count_the_lossy_rate():
    steps = [step(10_000, 10_000.0), step(20_000, 20_000.0, "path"), step(40_000, 40_000.0)]
    assert highest_passing(steps) == {"max_pps": 10_000, "limit": "path", "sender_limited": False,
                                      "lossless_achieved_pps": 10_000.0}


def test_highest_passing_when_nothing_fails_or_the_first_step_fails():
    assert highest_passing([step(10_000, 10_000.0), step(20_000, 20_000.0)])["limit"] is None
    assert highest_passing([step(10_000, 10_000.0), step(20_000, 20_000.0)])["max_pps"] == 20_000
    first_fails = highest_passing([step(10_000, 5_000.0, "path")])
    assert first_fails == {"max_pps": None, "limit": "path", "sender_limited": False,
                           "lossless_achieved_pps": None}
    assert highest_passing([])["max_pps"] is None
