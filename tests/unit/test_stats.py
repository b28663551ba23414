"""appliance.core.stats: the nearest-rank percentile every exact figure uses."""
import math
import random

import numpy as np
import pytest

from appliance.core.stats import PER_MILLE, nearest_rank, percentiles, rank


def brute_force(values, per_mille):
    """The textbook definition: the smallest sample with at least p% of the
    samples at or below it (the smallest sample for p = 0)."""
    ordered = sorted(values)
    for v in ordered:
        if 100 * sum(x <= v for x in ordered) >= per_mille / 10 * len(ordered):
            return v
    raise AssertionError("unreachable")


@pytest.mark.parametrize("per_mille", sorted(PER_MILLE.values()))
def test_one_sample_is_every_percentile(per_mille):
    assert nearest_rank([7], per_mille) == 7


@pytest.mark.parametrize("key,expected", [("min", 1), ("p50", 1), ("p90", 2), ("p99", 2), ("max", 2)])
def test_two_samples(key, expected):
    assert nearest_rank([1, 2], PER_MILLE[key]) == expected


def test_p0_is_the_first_and_p100_the_last():
    ordered = list(range(10, 20))
    assert nearest_rank(ordered, 0) == 10
    assert nearest_rank(ordered, 1000) == 19


def test_p50_of_an_even_count_is_the_lower_middle_never_a_mean():
    assert nearest_rank([1, 2, 3, 4], PER_MILLE["p50"]) == 2
    assert nearest_rank([10, 20], PER_MILLE["p50"]) == 10


def test_rank_is_integer_arithmetic():
    # Where a float quantile lands one rank off: ceil(0.07 * 100) == 8.
    assert math.ceil(0.07 * 100) == 8
    assert rank(100, 70) == 7
    assert rank(100, PER_MILLE["p99"]) == 99
    assert nearest_rank(list(range(1, 101)), PER_MILLE["p99"]) == 99


def test_works_on_numpy_arrays():
    ordered = np.arange(1, 1001)
    assert nearest_rank(ordered, PER_MILLE["p999"]) == 999


def test_agrees_with_the_brute_force_definition():
    r = random.Random(7)
    for _ in range(300):
        values = [r.randrange(50) for _ in range(r.randrange(1, 40))]  # small range: many ties
        ordered = sorted(values)
        for per_mille in list(PER_MILLE.values()) + [r.randrange(1001) for _ in range(5)]:
            assert nearest_rank(ordered, per_mille) == brute_force(values, per_mille), (values, per_mille)


@pytest.mark.parametrize("values,expected", [
    ([100, 1, 4, 3, 2], {"p50": 3.0, "max": 100.0}),   # unsorted input
    ([None, 7, None], {"p50": 7.0, "max": 7.0}),
    ([None], {"p50": None, "max": None}),
    ([], {"p50": None, "max": None}),
    ([0.04, 0.06], {"p50": 0.0, "max": 0.1}),         # rounded to 0.1
])
def test_percentiles_skip_missing_values(values, expected):
    assert percentiles(values, ("p50", "max")) == expected


def test_percentiles_default_keys():
    assert percentiles(range(1, 101)) == {"p50": 50.0, "p99": 99.0, "max": 100.0}
