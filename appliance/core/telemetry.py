"""Pure summaries of what the data path counts: RTT percentiles from the
kernel's log-scale histogram, probe loss between two readings."""
from __future__ import annotations

from appliance import layout
from appliance.core import stats


def histogram_bound_us(counts: list[int], q: float) -> float | None:
    """Upper bound (us) of the bucket holding the q-quantile, so the figure
    never understates: the bucket of the sample at the nearest rank
    (stats.rank; q is taken to the per mille, 0.99 -> 990, so the rank is
    integer arithmetic). None without samples. The last bucket is
    open-ended: its lower bound is returned."""
    total = sum(counts)
    if not total:
        return None
    target = stats.rank(total, round(q * 1000))
    seen = 0
    for bucket, n in enumerate(counts):
        seen += n
        if seen >= target:
            low, high = layout.hist_bucket_bounds_us(bucket)
            return low if high == float("inf") else high
    raise AssertionError("unreachable: rank <= total")


def diff(now: list[int], before: list[int]) -> list[int]:
    return [a - b for a, b in zip(now, before)]
