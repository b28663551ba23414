"""Flap damping as pure functions of (state, time)."""
import pytest

from appliance.core.damping import Damping, DampingParams, flap, merit, reuse_ns, settle

S = 1_000_000_000
P = DampingParams()   # penalty 1000, suppress 2000, reuse 750, half-life 15 s, max suppress 60 s
T0 = 1000 * S


def flaps(*at_s, state=Damping()):
    for t in at_s:
        state = flap(state, P, T0 + int(t * S))
    return state


def test_each_flap_adds_the_penalty_and_the_merit_halves_every_half_life():
    once = flaps(0)
    assert merit(once, P, T0) == 1000 and not once.suppressed
    assert merit(once, P, T0 + 15 * S) == pytest.approx(500)
    assert merit(once, P, T0 + 30 * S) == pytest.approx(250)
    assert merit(flaps(0, 15), P, T0 + 15 * S) == pytest.approx(1500)


def test_two_flaps_never_suppress_three_in_a_row_do():
    assert not flaps(0, 0).suppressed                 # 2000 is not above 2000
    three = flaps(0, 0, 0)
    assert three.suppressed and three.suppressed_ns == T0 and merit(three, P, T0) == 3000


def test_defaults_are_more_careful_than_junos_bfd_backoff_after_more_than_3_flaps_in_15_s():
    assert flaps(0, 5, 10, 15).suppressed             # 4 flaps in 15 s, evenly
    assert flaps(0, 0, 14.9).suppressed               # 3 in under 15 s, the weakest spacing
    assert flaps(0, 10, 20).suppressed                # 3 evenly within 20.8 s
    assert not flaps(0, 0, 15).suppressed             # exactly 2000
    assert not flaps(0, 30, 60, 90).suppressed        # one flap every 30 s


def test_a_suppressed_link_is_reusable_once_its_merit_decays_below_reuse():
    three = flaps(0, 0, 0)
    assert reuse_ns(three, P) == T0 + 30 * S          # 15 s x log2(3000 / 750)
    assert settle(three, P, T0 + 29 * S).suppressed
    reused = settle(three, P, T0 + 30 * S)
    assert not reused.suppressed and merit(reused, P, T0 + 30 * S) <= 750
    assert reuse_ns(reused, P) is None


def test_suppression_never_lasts_longer_than_max_suppress():
    state = flaps(*range(0, 59, 2))                   # a flap every 2 s for a minute
    assert state.suppressed_ns == T0 + 4 * S          # the third flap: 1000 x (1 + 2^(-2/15) + 2^(-4/15))
    assert P.ceiling == pytest.approx(12000)          # 750 x 2^(60 / 15): decays to reuse in 60 s
    assert merit(flaps(*[0] * 20), P, T0) == P.ceiling
    assert reuse_ns(state, P) == T0 + 64 * S          # 60 s after suppression began
    assert settle(state, P, T0 + 63 * S).suppressed
    assert not settle(state, P, T0 + 64 * S).suppressed


def test_a_flap_after_the_suppression_ran_out_starts_a_new_one():
    three = flaps(0, 0, 0)
    again = flap(three, P, T0 + 31 * S)               # ~1000 + 729: below suppress
    assert not again.suppressed
    assert flaps(31, 31, state=three).suppressed_ns == T0 + 31 * S


def test_the_state_is_a_value():
    before = flaps(0)
    flap(before, P, T0)
    assert before == Damping(1000.0, T0, None)


def test_disabled_damping_counts_no_flap_and_suppresses_nothing():
    p = DampingParams(enabled=False)
    s = Damping()
    for i in range(10):
        s = flap(s, p, i * 1_000_000)
    assert s == Damping() and not s.suppressed
