"""Repeats the failover scenarios on one lab and prints percentiles.

    .venv/bin/python bench/failover_runs.py --runs 20 [--interval-us 1000] [--multiplier 3]

Times are fault -> event (detect_us) and fault -> first order over the
standby at the exchange (failover_us), all on CLOCK_MONOTONIC. The machine is
shared: compare runs made side by side, not single figures.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from appliance.lab import scenario, topology


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--interval-us", type=int, default=1000)
    ap.add_argument("--multiplier", type=int, default=3)
    ap.add_argument("--rate", type=int, default=10_000)
    args = ap.parse_args()
    lab = topology.up()
    out = {}
    try:
        for name in scenario.SCENARIOS:
            runs = [scenario.run(name, lab, rate_pps=args.rate, before_s=0.5, after_s=0.5,
                                 interval_us=args.interval_us, multiplier=args.multiplier)
                    for _ in range(args.runs)]
            ok = [r for r in runs if r["failed_over"]]
            stats = {"runs": len(runs), "failed_over": len(ok),
                     "causes": sorted({r["cause"] for r in ok}),
                     "duplicated": sum(r["duplicated"] for r in runs),
                     "reordered": sum(r["reordered"] for r in runs)}
            for key in ("detect_us", "failover_us", "lost"):
                v = np.array([r[key] for r in ok], dtype=float)
                stats[key] = {"p50": float(np.median(v)), "p90": float(np.percentile(v, 90)),
                              "max": float(v.max()), "min": float(v.min())}
            out[name] = stats
    finally:
        topology.down(lab.name)
    print(json.dumps({"interval_us": args.interval_us, "multiplier": args.multiplier,
                      "rate_pps": args.rate, "scenarios": out}, indent=2))


if __name__ == "__main__":
    main()
