"""Gray-failure detectors and the host-stall hold, fed window summaries:
pure, no root."""
import random

import pytest

from appliance.core.detect import DetectParams, LinkDetector, StallWatch, Window

MS = 1_000_000
S = 1000 * MS
T0 = 1000 * S
TICK = 5 * MS
P = DetectParams(rtt_margin_ns=200_000, rtt_margin_ratio=1.0, loss_window=20, loss_threshold=0.1, loss_burst=3,
                 jitter_threshold_ns=100_000, quorum=2, confirm=3, clear=5, stall_ns=10 * MS, baseline_ns=60 * S)


def window(p50_us=30, answered=5, lost=0, jitter_us=5, gap=0) -> Window:
    rtt = p50_us * 1000
    return Window(answered + lost, answered, lost, rtt, rtt + 5000, rtt - 5000, rtt + 10_000, jitter_us * 1000, gap)


def feed(detector, windows, start=T0):
    """Each window as one reading, TICK apart; the verdicts in order."""
    return [detector.observe(start + i * TICK, w) for i, w in enumerate(windows)]


def learned(p=P, p50_us=30):
    d = LinkDetector(p)
    feed(d, [window(p50_us)] * 10)
    return d


def test_the_baseline_is_the_lowest_median_and_the_rtt_threshold_is_above_it_by_the_margin():
    d = LinkDetector(P)
    feed(d, [window(40), window(30), window(35)])
    assert d.baseline_ns == 30_000
    ev = d.evidence()
    # max(200 us, 1.0 x 30 us) above 30 us
    assert ev["baseline_us"] == 30.0 and ev["rtt"] == {"value_us": 35.0, "threshold_us": 230.0, "tripped": False}
    feed(d, [window(231)], start=T0 + S)
    assert d.evidence()["rtt"]["tripped"]


def test_the_margin_grows_with_the_baseline_on_a_long_path():
    d = learned(p50_us=5000)
    feed(d, [window(9000)], start=T0 + S)
    assert d.evidence()["rtt"] == {"value_us": 9000.0, "threshold_us": 10000.0, "tripped": False}


def test_the_baseline_forgets_after_its_horizon_but_not_while_the_link_is_gray():
    d = learned()
    feed(d, [window(80)] * 5, start=T0 + 61 * S)   # the 30 us floor is over 60 s old
    assert d.baseline_ns == 80_000
    gray = learned()
    feed(gray, [window(2000, jitter_us=2000)] * 3, start=T0 + S)
    assert gray.gray
    feed(gray, [window(2000, jitter_us=2000)] * 3, start=T0 + 61 * S)
    assert gray.baseline_ns == 30_000


def test_one_tripped_detector_never_declares():
    d = learned()
    assert feed(d, [window(5000)] * 100, start=T0 + S) == [None] * 100   # rtt alone, for 0.5 s
    assert d.evidence()["rtt"]["tripped"] and not d.evidence()["jitter"]["tripped"] and not d.gray


def test_two_tripped_detectors_declare_after_confirm_readings_with_their_evidence():
    d = learned()
    verdicts = feed(d, [window(5000, jitter_us=1000)] * 5, start=T0 + S)
    assert verdicts == [None, None, "gray", None, None]
    ev = d.evidence()
    assert ev["gray"] and ev["baseline_us"] == 30.0
    assert ev["rtt"] == {"value_us": 5000.0, "threshold_us": 230.0, "tripped": True}
    assert ev["jitter"]["tripped"] and ev["jitter"]["threshold_us"] == 100.0 and ev["jitter"]["value_us"] > 100
    assert ev["loss"]["tripped"] is False and ev["loss"]["value"] == 0.0


def test_a_reading_without_a_quorum_restarts_the_confirmation():
    d = learned()
    bad, good = window(5000, jitter_us=5000), window(30, jitter_us=0)
    assert feed(d, [bad, bad, good, bad, bad], start=T0 + S) == [None] * 5
    assert not d.gray


def test_a_gray_link_clears_after_clear_readings_without_a_quorum():
    d = learned()
    feed(d, [window(5000, jitter_us=5000)] * 3, start=T0 + S)
    # jitter decays with gain 1/4 from its high; rtt is back at once, so no quorum from the first
    verdicts = feed(d, [window(30, jitter_us=0)] * 6, start=T0 + 2 * S)
    assert verdicts == [None] * 4 + ["cleared", None] and not d.gray


def test_loss_is_a_fraction_of_the_last_loss_window_probes_only_once_there_are_that_many():
    d = LinkDetector(P)
    feed(d, [window(answered=3, lost=2, gap=1)] * 3)   # 40 % of 15 probes: too few to judge
    assert d.evidence()["loss"]["tripped"] is False and d.evidence()["loss"]["probes"] == 15
    feed(d, [window(answered=3, lost=2, gap=1)], start=T0 + S)
    assert d.evidence()["loss"] == {"value": 0.4, "threshold": 0.1, "probes": 20, "burst": 1, "burst_threshold": 3,
                                    "tripped": True}
    feed(d, [window(answered=5)] * 4, start=T0 + 2 * S)   # the lossy windows slid out
    assert d.loss == 0.0 and d.evidence()["loss"]["probes"] == 20


def test_a_burst_longer_than_loss_burst_trips_even_across_windows():
    d = LinkDetector(P)
    feed(d, [window(answered=5)] * 10)
    feed(d, [window(answered=4, lost=1, gap=1), window(answered=0, lost=2, gap=2), window(answered=0, lost=2, gap=2)],
         start=T0 + S)
    assert d.burst == 4 and d.evidence()["loss"]["tripped"]
    feed(d, [window(answered=5)] * 4, start=T0 + 2 * S)   # 20 later probes: the burst slid out
    assert d.burst == 0 and not d.evidence()["loss"]["tripped"]


def test_the_longest_burst_is_a_sliding_maximum_over_the_windows_in_the_loss_window():
    """burst is kept as a sliding maximum: checked against a scan of every
    window the loss window holds, over random windows (empty ones too)."""
    rng = random.Random(7)
    d = LinkDetector(P)
    for i in range(3000):
        answered, lost = rng.choice([0, 0, 1, 3, 5]), rng.choice([0, 0, 0, 1, 2, 4])
        d.observe(T0 + i * 5_000_000, window(answered=answered, lost=lost, gap=rng.randint(0, lost)))
        assert d.burst == max((burst for _, _, burst in d._probes), default=0)


def test_an_interrupted_run_of_readings_is_not_consecutive_evidence():
    d = learned()
    feed(d, [window(5000, jitter_us=5000)] * 2, start=T0 + S)
    d.interrupt()
    assert feed(d, [window(5000, jitter_us=5000)] * 3, start=T0 + 2 * S) == [None, None, "gray"]


def test_symptoms_are_each_detector_over_its_threshold_and_trip_above_one():
    assert LinkDetector(P).symptoms() is None
    rng = random.Random(7)
    d = learned()
    for i in range(3000):
        answered = rng.choice((0, 1, 2, 5))
        lost = rng.choice((0, 0, 0, 1, 2, 4))
        feed(d, [window(rng.choice((30, 150, 229, 231, 400)), answered, lost, rng.randrange(0, 300),
                        min(lost, rng.randrange(0, 5)))], start=T0 + S + i * TICK)
        if rng.random() < 0.02:
            d.feed_lines = {"itch/A": "silent"} if not d.feed_lines else {}
            d.observe(T0 + S + i * TICK + 1, window(answered=0))
        severity, tripped, quorum = d.symptoms()
        assert quorum == P.quorum
        assert [s > 1 for s in severity[:3]] == list(tripped[:3]), (severity, tripped)
        assert severity[3] == float(tripped[3]) == float(bool(d.feed_lines))
    # rtt: the excess over the baseline against the margin (200 us here)
    d = learned()
    feed(d, [window(130)], start=T0 + S)
    assert d.symptoms().severity[0] == pytest.approx(0.5)


def test_no_evidence_before_a_window():
    assert LinkDetector(P).evidence() == {"gray": False, "baseline_us": None, "rtt": None, "loss": None,
                                          "jitter": None}


@pytest.mark.parametrize("late_ms,gap_ms,held", [(0, 5, False), (10, 5, False), (11, 5, True), (0, 50, False)])
def test_a_stall_is_a_late_sender_not_a_late_reading(late_ms, gap_ms, held):
    watch = StallWatch(10 * MS)
    assert watch.reading(T0, 0) is None
    hold = watch.reading(T0 + gap_ms * MS, late_ms * MS)
    assert (hold is not None) == held == watch.held(T0 + gap_ms * MS)


def test_a_stall_is_held_as_long_as_it_lasted_and_logged_once():
    watch = StallWatch(10 * MS)
    watch.reading(T0, 0)
    hold = watch.reading(T0 + 5 * MS, 40 * MS)
    assert hold == {"sender_late_ms": 40.0, "reading_gap_ms": 5.0, "held_ms": 40.0, "until_ns": T0 + 45 * MS}
    assert watch.reading(T0 + 10 * MS, 40 * MS) is None            # the same stall, extended: not logged again
    assert watch.until_ns == T0 + 50 * MS
    assert watch.held(T0 + 49 * MS) and not watch.held(T0 + 50 * MS)
    assert watch.reading(T0 + 50 * MS, 0) is None                  # 40 ms since the last reading: the daemon's, no stall
    assert watch.reading(T0 + 60 * MS, 20 * MS) is not None        # the sender late again: a new stall
