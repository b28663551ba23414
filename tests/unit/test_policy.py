"""Failback as a pure function: replayable, no root."""
from appliance.core.policy import LinkObservation, failbacks, fresh_for_ns

MS = 1_000_000
DEAD, HOLD = 3 * MS, 1000 * MS
NOW = 10_000 * MS


def link(fresh_for_ms=None, carrier=True, nexthop=True, age_ms=0.5):
    if fresh_for_ms is None:
        return LinkObservation(carrier, nexthop, NOW - 50 * MS, NOW - 60 * MS)   # silent 50 ms
    return LinkObservation(carrier, nexthop, int(NOW - age_ms * MS), NOW - fresh_for_ms * MS)


def test_fresh_for_mirrors_the_data_path_test():
    assert fresh_for_ns(link(5), NOW, DEAD) == 5 * MS
    assert fresh_for_ns(link(None), NOW, DEAD) == -1
    assert fresh_for_ns(link(5, carrier=False), NOW, DEAD) == -1
    assert fresh_for_ns(link(5, nexthop=False), NOW, DEAD) == -1
    assert fresh_for_ns(LinkObservation(True, True, 0, 0), NOW, DEAD) == -1   # never replied


def test_no_failback_before_holddown():
    assert failbacks([[0, 1]], [1], [link(999), link(5000)], NOW, DEAD, HOLD) == []


def test_failback_once_preferred_held_fresh_for_holddown():
    (sw,) = failbacks([[0, 1]], [1], [link(1000), link(5000)], NOW, DEAD, HOLD)
    assert (sw.class_id, sw.from_link, sw.to_link, sw.cause) == (0, 1, 0, "failback")


def test_never_moves_to_a_less_preferred_link():
    # Current is the preferred link, even though it is stale: the reflex in
    # the data path moves traffic away, never this policy.
    assert failbacks([[0, 1]], [0], [link(None), link(5000)], NOW, DEAD, HOLD) == []


def test_flapping_preferred_link_does_not_pull_traffic_back():
    # fresh_since restarts at every break, so a link that flaps every 500 ms
    # never accumulates the hold-down.
    assert failbacks([[0, 1]], [1], [link(500), link(5000)], NOW, DEAD, HOLD) == []


def test_moves_to_the_best_held_link_among_several():
    links = [link(100), link(2000), link(5000)]
    (sw,) = failbacks([[0, 1, 2]], [2], links, NOW, DEAD, HOLD)
    assert sw.to_link == 1


def test_classes_decide_independently():
    links = [link(2000), link(2000)]
    out = failbacks([[0, 1], [1, 0]], [1, 1], links, NOW, DEAD, HOLD)
    assert [(s.class_id, s.to_link) for s in out] == [(0, 0)]
