"""The gateway's eBPF fast path against plain kernel forwarding, side by side
in one lab run: round-trip latency and the highest loss-free packet rate.
`python -m bench --only latency` runs this section (run()); latency() and
max_pps() take a lab whose daemon the caller runs.

Fast path: UDP to port 9050, inside the lab config's "orders" rule, which
the daemon's TC program redirects straight to link A. Kernel: port 9300, no
rule, so gw's routing table forwards it (also via A). Replies come back by
gw's kernel routing in both modes. Both modes run at the same rate, in
alternating blocks (ABBA), so that the shared, noisy machine weighs on both
alike. The figures are not absolutes: compare the two modes of one run.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from appliance import layout
from appliance.core.stats import PER_MILLE, nearest_rank
from bench.progress import Advance, ignore
from lab import reflect, topology
from lab.processes import DaemonProcess, Tool

MODES = ("fastpath", "kernel")
PORTS = {"fastpath": 9050, "kernel": 9300}          # destination at the exchange
REPLY_PORTS = {"fastpath": 29050, "kernel": 29300}  # the trader's, below the ephemeral range
RAW_KEY = "raw_latency_ns"   # latency()'s per-mode samples: numpy arrays, not JSON
IDLE_S = 0.5                 # a block's receiver stops this long after the last reply
SETTLE_S = 0.2               # in-flight datagrams reach the sink within this
MIN_RATE_FRACTION = 0.95     # a max_pps step needs the sender this close to the asked rate
# Fine steps where the lab's one-core sender tops out (25-45k packets/s on the 2-core VM).
DEFAULT_PPS_RATES = (10_000, 20_000, 25_000, 30_000, 35_000, 40_000, 45_000, 50_000, 60_000)

LATENCY_METHOD = (
    "trader -> gw -> carrier A -> exch, reflected by a TC program on exch's handoff, -> carrier A -> "
    "gw (kernel routing) -> trader. Constant-rate sender (Cython pacer); latency = the trader's kernel "
    "receive stamp (SO_TIMESTAMPNS, converted to CLOCK_MONOTONIC) minus the intended send time the "
    "datagram carries, so a late sender counts (no coordinated omission) and the sender's wake-up "
    "lateness is in both modes. Blocks of both modes alternate ABBA at one rate; a fresh receiver per "
    "block; percentiles are exact (nearest rank) over every reply; lost = sent and never answered. "
    "steered / kernel_routed: the daemon's steer counters during the mode's blocks.")
MAX_PPS_METHOD = (
    "trader -> gw -> carrier A -> exch, where a TC program on the handoff counts and drops. Rates step "
    "upward, alternating modes per step; a step passes if the sink counted every issued datagram and "
    "the sender achieved >= 95% of the rate. A mode stops at its first failed step. limit 'path': "
    "datagrams were lost after the socket; 'sender': none lost but the rate was not reached. On veths "
    "the forwarding work of all namespaces mostly runs in softirq on the sender's CPU, so a sender "
    "limit includes the path's per-packet cost.")


# ---------------------------------------------------------------- analysis

def block_order(blocks: int) -> list[str]:
    """Modes in run order, `blocks` of each, in ABBA pairs."""
    order: list[str] = []
    for r in range(blocks):
        order += MODES if r % 2 == 0 else MODES[::-1]
    return order


def block_latencies(arrivals: np.ndarray, issued: int, not_before_ns: int) -> tuple[np.ndarray, dict]:
    """Round-trip latency (ns) of each answered seq of one block, in seq
    order, and the block's counts.

    arrivals: udp-recv's records (traffic.ARRIVAL_DTYPE); issued: seqs
    0..issued-1 were sent. A seq counts once, at its first arrival. Records
    with a seq out of range, no send time, or a send time before
    `not_before_ns` (a previous block's straggler) are `unexpected`.
    """
    seq = np.asarray(arrivals["seq"], dtype=np.uint64)
    sent_ns = np.asarray(arrivals["sent_ns"], dtype=np.int64)
    ok = (seq < np.uint64(issued)) & (sent_ns >= not_before_ns)
    _, first = np.unique(seq[ok], return_index=True)
    latencies = np.asarray(arrivals["t_ns"], dtype=np.int64)[ok][first] - sent_ns[ok][first]
    return latencies, {"issued": issued, "replies": len(first), "lost": issued - len(first),
                       "duplicated": int(np.count_nonzero(ok)) - len(first),
                       "unexpected": int(np.count_nonzero(~ok))}


def summarize(latencies_ns: np.ndarray, lost: int) -> dict:
    """p50/p99/p99.9/max/min in µs over every sample (nearest rank, as
    every bench figure)."""
    keys = ("p50", "p99", "p999", "max", "min")
    if len(latencies_ns) == 0:
        return {**{f"{k}_us": None for k in keys}, "samples": 0, "lost": lost}
    ordered = np.sort(latencies_ns)
    return {**{f"{k}_us": _us(nearest_rank(ordered, PER_MILLE[k])) for k in keys},
            "samples": len(ordered), "lost": lost}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator is not None and denominator else None


def judge_step(rate_pps: float, issued: int, sent: int, achieved_pps: float | None, sunk: int) -> dict:
    """One max_pps step. It passes if the sink counted every issued datagram
    and the sender achieved MIN_RATE_FRACTION of the rate. limit names what
    failed: "path" (what left the socket is not what the sink counted),
    "sender" (send errors, or the rate not reached), None (passed)."""
    if sunk != sent:
        limit = "path"
    elif sent < issued or achieved_pps is None or achieved_pps < MIN_RATE_FRACTION * rate_pps:
        limit = "sender"
    else:
        limit = None
    return {"passed": limit is None, "limit": limit, "lost": issued - sunk}


def highest_passing(steps: list[dict]) -> dict:
    """From one mode's steps at rising rates: the highest rate passed before
    the first failure, and what limited it (None: no step failed, so the
    limit lies above the rates tried). lossless_achieved_pps, the highest
    rate the sender achieved up to there without a loss in the path, still
    compares the modes when the sender is the limit."""
    best, limit, achieved = None, None, []
    for step in steps:
        if step["limit"] != "path" and step["achieved_pps"] is not None:
            achieved.append(step["achieved_pps"])
        if not step["passed"]:
            limit = step["limit"]
            break
        best = step["rate_pps"]
    return {"max_pps": best, "limit": limit, "sender_limited": limit == "sender",
            "lossless_achieved_pps": max(achieved, default=None)}


def _us(ns) -> float:
    return round(float(ns) / 1000, 1)


# ---------------------------------------------------------------- lab runs

class SteerCounters:
    """The running daemon's steer program on gw's trader-facing interface,
    read through bpftool (its maps are not pinned)."""

    def __init__(self, lab: topology.Lab):
        filters = json.loads(lab.run("gw", ["tc", "-j", "filter", "show", "dev", topology.INGRESS_DEV,
                                            "ingress"]).stdout)
        progs = [f["options"]["prog"]["id"] for f in filters
                 if f.get("options", {}).get("bpf_name") == "tp_steer"]
        if not progs:
            raise topology.LabError(f"no tp_steer on gw's {topology.INGRESS_DEV}: is the daemon running?")
        maps = {_bpftool("map", "show", "id", str(i))["name"]: i
                for i in _bpftool("prog", "show", "id", str(progs[0]))["map_ids"]}
        self.stats_id, self.gstats_id = maps["tp_steer_stats"], maps["tp_gstats"]

    def read(self) -> dict[str, int]:
        """steered: packets redirected to a link (any class); kernel_routed:
        packets no rule matched. Both over all CPUs, since the daemon started."""
        steered = sum(layout.Counters.from_buffer_copy(_bytes(v["value"])).redirects
                      for entry in _bpftool("map", "dump", "id", str(self.stats_id)) for v in entry["values"])
        key = layout.C["TP_STAT_NO_RULE"].to_bytes(4, sys.byteorder)
        no_rule = _bpftool("map", "lookup", "id", str(self.gstats_id), "key", *map(str, key))
        return {"steered": steered,
                "kernel_routed": sum(int.from_bytes(_bytes(v["value"]), sys.byteorder) for v in no_rule["values"])}


def latency(lab: topology.Lab, rate_pps: float, seconds_per_block: float, blocks: int,
            workdir: Path | None = None, advance: Advance = ignore) -> dict:
    """Round-trip latency of both modes at `rate_pps`, `blocks` blocks of
    `seconds_per_block` each per mode (advance() after each block); each
    block's arrivals are kept in `workdir` (default: under the lab's run
    directory). The caller runs the daemon. The result is JSON but for
    result[RAW_KEY], the per-mode samples in ns."""
    _prepare_reflector(lab, "reflect")
    steer = SteerCounters(lab)
    workdir = workdir or lab.dir / f"bench-latency-{time.strftime('%H%M%S')}"
    workdir.mkdir(parents=True, exist_ok=True)
    count = max(1, int(rate_pps * seconds_per_block))
    samples: dict[str, list[np.ndarray]] = {mode: [] for mode in MODES}
    detail = []
    for i, mode in enumerate(block_order(blocks)):
        out = workdir / f"block{i:02d}-{mode}.npy"
        steer_before, reflected_before = steer.read(), reflect.counts(lab, PORTS[mode])
        receiver = Tool.in_lab(lab, "trader", "udp-recv", "--bind", topology.TRADER_ADDR,
                               "--port", str(REPLY_PORTS[mode]), "--timeout", str(seconds_per_block + 10),
                               "--idle", str(IDLE_S), "--out", str(out))
        with receiver:
            receiver.wait_ready()
            not_before_ns = time.monotonic_ns()
            with Tool.in_lab(lab, "trader", "udp-send", "--dst", topology.EXCHANGE_ADDR,
                             "--port", str(PORTS[mode]), "--rate", str(rate_pps), "--count", str(count),
                             "--timeout", str(seconds_per_block + 5)) as sender:
                sender.wait_ready()
                sent = sender.result(timeout_s=seconds_per_block + 15)
            received = receiver.result(timeout_s=seconds_per_block + 15)
        steer_after = steer.read()
        block_ns, counts = block_latencies(np.load(out), sent["issued"], not_before_ns)
        samples[mode].append(block_ns)
        # Per block too: one stall of the shared machine can own a mode's whole tail.
        block_summary = summarize(block_ns, 0)
        detail.append({"mode": mode, **counts, **{k: block_summary[k] for k in ("p50_us", "p99_us", "max_us")},
                       "achieved_pps": _round(sent["rate"]), "send_errors": sent["errors"],
                       "receiver_drops": received["socket_drops"],
                       "reflected": reflect.counts(lab, PORTS[mode]) - reflected_before,
                       **{k: steer_after[k] - steer_before[k] for k in steer_after}})
        advance()

    result: dict = {}
    for mode in MODES:
        mine = [b for b in detail if b["mode"] == mode]
        result[mode] = {
            **summarize(np.concatenate(samples[mode]), sum(b["lost"] for b in mine)),
            **{k: sum(b[k] for b in mine) for k in ("issued", "reflected", "steered", "kernel_routed",
                                                   "receiver_drops", "send_errors")}}
    fast, kernel = result["fastpath"], result["kernel"]
    result.update({
        "ratio_p50_fastpath_over_kernel": ratio(fast["p50_us"], kernel["p50_us"]),
        "ratio_p99_fastpath_over_kernel": ratio(fast["p99_us"], kernel["p99_us"]),
        "rate_pps": rate_pps, "seconds_per_block": seconds_per_block, "blocks_per_mode": blocks,
        "ports": PORTS, "blocks": detail, "method": LATENCY_METHOD,
        RAW_KEY: {mode: np.concatenate(samples[mode]) for mode in MODES},
    })
    return result


def max_pps(lab: topology.Lab, mode: str = "both", rates=DEFAULT_PPS_RATES, seconds_per_step: float = 1.0,
            size: int = 64, advance: Advance = ignore) -> dict:
    """Highest loss-free one-way rate trader -> exch per mode ("fastpath",
    "kernel", or "both" alternating per step), into exch's kernel sink, with
    `size`-byte UDP payloads; advance() after each step of each mode, run or
    skipped past a failure. The caller runs the daemon."""
    modes = MODES if mode == "both" else (mode,)
    if not set(modes) <= set(MODES):
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)} or both")
    _prepare_reflector(lab, "sink")
    steer = SteerCounters(lab)
    steps: dict[str, list[dict]] = {m: [] for m in modes}
    for i, rate in enumerate(sorted(rates)):
        for m in modes if i % 2 == 0 else modes[::-1]:
            if all(s["passed"] for s in steps[m]):
                steps[m].append(_sink_step(lab, m, rate, seconds_per_step, size, steer))
            advance()
    return {**{m: {**highest_passing(steps[m]), "steps": steps[m]} for m in modes},
            "seconds_per_step": seconds_per_step, "payload_bytes": size, "ports": PORTS,
            "method": MAX_PPS_METHOD}


def _sink_step(lab: topology.Lab, mode: str, rate: float, seconds: float, size: int,
               steer: SteerCounters) -> dict:
    port = PORTS[mode]
    count = max(2, int(rate * seconds))
    sunk_before, steer_before = reflect.counts(lab, port), steer.read()
    # A sender that cannot keep up takes longer than `seconds`; bounded all the same.
    with Tool.in_lab(lab, "trader", "udp-send", "--dst", topology.EXCHANGE_ADDR, "--port", str(port),
                     "--rate", str(rate), "--count", str(count), "--size", str(size),
                     "--timeout", str(3 * seconds + 5)) as sender:
        sender.wait_ready()
        sent = sender.result(timeout_s=3 * seconds + 15)
    time.sleep(SETTLE_S)
    sunk = reflect.counts(lab, port) - sunk_before
    steer_after = steer.read()
    return {"rate_pps": rate, "issued": sent["issued"], "sent": sent["sent"], "sunk": sunk,
            "achieved_pps": _round(sent["rate"]), "stopped": sent["stopped"],
            **{k: steer_after[k] - steer_before[k] for k in steer_after},
            **judge_step(rate, sent["issued"], sent["sent"], sent["rate"], sunk)}


def _prepare_reflector(lab: topology.Lab, action: str) -> None:
    if not reflect.attached(lab):
        reflect.attach(lab)
    for mode in MODES:
        reflect.set_port(lab, PORTS[mode], action, REPLY_PORTS[mode] if action == "reflect" else None)


def _bpftool(*args: str):
    return json.loads(subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True,
                                     timeout=10, check=True).stdout)


def _bytes(hex_bytes: list[str]) -> bytes:
    return bytes(int(b, 16) for b in hex_bytes)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# ---------------------------------------------------------------- bench section

def advances(plan) -> int:
    """How many times run() advances: latency blocks, then max_pps steps."""
    return len(block_order(plan.latency_blocks)) + len(MODES) * len(plan.pps_steps)


def run(lab: topology.Lab, work: Path, plan, advance: Advance) -> dict:
    """The `latency` section of `python -m bench`: its own daemon (1 ms x 3),
    latency() and max_pps() with plan.latency_rate, .latency_block_s,
    .latency_blocks (per mode), .pps_steps and .pps_step_s. Samples are kept
    in work/latency_samples_ns.npz (one array per mode), which the report plots."""
    work.mkdir(parents=True, exist_ok=True)
    config = topology.write_config(lab, interval_us=1000, multiplier=3, holddown_ms=200)
    daemon = DaemonProcess(lab, config, work / "daemon.jsonl", stats_interval_s=3600)
    try:
        daemon.wait_for("ready", 60)
        lat = latency(lab, plan.latency_rate, plan.latency_block_s, plan.latency_blocks, work / "blocks", advance)
        throughput = max_pps(lab, "both", plan.pps_steps, plan.pps_step_s, advance=advance)
    finally:
        daemon.stop()
        if reflect.attached(lab):
            for port in PORTS.values():
                reflect.set_port(lab, port, "pass")  # later sections see the exchange as it was
    raw = lat.pop(RAW_KEY)
    np.savez(work / "latency_samples_ns.npz", **raw)
    lat["daemon_failovers"] = [e for e in daemon.events() if e.get("event") == "failover"]
    return {"latency": lat, "throughput": throughput}
