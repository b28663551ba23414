"""The pure arbitration bookkeeping: gap grace windows, line health, summaries."""
import pytest

from appliance import layout
from appliance.core import feeds
from appliance.core.feeds import GapBook, LineHealth, LineSample, line_status, subtract

MS = 1_000_000


@pytest.mark.parametrize("ranges,cut,want", [
    ([(1, 10)], (3, 5), [(1, 2), (6, 10)]),
    ([(1, 10)], (1, 10), []),
    ([(1, 10)], (11, 20), [(1, 10)]),
    ([(1, 3), (7, 9)], (2, 8), [(1, 1), (9, 9)]),
])
def test_subtract(ranges, cut, want):
    assert subtract(ranges, *cut) == want


def test_gap_filled_within_grace_settles_filled():
    book = GapBook(grace_ns=20 * MS)
    book.gap(3, 5, 100 * MS)
    book.fill(3, 5, 101 * MS)
    assert book.settle(110 * MS) == []  # still in its grace window
    (s,) = book.settle(120 * MS)
    assert (s.first, s.last, s.filled, s.lost) == (3, 5, True, [])


def test_partly_filled_gap_reports_exactly_the_unfilled_ranges():
    book = GapBook(grace_ns=20 * MS)
    book.gap(10, 20, 0)
    book.fill(12, 13, 1 * MS)
    book.fill(18, 20, 2 * MS)
    (s,) = book.settle(20 * MS)
    assert s.lost == [(10, 11), (14, 17)] and s.lost_count == 6


def test_fill_reported_just_before_its_gap_still_counts():
    # The other line's CPU can win the ring buffer: fill first, then the gap.
    book = GapBook(grace_ns=20 * MS)
    book.fill(3, 5, 100 * MS)
    book.gap(3, 5, 100 * MS + 1)
    assert book.settle(200 * MS)[0].filled


def test_old_fills_are_forgotten_after_the_grace_window():
    book = GapBook(grace_ns=20 * MS)
    book.fill(3, 5, 0)
    book.settle(50 * MS)
    book.gap(3, 5, 60 * MS)
    assert book.settle(100 * MS)[0].lost == [(3, 5)]


def test_session_change_settles_everything_at_once():
    book = GapBook(grace_ns=20 * MS)
    book.gap(3, 5, 100 * MS)
    assert [s.lost for s in book.settle(100 * MS, everything=True)] == [[(3, 5)]]
    assert book.open == []


FLOWING = LineSample(last_ns=99 * MS, next_seq=1000)


@pytest.mark.parametrize("me,peer,want", [
    (LineSample(98 * MS, 1000), FLOWING, "ok"),
    (LineSample(40 * MS, 900), FLOWING, "silent"),
    (LineSample(0, 0), FLOWING, "silent"),
    (LineSample(99 * MS, 100), FLOWING, "behind"),
    (LineSample(40 * MS, 900), LineSample(45 * MS, 1000), "ok"),  # whole feed quiet: nobody blamed
])
def test_line_status(me, peer, want):
    assert line_status(me, peer, now_ns=100 * MS, silence_ns=50 * MS, behind_seqs=500) == want


def test_line_health_reports_each_change_once():
    health = LineHealth(silence_ns=50 * MS, behind_seqs=500)
    quiet_b = [LineSample(99 * MS, 1000), LineSample(10 * MS, 990)]
    assert health.update(quiet_b, 100 * MS) == [(1, "ok", "silent")]
    assert health.update(quiet_b, 101 * MS) == []
    back = [LineSample(120 * MS, 1100), LineSample(120 * MS, 1100)]
    assert health.update(back, 121 * MS) == [(1, "silent", "ok")]


def _stats(won=0, lost=0, lag_bucket=None, n=0):
    s = layout.LineStats(packets=won + lost, won=won, lost=lost)
    if lag_bucket is not None:
        s.lag_hist[lag_bucket] = n
    return s


def test_line_summary_lead_is_the_peers_lag():
    zero = layout.LineStats()
    a_now, b_now = _stats(won=90, lost=10, lag_bucket=3, n=10), _stats(won=10, lost=90, lag_bucket=12, n=90)
    sample = LineSample(100 * MS, 1000)
    a = feeds.line_summary(a_now, zero, b_now, zero, sample, sample, 100 * MS)
    assert a["won_pct"] == 90.0
    assert a["lead_p50_us"] == layout.hist_bucket_bounds_us(12)[1]
    assert a["lag_p50_us"] == layout.hist_bucket_bounds_us(3)[1]
    assert (a["silence_ms"], a["behind"]) == (0.0, 0)


def test_line_summary_counts_unconfirmed_and_far_ahead_drops():
    zero = layout.LineStats()
    now = layout.LineStats(packets=7, unconfirmed=3, far_ahead=4)
    sample = LineSample(100 * MS, 1000)
    out = feeds.line_summary(now, zero, zero, zero, sample, sample, 100 * MS)
    assert (out["unconfirmed"], out["far_ahead"]) == (3, 4)


# -- feed-stalled ---------------------------------------------------------------
WINDOW = 50 * MS


def delivery(**counts) -> feeds.Delivery:
    return feeds.Delivery(**counts)


def run_windows(watch, steps):
    """steps: per window, the (A, B) counts added in it; returns the events."""
    totals = [feeds.Delivery(), feeds.Delivery()]
    out = [watch.update(totals, 0)]
    for i, (a, b) in enumerate(steps, start=1):
        totals = [feeds.Delivery(**{k: getattr(t, k) + d.get(k, 0) for k in feeds.DELIVERY_COUNTERS})
                  for t, d in zip(totals, (a, b))]
        assert watch.due(i * WINDOW)
        out.append(watch.update(totals, i * WINDOW))
    return out[1:]


FLOWING = ({"packets": 10, "won": 6, "lost": 4}, {"packets": 10, "won": 4, "lost": 6})
FORGED_SWITCH = ({"packets": 10, "stale": 10}, {"packets": 10, "stale": 10})  # the old attack: all refused


def test_a_feed_whose_packets_are_all_refused_is_stalled_once_and_resumes():
    events = run_windows(feeds.StallWatch(WINDOW), [FLOWING, FORGED_SWITCH, FORGED_SWITCH, FLOWING, FLOWING])
    assert [e and e[0] for e in events] == [None, "feed-stalled", None, "feed-resumed", None]
    fields = events[1][1]
    assert fields["window_ms"] == 50.0
    assert fields["lines"]["A"] == {"data": 10, "won": 0, "lost": 0, "stale": 10, "unconfirmed": 0,
                                    "far_ahead": 0, "malformed": 0}


@pytest.mark.parametrize("why", ["stale", "unconfirmed", "far_ahead"])
def test_any_reason_for_refusing_data_counts(why):
    one_line = ({"packets": 5, why: 5}, {})
    assert run_windows(feeds.StallWatch(WINDOW), [one_line])[0][0] == "feed-stalled"


def test_malformed_packets_count_too():
    assert run_windows(feeds.StallWatch(WINDOW), [({"malformed": 3}, {"malformed": 3})])[0][0] == "feed-stalled"


@pytest.mark.parametrize("window", [
    ({}, {}),                                                  # a quiet feed
    ({"packets": 3, "heartbeats": 3}, {"packets": 3, "heartbeats": 3}),  # heartbeats only
    ({"packets": 2, "lost": 2}, {}),                           # late copies of what was delivered
    ({"packets": 9, "won": 1, "unconfirmed": 8}, {}),          # something still delivered
])
def test_no_stall_without_refused_data_or_while_something_is_delivered(window):
    assert run_windows(feeds.StallWatch(WINDOW), [window, window]) == [None, None]


def test_a_quiet_window_does_not_resume_a_stalled_feed():
    events = run_windows(feeds.StallWatch(WINDOW), [FORGED_SWITCH, ({}, {}), FLOWING])
    assert [e and e[0] for e in events] == ["feed-stalled", None, "feed-resumed"]


def test_stall_is_judged_per_window_only():
    watch = feeds.StallWatch(WINDOW)
    zero = [feeds.Delivery(), feeds.Delivery()]
    assert watch.update(zero, 0) is None
    refused = [delivery(packets=5, stale=5), feeds.Delivery()]
    assert not watch.due(WINDOW - 1) and watch.update(refused, WINDOW - 1) is None
    assert watch.update(refused, WINDOW)[0] == "feed-stalled"


def test_delivery_reads_the_kernel_counters():
    stats = layout.LineStats(packets=9, heartbeats=2, won=3, lost=1, stale=1, unconfirmed=1, far_ahead=1, malformed=4)
    d = feeds.Delivery.of(stats)
    assert (d.data, d.refused) == (7, 7 - 3 - 1 + 4)


def test_session_text():
    assert feeds.session_text(b"SESSION1  ") == "SESSION1"
    assert feeds.session_text(b"\x00AB       ") == "\\x00AB"
    assert feeds.session_text(layout.session_name([int.from_bytes(b"ABCDEFGH", "little"), 0x4A49])) == "ABCDEFGHIJ"
