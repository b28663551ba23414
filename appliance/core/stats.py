"""Nearest-rank percentiles, the one definition behind every exact percentile
twinpath, its lab and its bench report: no interpolation, so each figure is a
value that was measured. (The daemon sees only the kernel's log-scale
histograms: telemetry.histogram_bound_us applies the same rank to buckets.)"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

# Per mille, in integers: float quantiles of n samples can land one rank off
# (0.07 * 100 is 7.000000000000001, whose ceiling is 8).
PER_MILLE = {"min": 0, "p50": 500, "p90": 900, "p99": 990, "p999": 999, "max": 1000}


def rank(n: int, per_mille: int) -> int:
    """The 1-based nearest rank, ceil(per_mille / 1000 * n), at least 1 (the
    first sample for per mille 0)."""
    return max(-(-n * per_mille // 1000), 1)


def nearest_rank(ordered: Sequence, per_mille: int):
    """The sample at rank(len(ordered), per_mille) of `ordered`, which is
    sorted (a list or a numpy array)."""
    return ordered[rank(len(ordered), per_mille) - 1]


def percentiles(values: Iterable[float | None], keys=("p50", "p99", "max")) -> dict[str, float | None]:
    """{key: nearest-rank percentile, rounded to 0.1} over every value that is
    not None; None when there are none."""
    ordered = sorted(float(v) for v in values if v is not None)
    return {k: round(nearest_rank(ordered, PER_MILLE[k]), 1) if ordered else None for k in keys}
