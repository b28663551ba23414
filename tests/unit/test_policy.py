"""Each class's policy as a pure function: replayable, no root."""
from appliance.core.detect import Symptoms
from appliance.core.policy import (
    LOWEST_LATENCY,
    ClassPolicy,
    ClassState,
    LinkObservation,
    LinkView,
    Prediction,
    decide,
    fresh_for_ns,
    relieves,
)

MS = 1_000_000
US = 1000
DEAD, HOLD = 3 * MS, 1000 * MS
NOW = 10_000 * MS
BACKUP = ClassPolicy()
LATENCY = ClassPolicy(policy=LOWEST_LATENCY, hysteresis_ns=50 * US, hysteresis_ratio=0.2, confirm=3,
                      min_dwell_ns=500 * MS)
PREDICTING = Prediction(enabled=True, threshold=0.8)


def obs(fresh_for_ms=None, carrier=True, nexthop=True, age_ms=0.5):
    if fresh_for_ms is None:
        return LinkObservation(carrier, nexthop, NOW - 50 * MS, NOW - 60 * MS)   # silent 50 ms
    return LinkObservation(carrier, nexthop, int(NOW - age_ms * MS), NOW - fresh_for_ms * MS)


def view(fresh_for_ms=5000, rtt_us=None, loss=None, **kw):
    return LinkView(fresh_for_ns=-1 if fresh_for_ms is None else fresh_for_ms * MS,
                    rtt_ns=None if rtt_us is None else rtt_us * US, loss=loss, **kw)


def sick(rtt=0.0, loss=0.0, jitter=0.0, feed=False, quorum=2):
    """Symptoms from severities (value over threshold: above 1 trips)."""
    return Symptoms((rtt, loss, jitter, float(feed)), (rtt > 1, loss > 1, jitter > 1, feed), quorum)


GRAY = sick(rtt=6.0, jitter=4.0)    # a delay fault: rtt and jitter trip
CLEAN = sick(rtt=0.1, jitter=0.1)


def move(links, current, rule=BACKUP, prefs=None, state=ClassState(), now=NOW, prediction=Prediction(), held=False):
    """(cause, to_link) of the class's move now, or None."""
    sw, _ = decide(0, prefs or list(range(len(links))), current, links, rule, state, now, HOLD, prediction, held)
    return sw and (sw.cause, sw.to_link)


def test_fresh_for_mirrors_the_data_path_test():
    assert fresh_for_ns(obs(5), NOW, DEAD) == 5 * MS
    assert fresh_for_ns(obs(None), NOW, DEAD) == -1
    assert fresh_for_ns(obs(5, carrier=False), NOW, DEAD) == -1
    assert fresh_for_ns(obs(5, nexthop=False), NOW, DEAD) == -1
    assert fresh_for_ns(LinkObservation(True, True, 0, 0), NOW, DEAD) == -1   # never replied


# -- active-backup -------------------------------------------------------------
def test_no_failback_before_holddown():
    assert move([view(999), view(5000)], 1) is None


def test_failback_once_preferred_held_fresh_for_holddown():
    sw, state = decide(0, [0, 1], 1, [view(1000), view(5000)], BACKUP, ClassState(), NOW, HOLD)
    assert (sw.class_id, sw.from_link, sw.to_link, sw.cause, sw.fresh_for_ns) == (0, 1, 0, "failback", 1000 * MS)
    assert (state.link, state.moved_ns) == (0, NOW)


def test_never_moves_to_a_less_preferred_link():
    # Current is the preferred link, even though it is stale: the reflex in
    # the data path moves traffic away, never this policy.
    assert move([view(None), view(5000)], 0) is None


def test_flapping_preferred_link_does_not_pull_traffic_back():
    # fresh_since restarts at every break, so a link that flaps every 500 ms
    # never accumulates the hold-down.
    assert move([view(500), view(5000)], 1) is None


def test_moves_to_the_best_held_link_among_several():
    assert move([view(100), view(2000), view(5000)], 2) == ("failback", 1)


def test_preference_order_is_the_class_s_own():
    assert move([view(2000), view(2000)], 1, prefs=[1, 0]) is None
    assert move([view(2000), view(2000)], 1, prefs=[0, 1]) == ("failback", 0)


def test_without_preempt_a_class_stays_on_the_backup_until_it_fails():
    assert move([view(5000), view(5000)], 1, rule=ClassPolicy(preempt=False)) is None


def test_a_suppressed_gray_drained_or_predicted_link_is_never_a_failback_target():
    for bad in (dict(suppressed=True), dict(gray=True), dict(drained=True), dict(predicted=0.9)):
        assert move([view(5000, **bad), view(5000)], 1, prediction=PREDICTING) is None, bad


def test_a_gray_current_link_moves_to_the_best_healthy_standby():
    links = [view(5000, gray=True, symptoms=GRAY), view(10, gray=True, symptoms=GRAY),
             view(10, suppressed=True, symptoms=CLEAN), view(10, symptoms=CLEAN), view(10, symptoms=CLEAN)]
    assert move(links, 0) == ("gray", 3)


def test_a_gray_link_is_left_only_for_a_standby_that_relieves_it():
    def gray_move(current, standby):
        sw, state = decide(0, [0, 1], 0, [view(5000, gray=True, symptoms=current), view(5000, symptoms=standby)],
                           BACKUP, ClassState(), NOW, HOLD)
        assert state.gray_held == (sw is None)
        return sw and sw.cause

    assert gray_move(GRAY, CLEAN) == "gray"
    # The standby shares the symptoms (the gateway's receive core overloaded):
    # close to the gray link's, though under the threshold.
    assert gray_move(sick(loss=1.5, jitter=1.6), sick(loss=0.9, jitter=0.81)) is None
    assert gray_move(sick(loss=1.5, jitter=1.6), sick(loss=0.75, jitter=0.8)) == "gray"   # at half: relieved
    # A gray link clearing (nothing trips now): the move would fix nothing.
    assert gray_move(sick(jitter=0.7), CLEAN) is None
    # Only the detectors the standby relieves count, and they must make a
    # quorum: one detector alone can be noise.
    assert gray_move(sick(loss=3.0, jitter=1.2), sick(jitter=1.1)) is None
    assert gray_move(sick(rtt=2.0, loss=3.0, jitter=1.2), sick(jitter=1.1)) == "gray"
    assert gray_move(sick(rtt=2.0, loss=3.0, jitter=1.2), sick(rtt=1.5, jitter=1.1)) is None
    assert gray_move(sick(feed=True, jitter=2.0), sick(jitter=0.2)) == "gray"
    assert gray_move(sick(feed=True, jitter=2.0), sick(feed=True, jitter=0.2)) is None
    assert gray_move(sick(rtt=2.0, loss=2.0, jitter=2.0, quorum=3), CLEAN) == "gray"
    assert gray_move(sick(rtt=2.0, loss=2.0, jitter=2.0, quorum=3), sick(loss=1.5)) is None
    assert gray_move(sick(rtt=4.0, quorum=1), sick(rtt=1.9)) == "gray"
    assert gray_move(sick(rtt=4.0, quorum=1), sick(rtt=2.1)) is None


def test_without_symptoms_to_compare_a_gray_link_is_kept():
    assert not relieves(view(5000), view(5000, gray=True, symptoms=GRAY))
    assert not relieves(view(5000, symptoms=CLEAN), view(5000, gray=True))


def test_a_held_class_moves_once_the_standby_relieves_it_and_the_hold_ends_with_the_gray():
    shared = [view(5000, gray=True, symptoms=sick(loss=2.0, jitter=2.0)), view(5000, symptoms=sick(loss=1.8, jitter=1.9))]
    _, held = decide(0, [0, 1], 0, shared, BACKUP, ClassState(), NOW, HOLD)
    assert held.gray_held
    again, same = decide(0, [0, 1], 0, shared, BACKUP, held, NOW + 5 * MS, HOLD)
    assert again is None and same is held          # no new state while nothing changes
    blinked = [shared[0], view(None, symptoms=sick(loss=1.8, jitter=1.9))]   # a late heartbeat under load
    assert decide(0, [0, 1], 0, blinked, BACKUP, held, NOW + 5 * MS, HOLD)[1] is held   # still the same stay
    cleared = [view(5000, symptoms=CLEAN), view(5000, symptoms=CLEAN)]
    assert not decide(0, [0, 1], 0, cleared, BACKUP, held, NOW + 10 * MS, HOLD)[1].gray_held
    apart = [shared[0], view(5000, symptoms=CLEAN)]
    sw, moved = decide(0, [0, 1], 0, apart, BACKUP, held, NOW + 10 * MS, HOLD)
    assert (sw.cause, sw.to_link, moved.gray_held) == ("gray", 1, False)


def test_a_gray_link_is_kept_without_a_healthy_standby_and_a_dead_one_is_the_reflex_s():
    assert move([view(5000, gray=True), view(5000, gray=True)], 0) is None
    assert move([view(None, gray=True), view(5000)], 0) is None


def test_a_drained_link_is_left_for_a_healthy_standby_first_then_any_usable():
    assert move([view(5000, drained=True), view(5000, gray=True), view(5000)], 0) == ("drained", 2)
    assert move([view(5000, drained=True), view(5000, gray=True), view(None)], 0) == ("drained", 1)
    assert move([view(5000, drained=True), view(None)], 0) is None


def test_a_forced_class_stays_pinned_and_returns_to_its_link_after_the_holddown():
    pinned = ClassState(link=1, forced=1)
    assert move([view(5000), view(5000)], 1, state=pinned) is None           # no failback while forced
    back = ClassState(link=0, forced=1)                                      # the reflex moved it away
    assert move([view(5000), view(999)], 0, state=back) is None
    assert move([view(5000), view(1000)], 0, state=back) == ("forced", 1)


# -- lowest-latency --------------------------------------------------------------
def latency_links(current_us, other_us, **other):
    return [view(5000, rtt_us=current_us, loss=0.0), view(5000, rtt_us=other_us, loss=0.0, **other)]


def run_readings(links, n, state=ClassState(link=0), rule=LATENCY, start=NOW, held=False):
    """Feeds n readings 5 ms apart; (the readings at which it moved, state)."""
    moves = []
    for i in range(n):
        sw, state = decide(0, [0, 1], state.link, links, rule, state, start + i * 5 * MS, HOLD, held=held)
        if sw:
            moves.append((i, sw))
    return moves, state


def test_lowest_latency_stays_within_the_hysteresis_margin():
    # margin = max(50 us, 0.2 x 300 us) = 60 us; 59 us better is within it
    assert run_readings(latency_links(300, 241), 50)[0] == []


def test_lowest_latency_moves_beyond_the_margin_after_confirm_readings():
    moves, state = run_readings(latency_links(300, 200), 10)
    [(at, sw)] = moves
    assert at == LATENCY.confirm - 1 and (sw.cause, sw.to_link) == ("lower-latency", 1)
    assert sw.detail == {"rtt_from_us": 300.0, "rtt_to_us": 200.0, "margin_us": 60.0, "better_readings": 3}
    assert state.link == 1


def test_one_reading_within_the_margin_restarts_the_count():
    state = ClassState(link=0)
    for rtt_us in (200, 200, 290, 200, 200):
        sw, state = decide(0, [0, 1], 0, latency_links(300, rtt_us), LATENCY, state, NOW, HOLD)
        assert sw is None
    assert state.better_readings == 2


def test_lowest_latency_waits_out_the_dwell_since_the_last_move():
    just_moved = ClassState(link=0, moved_ns=NOW)
    moves, _ = run_readings(latency_links(300, 200), 200, state=just_moved)
    assert [at for at, _ in moves] == [100]   # 500 ms of dwell at 5 ms a reading, though confirmed at 2


def test_a_move_by_the_reflex_starts_the_dwell():
    state = ClassState(link=1)                 # the core last saw it on 1; the reading says 0
    _, state = decide(0, [0, 1], 0, latency_links(300, 200), LATENCY, state, NOW, HOLD)
    assert state.moved_ns == NOW and state.link == 0


def test_lowest_latency_never_moves_onto_a_bad_link():
    for bad in (dict(suppressed=True), dict(gray=True), dict(drained=True)):
        assert run_readings(latency_links(300, 20, **bad), 50)[0] == [], bad
    stale = [view(5000, rtt_us=300, loss=0.0), view(None, rtt_us=20, loss=0.0)]
    never_answered = [view(5000, rtt_us=300, loss=0.0), view(5000)]
    just_back = [view(5000, rtt_us=300, loss=0.0), view(999, rtt_us=20, loss=0.0)]
    for links in (stale, never_answered, just_back):
        assert run_readings(links, 50)[0] == []


def test_lowest_latency_counts_nothing_while_the_host_is_held():
    moves, state = run_readings(latency_links(300, 200), 20, held=True)
    assert moves == [] and state.better_readings == 0


def test_lowest_latency_leaves_a_gray_link_for_the_fastest_healthy_one():
    links = [view(5000, rtt_us=100, loss=0.0, gray=True, symptoms=sick(loss=3.0, jitter=2.0)),
             view(5000, rtt_us=400, loss=0.0, symptoms=CLEAN), view(5000, rtt_us=300, loss=0.0, symptoms=CLEAN),
             view(5000, symptoms=CLEAN)]
    assert move(links, 0, rule=LATENCY) == ("gray", 2)


# -- the prediction hook -------------------------------------------------------------
def predicted_links(standby_rtt_us, standby_loss, probability=0.9):
    return [view(5000, rtt_us=100, loss=0.01, predicted=probability), view(5000, rtt_us=standby_rtt_us,
                                                                           loss=standby_loss)]


def test_prediction_is_off_by_default():
    assert move(predicted_links(50, 0.0, probability=1.0), 0, prefs=[0, 1]) is None


def test_a_predicted_failure_moves_a_class_early_to_a_standby_no_worse():
    sw, _ = decide(0, [0, 1], 0, predicted_links(100, 0.01), BACKUP, ClassState(), NOW, HOLD, PREDICTING)
    assert (sw.cause, sw.to_link, sw.detail) == ("predicted", 1, {"probability": 0.9, "threshold": 0.8})


def test_a_predicted_failure_never_moves_a_class_onto_a_worse_or_unknown_link():
    assert move(predicted_links(101, 0.0), 0, prediction=PREDICTING) is None          # slower
    assert move(predicted_links(50, 0.02), 0, prediction=PREDICTING) is None          # lossier
    assert move(predicted_links(None, None), 0, prediction=PREDICTING) is None        # no evidence
    assert move(predicted_links(50, 0.0, probability=0.8), 0, prediction=PREDICTING) is None   # not above
    assert move([view(5000, rtt_us=100, loss=0.01, predicted=0.9), view(5000, rtt_us=50, loss=0.0, gray=True)],
                0, prediction=PREDICTING) is None                                     # not healthy
