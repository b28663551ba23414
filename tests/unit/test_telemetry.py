import random

import pytest

from appliance import layout
from appliance.core.stats import PER_MILLE, nearest_rank
from appliance.core.telemetry import histogram_bound_us


def bucket_of(us: int) -> int:
    """Python twin of tp_us_bucket() in ebpf/lib/hist.h."""
    if us < 4:
        return us
    lg = us.bit_length() - 1
    return min(4 * (lg - 1) + ((us >> (lg - 2)) & 3), layout.HIST_BUCKETS - 1)


@pytest.mark.parametrize("us", [0, 1, 3, 4, 7, 8, 9, 15, 16, 100, 1042, 65535, 114687, 114688, 10**7])
def test_bucket_bounds_contain_the_value(us):
    low, high = layout.hist_bucket_bounds_us(bucket_of(us))
    assert low <= us < high


def test_buckets_tile_the_axis_without_gaps():
    bounds = [layout.hist_bucket_bounds_us(b) for b in range(layout.HIST_BUCKETS)]
    assert bounds[0][0] == 0
    assert all(hi == next_lo for (_, hi), (next_lo, _) in zip(bounds, bounds[1:]))


def test_percentile_reports_bucket_upper_bound():
    counts = [0] * layout.HIST_BUCKETS
    counts[bucket_of(50)] = 98
    counts[bucket_of(900)] = 2
    assert histogram_bound_us(counts, 0.5) == layout.hist_bucket_bounds_us(bucket_of(50))[1]
    assert histogram_bound_us(counts, 0.99) == layout.hist_bucket_bounds_us(bucket_of(900))[1]
    assert histogram_bound_us([0] * layout.HIST_BUCKETS, 0.5) is None


def reported_bound(bucket: int) -> float:
    low, high = layout.hist_bucket_bounds_us(bucket)
    return low if high == float("inf") else high


def test_bound_is_the_bucket_of_the_exact_nearest_rank_sample():
    r = random.Random(3)
    for _ in range(200):
        # Log-uniform over the whole axis, open-ended last bucket included; few samples: ranks matter.
        samples = [int(2 ** r.uniform(0, 24)) for _ in range(r.randrange(1, 300))]
        counts = [0] * layout.HIST_BUCKETS
        for us in samples:
            counts[bucket_of(us)] += 1
        ordered = sorted(samples)
        for per_mille in list(PER_MILLE.values()) + [70, 35]:
            exact = nearest_rank(ordered, per_mille)
            assert histogram_bound_us(counts, per_mille / 1000) == reported_bound(bucket_of(exact)), \
                (samples, per_mille)
