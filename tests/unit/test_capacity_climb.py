"""The capacity bench's search (bench/capacity.py Climb) and how it names a
limit, against a simulated gateway: no root, no lab."""
import pytest

from bench import capacity


def run_climb(capacity_pps: float, generator_pps: float = 1e9, busy: float = 0.5) -> capacity.Climb:
    """Climb against a gateway that loses nothing up to capacity_pps and a
    generator that cannot offer more than generator_pps."""
    c = capacity.Climb("fastpath")
    while c.rate:
        rate = round(c.rate)
        reached = rate <= generator_pps
        lost = 0 if rate <= capacity_pps else 7
        c.record({"rate_pps": rate, "reached": reached, "passed": reached and not lost, "lost": lost, "extra": 0,
                  "gateway_core_busy": busy})
    return c


@pytest.mark.parametrize("capacity_pps", [60_000, 123_456, 777_000])
def test_the_climb_ends_between_the_capacity_and_one_bisection_short_of_it(capacity_pps):
    c = run_climb(capacity_pps)
    result = c.result()
    low, high = result["max_lossless_pps"], result["first_failed_step"]["rate_pps"]
    assert low <= capacity_pps < high
    # the first bracket, one RATE_FACTOR wide, halved BISECT_STEPS times
    first_failure = next(s["rate_pps"] for s in result["steps"] if not s["passed"])
    assert high - low <= first_failure * (1 - 1 / capacity.RATE_FACTOR) / 2 ** capacity.BISECT_STEPS + 1
    assert all(s["passed"] == (s["rate_pps"] <= capacity_pps) for s in result["steps"])


def test_a_gateway_that_loses_with_its_core_partly_idle_is_named_a_ring_limit():
    assert run_climb(100_000, busy=0.55).result()["limit"] == "gateway-ring"
    assert run_climb(100_000, busy=0.97).result()["limit"] == "gateway-core"


def test_a_generator_that_cannot_offer_the_rate_is_the_limit_not_the_gateway():
    result = run_climb(10e6, generator_pps=300_000).result()
    assert result["limit"] == "generator"
    assert result["max_lossless_pps"] <= 300_000


def test_duplicates_end_the_climb_as_a_defect():
    c = capacity.Climb("arbitration")
    c.record({"rate_pps": capacity.START_PPS, "reached": True, "passed": False, "lost": 0, "extra": 3,
              "gateway_core_busy": 0.2})
    assert c.rate is None
    assert c.result()["limit"] == "duplicates"
    assert c.result()["max_lossless_pps"] is None


def test_the_climb_stops_at_its_ceiling():
    result = run_climb(1e12).result()
    assert result["limit"] == "ceiling"
    assert result["max_lossless_pps"] <= capacity.MAX_PPS


def test_one_lossy_step_is_run_again_and_the_second_run_decides():
    c = capacity.Climb("kernel")
    step = {"rate_pps": capacity.START_PPS, "reached": True, "extra": 0, "gateway_core_busy": 0.5}
    c.record({**step, "passed": False, "lost": 40})
    assert c.rate == capacity.START_PPS, "the same rate again"
    c.record({**step, "passed": True, "lost": 0})
    assert c.result()["max_lossless_pps"] == capacity.START_PPS
    assert c.rate == capacity.START_PPS * capacity.RATE_FACTOR
    assert [s.get("retried", False) for s in c.result()["steps"]] == [True, False]
