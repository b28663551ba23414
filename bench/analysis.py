"""Pure analysis for the benchmarks: no I/O, no clocks, so every figure in a
report can be recomputed from the raw arrays a run saved."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from appliance.core.stats import PER_MILLE, nearest_rank

# How long before a fault its trial's accounting starts: a packet meant to
# leave just before the fault but lost belongs to that fault.
PRE_FAULT_NS = 10_000_000


def schedule_start_ns(arrivals: np.ndarray, period_ns: float) -> float:
    """The sender's schedule origin (seq 0's intended send time), from the
    intended send times the received packets carry (the p50 over them)."""
    offsets = np.sort(arrivals["sent_ns"] - arrivals["seq"].astype(np.float64) * period_ns)
    return float(nearest_rank(offsets, PER_MILLE["p50"]))


def stream_trials(arrivals: np.ndarray, issued: int, period_ns: float, fault_ns: Sequence[int],
                  clear_ns: Sequence[int], standby_ifindex: int) -> dict:
    """Per fault: the first packet that reached the exchange over the standby
    (failover_us, fault -> arrival; None if none did before the fault was
    cleared) and the packets lost (sequence never received) whose intended
    send time falls in that trial: from PRE_FAULT_NS before its fault to the
    same point before the next one (of which lost_after_clear were meant to
    leave after the fault was cleared: losses of the way back). Losses outside every trial are counted
    apart, as are duplicates and reorderings over the whole stream."""
    seqs = arrivals["seq"].astype(np.int64)
    start = schedule_start_ns(arrivals, period_ns) if len(arrivals) else 0.0
    received = np.zeros(issued, dtype=bool)
    in_range = seqs[(seqs >= 0) & (seqs < issued)]
    received[in_range] = True
    lost_seqs = np.flatnonzero(~received)
    lost_at = start + lost_seqs * period_ns
    bounds = [f - PRE_FAULT_NS for f in fault_ns] + [np.inf]
    lost = [int(np.count_nonzero((lost_at >= bounds[i]) & (lost_at < bounds[i + 1]))) for i in range(len(fault_ns))]
    lost_after_clear = [int(np.count_nonzero((lost_at >= clear_ns[i]) & (lost_at < bounds[i + 1])))
                        for i in range(len(fault_ns))]
    standby = arrivals[arrivals["ifindex"] == standby_ifindex]
    failover_us = []
    for f, c in zip(fault_ns, clear_ns):
        t = standby["t_ns"][(standby["t_ns"] >= f) & (standby["t_ns"] < c)]
        failover_us.append(round((int(t.min()) - f) / 1000, 1) if len(t) else None)
    unique = np.unique(in_range)
    return {
        "failover_us": failover_us,
        "lost": lost,
        "lost_after_clear": lost_after_clear,
        "lost_outside_trials": int(len(lost_seqs) - sum(lost)),
        "duplicated": int(len(in_range) - len(unique)),
        "reordered": int(np.count_nonzero(np.diff(seqs) < 0)),
    }


def first_after(times_ns: Sequence[int], fault_ns: Sequence[int], limit_ns: Sequence[int]) -> list[float | None]:
    """Per fault, µs from it to the first time in [fault, limit); None if none."""
    t = np.sort(np.asarray(times_ns, dtype=np.int64))
    out: list[float | None] = []
    for f, end in zip(fault_ns, limit_ns):
        i = np.searchsorted(t, f)
        out.append(round((int(t[i]) - f) / 1000, 1) if i < len(t) and t[i] < end else None)
    return out


def state_at(transitions: Sequence[dict], link: str, t_ns: int) -> str | None:
    """A session's state at t_ns from its logged transitions ({"link",
    "mono_ns", "to"}); None before the first."""
    before = [t for t in transitions if t["link"] == link and t["mono_ns"] < t_ns]
    return max(before, key=lambda t: t["mono_ns"])["to"] if before else None


def outside(times_ns: Sequence[int], windows: Sequence[tuple[int, int]]) -> int:
    """How many times fall in none of the [start, end) windows: events with no fault behind them."""
    return sum(1 for t in times_ns if not any(s <= t < e for s, e in windows))


def cpu_percent_ns(run_ns_before: int, run_ns_after: int, wall_s: float) -> float:
    """Run time over a wall interval, as % of one core."""
    return round(100.0 * (run_ns_after - run_ns_before) / 1e9 / wall_s, 2)
