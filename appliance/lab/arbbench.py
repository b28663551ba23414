"""`twinpath bench arbitration`: the arbitration measurement contract.

- scenarios: each FeedPlan of appliance.lab.feedrun.SCENARIOS published
  through a lab with the daemon arbitrating; what the trader got and the gaps
  the daemon reported.
- ns_per_packet: the program's own cost from BPF_PROG_TEST_RUN, one packet
  per call (first copies need a fresh sequence each time), with an empty XDP
  program measured the same way, interleaved in rounds, in the same run.
  Per-call figures include the kernel's timer read around the run, which is
  why the empty program is the yardstick: compare ratios, not absolutes.
- throughput: the highest-rate plan the lab publisher sustains, delivered
  exactly once.
"""
from __future__ import annotations

import ipaddress
import tempfile
from pathlib import Path

import numpy as np

from appliance import feedproto
from appliance.bpfsys import prog_test_run
from appliance.lab import feedrun, topology
from appliance.lab.feedplan import FeedPlan
from appliance.lab.scenario import DaemonProcess

ROUNDS, CALLS_PER_ROUND = 50, 200
THROUGHPUT_PLAN = FeedPlan(protocol="moldudp64", messages=300_000, rate=300_000, batch_a=8, batch_b=8,
                           heartbeat_every=50_000, end_of_session=True, session="THROUGHPUT", seed=11)
EMPTY_XDP = b"int empty_xdp(struct xdp_md *ctx) { return XDP_PASS; }"


def _frame(payload: bytes, port: int) -> bytes:
    return feedproto.line_frame(payload, topology.FEED_DST, port, topology.FEED_SOURCES["A"])


def ns_per_packet() -> dict:
    from bcc import BPF
    from appliance.arbitration import Arbiter
    port = topology.FEED_PORTS["moldudp64"]
    arb = Arbiter(hb_dedup_ns=50_000_000)
    arb.write_feed(0, "moldudp64", ipaddress.IPv4Address(topology.FEED_DST), port, 7,
                   "02:00:00:00:01:fe", "02:00:00:00:01:01")
    arb.sync_clock()
    empty = BPF(text=EMPTY_XDP).load_func("empty_xdp", BPF.XDP)
    line_a, line_b = (p.fd for p in arb.lines)
    n = ROUNDS * CALLS_PER_ROUND
    msg = lambda s: feedproto.lab_message("moldudp64", s, 16)
    fresh = [_frame(feedproto.mold_packet("BENCH", s, [msg(s)]), port) for s in range(1, n + 1)]
    # Duplicates: sequences line A already delivered, arriving on line B.
    seen = [_frame(feedproto.mold_packet("BENCH", s, [msg(s)]), port) for s in range(n + 1, 2 * n + 1)]
    for f in seen:
        prog_test_run(line_a, f)
    other = _frame(b"\x00" * 38, 9100)
    kinds = {"empty_xdp": (empty.fd, lambda i: other), "first_copy": (line_a, fresh.__getitem__),
             "duplicate": (line_b, seen.__getitem__), "passthrough": (line_a, lambda i: other)}
    samples = {k: [] for k in kinds}
    for r in range(ROUNDS):
        for kind, (fd, packet) in kinds.items():
            for i in range(r * CALLS_PER_ROUND, (r + 1) * CALLS_PER_ROUND):
                samples[kind].append(prog_test_run(fd, packet(i))[2])
    verdicts = {"first_copy": arb.line_stats(0, 0).won, "duplicate": arb.line_stats(0, 1).lost}
    assert verdicts == {"first_copy": 2 * n, "duplicate": n}, f"bench packets took the wrong path: {verdicts}"
    stats = {k: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)), "n": len(v)}
             for k, v in samples.items()}
    base = stats["empty_xdp"]["p50"]
    return {"ns_per_packet": {k: s["p50"] for k, s in stats.items()},
            "ns_per_packet_detail": stats,
            "ratio_to_empty_xdp": {k: round(s["p50"] / base, 2) for k, s in stats.items()},
            "method": f"BPF_PROG_TEST_RUN, 1 packet per call, {ROUNDS} interleaved rounds of "
                      f"{CALLS_PER_ROUND} calls per kind; p50/p99 of per-call durations"}


def run(json_only: bool = False) -> dict:
    out = ns_per_packet()
    lab = topology.up()
    daemon = None
    try:
        with tempfile.TemporaryDirectory(prefix="tp-arbbench-") as tmp:
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
    lines.append("ns/packet p50 (ratio to empty XDP): " + ", ".join(
        f"{k} {v:.0f} ({result['ratio_to_empty_xdp'][k]}x)" for k, v in result["ns_per_packet"].items()))
    t = result["throughput"]
    lines.append(f"throughput: {t['msgs_per_s']} msgs/s, {t['packets_per_s_per_line']} packets/s per line, "
                 f"{t['delivered']}/{t['messages']} delivered, {t['delivered_twice']} twice")
    return "\n".join(lines)
