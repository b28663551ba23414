"""Reading seldom while nothing moves: when the core calls its links quiet
(Core.quiet), the bounds it arms the kernel with (policy.settled for
lowest-latency), and the main thread's pace (appliance.edge.pace)."""
from dataclasses import replace

import pytest

from appliance.core.detect import DetectParams
from appliance.core.links import DEAD_WAKE, DOWN_QUIET_NS, LinkParams, WakeBounds
from appliance.core.policy import LOWEST_LATENCY, ClassPolicy, ClassState, LinkView, Prediction, settled
from appliance.edge.pace import ReadingPace
from tests.unit.test_core import BAD, LINKS, MS, T0, Clock, Core, start, warmed, win

# Defaults: margin max(500 us, 1 x baseline), jitter threshold 250 us; baseline 30 us,
# jitter 5 us (the kernel's smoothed RTT change starts from it).
QUIET_A = WakeBounds(rtt_above_ns=30_000 + 250_000, rtt_below_ns=0, change_ns=125_000, jitter_ns=5_000)


def test_links_read_calm_are_quiet_with_bounds_at_half_of_each_threshold():
    clock = warmed()
    assert clock.core.quiet(clock.ts) == [QUIET_A, QUIET_A]


@pytest.mark.parametrize("window, why", [
    (win(300), "rtt past half its margin"),
    (win(jitter_us=1000), "jitter past half its threshold"),
    (win(answered=3, lost=2, gap=2), "a loss run at the burst threshold"),
])
def test_a_detector_past_half_its_threshold_ends_quiet(window, why):
    clock = warmed()
    clock.readings(3, [0], [window, win()])
    assert clock.core.quiet(clock.ts) is None, why


def test_one_lost_probe_is_still_quiet():
    clock = warmed()
    clock.health([0], [win(answered=4, lost=1, gap=1), win()])
    assert clock.core.quiet(clock.ts) is not None


def test_not_quiet_while_anything_waits_on_time():
    clock = warmed()
    clock.readings(4, [0], [BAD, win()])          # gray: orders moved to B
    assert clock.core.links.classes[0].link == 1 and clock.core.quiet(clock.ts) is None
    clock.readings(40, [1], [win(), win()])       # A reads calm again; the class waits to fail back
    assert clock.core.quiet(clock.ts) is None


def test_a_dead_standby_is_quiet_armed_to_wake_at_its_first_reply():
    """A carrier out for hours must not keep the daemon reading every tick:
    nothing about the link can change before it answers, and its first
    reply after the silence wakes the daemon (ebpf/lib/wake.h)."""
    clock = warmed()
    clock.readings(3, [0], [win(), win(answered=0, lost=5)], fresh_links=[True, False])
    assert clock.core.quiet(clock.ts) == [QUIET_A, DEAD_WAKE]


@pytest.mark.parametrize("silent_ns, quiet", [(DOWN_QUIET_NS - MS, False), (DOWN_QUIET_NS, True)])
def test_a_link_silent_for_less_than_a_second_keeps_the_tick(silent_ns, quiet):
    """Blinking, not down: its detectors are judged reading by reading."""
    clock = warmed()
    ts = clock.ts + 5 * MS
    clock.core.consume("health", ts, {"links": [[ts, T0], [ts - silent_ns, T0]], "active": [0],
                                      "windows": [win(), win(answered=0, lost=5)], "sender_late_ns": 0})
    assert clock.core.quiet(ts) == ([QUIET_A, DEAD_WAKE] if quiet else None)


def test_a_class_on_its_backup_is_quiet_while_its_first_link_is_dead_not_once_it_answers():
    clock = warmed()
    clock.readings(3, [1], [win(answered=0, lost=5), win()], fresh_links=[False, True])   # the reflex moved it
    assert clock.core.links.classes[0].link == 1
    assert clock.core.quiet(clock.ts) == [DEAD_WAKE, QUIET_A]
    clock.readings(3, [1], [win(), win()])        # A answers again: the hold-down runs on time
    assert clock.core.quiet(clock.ts) is None


def test_a_class_left_on_a_dead_link_is_quiet_the_reflex_moves_it_at_its_next_packet():
    """Without traffic the data path has nothing to move yet, and the
    daemon no move of its own to make; the reflex's event wakes it."""
    clock = warmed()
    clock.readings(3, [0], [win(answered=0, lost=5), win()], fresh_links=[False, True])
    assert clock.core.links.classes[0].link == 0
    assert clock.core.quiet(clock.ts) == [DEAD_WAKE, QUIET_A]


def test_every_link_dead_is_quiet_the_class_stays_put():
    clock = warmed()
    clock.readings(3, [0], [win(answered=0, lost=5)] * 2, fresh_links=[False, False])
    assert clock.core.links.classes[0].link == 0
    assert clock.core.quiet(clock.ts) == [DEAD_WAKE, DEAD_WAKE]


def test_not_quiet_before_ready_or_with_prediction_on():
    assert Clock(Core(start())).core.quiet(0) is None
    predicting = warmed(replace(LINKS, prediction=Prediction(enabled=True)))
    assert predicting.core.quiet(predicting.ts) is None


def test_quiet_holds_for_a_forced_class_only_on_its_forced_link():
    clock = warmed()
    clock.consume("force", {"class_name": "orders", "link_name": "B"})
    clock.readings(2, [1], [win(), win()])
    assert clock.core.quiet(clock.ts) is not None


LOWEST = ClassPolicy(policy=LOWEST_LATENCY, hysteresis_ns=50_000, hysteresis_ratio=0.2)


def view(rtt_us, fresh_ns=10**9):
    return LinkView(fresh_ns, rtt_us * 1000, 0.0)


def test_lowest_latency_is_settled_with_the_rtts_at_which_a_candidate_would_win():
    # on A at 100 us, margin max(50, 20% of 100) = 50 us: B wins above A 100 + ... or below 50.
    bounds = settled([0, 1], 0, [view(100), view(90)], LOWEST, ClassState(link=0), 0)
    assert bounds == [(0, 90_000 + 50_000, 0), (1, None, 100_000 - 50_000)]
    # A spare that is not proven yet but does not beat the current link changes nothing.
    assert settled([0, 1], 0, [view(100), view(90, fresh_ns=0)], LOWEST, ClassState(link=0), 10**9) == bounds


@pytest.mark.parametrize("links, state", [
    ([view(100), view(40)], ClassState(link=0)),                       # B beats A by more than the margin
    ([view(100), view(90)], ClassState(link=0, better_link=1, better_readings=1)),
    ([view(100), LinkView(10**9)], ClassState(link=0)),                # no RTT for B yet
])
def test_lowest_latency_is_not_settled_while_a_move_may_be_coming(links, state):
    assert settled([0, 1], 0, links, LOWEST, state, 0) is None


def test_active_backup_is_settled_on_its_first_link_or_without_preempt():
    links = [view(100), view(100)]
    assert settled([0, 1], 0, links, ClassPolicy(), ClassState(link=0), 0) == []
    assert settled([0, 1], 1, links, ClassPolicy(), ClassState(link=1), 0) is None
    assert settled([0, 1], 1, links, ClassPolicy(preempt=False), ClassState(link=1), 0) == []


DEAD, DRAINED = LinkView(-1), LinkView(10**9, 100_000, 0.0, drained=True)


@pytest.mark.parametrize("first", [DEAD, DRAINED])
def test_a_class_on_its_backup_is_settled_while_no_link_ahead_of_it_is_usable(first):
    assert settled([0, 1, 2], 1, [first, view(100), view(100)], ClassPolicy(), ClassState(link=1), 0) == []
    assert settled([0, 1, 2], 2, [first, view(100), view(100)], ClassPolicy(), ClassState(link=2), 0) is None
    assert settled([0, 1], 0, [view(100), view(100)], ClassPolicy(), ClassState(link=0, forced=1), 0) is None
    assert settled([0, 1], 0, [view(100), first], ClassPolicy(), ClassState(link=0, forced=1), 0) == []


@pytest.mark.parametrize("rule", [ClassPolicy(), LOWEST])
def test_a_class_on_a_drained_link_is_not_settled_while_another_could_take_it(rule):
    assert settled([0, 1], 0, [DRAINED, view(100)], rule, ClassState(link=0), 0) is None
    assert settled([0, 1], 0, [DRAINED, DEAD], rule, ClassState(link=0), 0) == []
    assert settled([0, 1], 0, [DEAD, DEAD], rule, ClassState(link=0), 0) == []
    assert settled([0, 1], 0, [DEAD, view(100)], rule, ClassState(link=0), 0) == []   # the reflex's


def test_a_class_on_a_dead_link_still_waits_for_a_link_ahead_of_it_to_prove_itself():
    assert settled([0, 1, 2], 2, [view(100), DEAD, DEAD], ClassPolicy(), ClassState(link=2), 0) is None


def test_lowest_latency_leaves_a_dead_link_out_of_its_bounds():
    links = [view(100), view(90), DEAD]
    assert settled([0, 1, 2], 0, links, LOWEST, ClassState(link=0), 0) == \
        [(0, 90_000 + 50_000, 0), (1, None, 100_000 - 50_000)]
    assert settled([0, 2], 0, [view(100), DEAD, DEAD], LOWEST, ClassState(link=0), 0) == []


def test_a_lowest_latency_class_tightens_its_links_bounds():
    params = replace(LINKS, class_names=["orders", "quotes"], class_links=[[0, 1], [1, 0]],
                     class_policies=[ClassPolicy(), LOWEST])
    clock = warmed(params, active=(0, 1))
    clock.readings(3, [0, 1], [win(30), win(60)])   # quotes on B at 60 us; A at 30 does not beat it by 50
    wakes = clock.core.quiet(clock.ts)
    assert wakes[1].rtt_above_ns == 30_000 + 50_000         # B rising past A + margin would start a move
    assert wakes[0].rtt_below_ns == 60_000 - 50_000         # as would A falling under B - margin
    assert wakes[0].rtt_above_ns == QUIET_A.rtt_above_ns and wakes[1].rtt_below_ns == 0


# -- the pace ---------------------------------------------------------------
BOUNDS = [WakeBounds(1, 0, 1)]


def test_pace_reads_every_tick_until_quiet_then_seldom_arming_once():
    pace = ReadingPace(tick_s=0.005, quiet_s=0.05, settle_s=0.02)
    assert pace.due(0.0)
    assert pace.read(0.0, None) is None and pace.next_s == 0.005
    assert pace.read(0.005, BOUNDS) == BOUNDS and pace.next_s == pytest.approx(0.055)
    assert not pace.due(0.05) and pace.due(0.055)
    assert pace.read(0.055, BOUNDS) is None        # the kernel still holds them, armed
    assert pace.read(0.105, [WakeBounds(2, 0, 1)]) == [WakeBounds(2, 0, 1)]


def test_a_wake_reads_at_once_then_every_tick_until_settled_and_rearms():
    pace = ReadingPace(tick_s=0.005, quiet_s=0.05, settle_s=0.02)
    pace.read(0.0, BOUNDS)
    pace.woken(0.01, disarmed=True)
    assert pace.due(0.01)
    assert pace.read(0.01, BOUNDS) is None and pace.next_s == pytest.approx(0.015)   # settling
    assert pace.read(0.03, BOUNDS) == BOUNDS and pace.next_s == pytest.approx(0.08)  # re-armed


def test_a_new_jitter_seed_alone_does_not_rearm():
    """The kernel smooths RTT changes itself once armed: the daemon's own
    estimate only seeds it, so a quiet reading that moved only the seed
    leaves the kernel's running value be."""
    pace = ReadingPace(tick_s=0.005, quiet_s=0.05, settle_s=0.02)
    pace.read(0.0, [WakeBounds(1, 0, 1, jitter_ns=7)])
    assert pace.read(0.05, [WakeBounds(1, 0, 1, jitter_ns=9)]) is None
    assert pace.read(0.10, [WakeBounds(1, 0, 2, jitter_ns=9)]) == [WakeBounds(1, 0, 2, jitter_ns=9)]


def test_another_input_reads_soon_but_keeps_the_arming():
    pace = ReadingPace(tick_s=0.005, quiet_s=0.05, settle_s=0.02)
    pace.read(0.0, BOUNDS)
    pace.woken(0.01, disarmed=False)
    assert pace.due(0.01)
    assert pace.read(0.04, BOUNDS) is None and pace.next_s == pytest.approx(0.09)


def test_the_pace_counts_readings_quiet_ones_and_kernel_wakes():
    pace = ReadingPace(tick_s=0.005, quiet_s=0.05, settle_s=0.02)
    pace.read(0.0, None)
    pace.read(0.005, BOUNDS)
    assert pace.quiet_now
    pace.woken(0.01, disarmed=True)
    assert not pace.quiet_now
    pace.woken(0.011, disarmed=False)   # an operator's command: no kernel wake
    pace.read(0.011, BOUNDS)
    assert (pace.readings, pace.quiet_readings, pace.wakes) == (3, 1, 1)


@pytest.mark.parametrize("kind, events, ends_quiet", [
    ("drain", [], True),
    ("carrier", [], True),
    ("feed-lines", ["line-health"], True),      # the feed detector's evidence changed
    ("feed-lines", ["gap-lost"], False),        # feed bookkeeping, every 10 ms: not the links'
    ("arb-event", ["gap"], False),
    ("health", [], False),
])
def test_the_daemon_ends_a_quiet_pace_on_what_may_change_a_link_decision(kind, events, ends_quiet):
    from types import SimpleNamespace

    from appliance.core import config
    from appliance.core.decision import Decision
    from appliance.daemon import Daemon
    from lab.topology import render_config
    from tests.unit.test_daemon_errors import ListLog

    daemon = Daemon(config.parse(render_config(), "lab"), ListLog())
    daemon.core = SimpleNamespace(consume=lambda *_: [Decision(0, e, {}) for e in events])
    daemon.pace.read(0.0, BOUNDS)
    assert daemon.pace.quiet_now
    daemon._consume(kind, 0)
    assert daemon.pace.quiet_now is not ends_quiet
