"""The pure arbitration bookkeeping: gap grace windows, line health, summaries."""
import pytest

from appliance import feeds, layout
from appliance.feeds import GapBook, LineHealth, LineSample, line_status, subtract

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
