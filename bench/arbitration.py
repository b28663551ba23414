"""`python -m bench.arbitration [--json]`: the arbitration measurement contract,
in a lab of its own.

- scenarios: each FeedPlan of lab.feedrun.SCENARIOS published
  through a lab with the daemon arbitrating; what the trader got and the gaps
  the daemon reported.
- fastpath_ns: each arbitration path's cost against an empty XDP program,
  side by side (bench.progcost says how).
- throughput: the highest-rate plan the lab publisher sustains, delivered
  exactly once.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench import progcost
from lab import feedrun, topology
from lab.feedplan import FeedPlan
from lab.processes import DaemonProcess

THROUGHPUT_PLAN = FeedPlan(protocol="moldudp64", messages=300_000, rate=300_000, batch_a=8, batch_b=8,
                           heartbeat_every=50_000, end_of_session=True, session="THROUGHPUT", seed=11)
ROUNDS, CALLS_PER_ROUND = 50, 20


def ns_per_packet() -> dict:
    _arbiter, cases = progcost.arbitration_cases(ROUNDS * CALLS_PER_ROUND)  # owns the programs
    return {"fastpath_ns": progcost.measure(cases, ROUNDS, CALLS_PER_ROUND)}


def run() -> dict:
    out = ns_per_packet()
    lab = topology.up()
    daemon = None
    try:
        with tempfile.TemporaryDirectory(prefix="tp-arbitration-") as tmp:
            work = Path(tmp)
            daemon = DaemonProcess(lab, topology.write_config(lab, feeds=True), work / "daemon.log", stats_interval_s=60)
            daemon.wait_for("ready", timeout_s=60)
            out["scenarios"] = {name: feedrun.run_scenario(lab, daemon, name, work / name)
                                for name in feedrun.SCENARIOS}
            t = feedrun.run_feed(lab, THROUGHPUT_PLAN, work, timeout_s=60)
            r = t.result
            out["throughput"] = {
                "messages": r["sent"], "delivered": r["delivered"], "delivered_twice": r["delivered_twice"],
                "batch": THROUGHPUT_PLAN.batch_a, "rate_requested": THROUGHPUT_PLAN.rate,
                "msgs_per_s": round(t.published["rate"]),
                "packets_per_s_per_line": round(t.published["packets"]["A"] / t.published["duration_s"]),
                "publisher_late_p99_us": t.published["late_p99_us"], "socket_drops": t.received["socket_drops"]}
    finally:
        if daemon:
            daemon.stop()
        topology.down(lab.name)
    return out


def summary(result: dict) -> str:
    lines = ["scenario        sent  delivered  twice  out-of-order  gaps expected / reported"]
    for name, r in result["scenarios"].items():
        lines.append(f"{name:<14}{r['sent']:>6}{r['delivered']:>11}{r['delivered_twice']:>7}{r['out_of_order']:>14}"
                     f"  {len(r['gaps_expected'])} / {len(r['gaps_reported'])}"
                     f"{'' if r['gaps_expected'] == r['gaps_reported'] else '  MISMATCH'}")
    lines.append("ns/packet, p50 of rounds (ratio to an empty XDP program): " + ", ".join(
        f"{k} {v['ns']:.0f} ({v['ratio']}x)" for k, v in result["fastpath_ns"].items()))
    t = result["throughput"]
    lines.append(f"throughput: {t['msgs_per_s']} msgs/s, {t['packets_per_s_per_line']} packets/s per line, "
                 f"{t['delivered']}/{t['messages']} delivered, {t['delivered_twice']} twice")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.arbitration", description=(
        "A/B arbitration: the six line-fault scenarios (sent, delivered, delivered_twice, out_of_order, "
        "gaps expected/reported), ns/packet against an empty XDP program, lab throughput"))
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    result = run()
    print(json.dumps(result) if args.json else summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
