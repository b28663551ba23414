"""Forwarding capacity of the gateway on one core, with a generator on the
other: the fast path, plain kernel forwarding and A/B arbitration, side by
side in one lab run. `python -m bench --only capacity` runs this section.

Where the work runs (2 cores):
- core 0: the generator, alone: lab/blast.py runs lab/ebpf/blast.c in
  BPF_PROG_TEST_RUN's live-frames mode, which redirects real frames into
  gw's receiving veths as a NIC hands them over (no skb on the sending
  side), paced by the kernel clock, in bursts of at most 64.
- core 1: gw's receive path. gw's receiving veths run threaded NAPI and the
  NAPI threads are pinned here, so everything gw does with a packet, and the
  first hop past it, runs on this core, whatever core sent the frame.
Counting: sink_xdp (lab/ebpf/reflect.c) counts and drops at the first hop
past gw: carA's and carB's gw-facing veths for orders, the trader's int0 for
arbitrated feeds. A veth whose ring into gw is full drops the frame: that is
gw not keeping up, and the count shows it.

Modes:
- fastpath: UDP to the exchange port 9050, the "orders" rule: the daemon's
  XDP steer program (steer.xdp = true) redirects it to link A, whose
  carrier end takes XDP frames (its sink is an XDP program);
  `steer.xdp_forwarded` says what share of the orders it forwarded, the
  rest went through the TC program.
- kernel: UDP to 9300, no rule: gw's routing table forwards it (via A); gw
  has no nftables rules, as a gateway would not.
- arbitration: MoldUDP64, one message per packet, on lines A and B at once
  (each message twice, so the packet rate is twice the message rate); gw's
  XDP program forwards the first copy to the trader and drops the second.

A step offers `rate` frames/s for step_s; it passes if the generator sent
every frame at 95 % of the rate or better and the sink counted every frame
(arbitration: every message once, never twice). Rates rise by RATE_FACTOR
from START_PPS until a step fails, then bisect; modes alternate step by step.
max_lossless_pps is the highest passing rate; `limit` says what ended the
climb (a lossy step is run twice, and the second run decides):
gateway-core (lost with core 1 at FULL_CORE busy or more),
gateway-ring (lost with core 1 partly idle: a stall outlasted the veth's
256-frame ring), generator, or duplicates. Then each mode is offered
all the generator can (OVERLOAD_PPS asked), OVERLOAD_ROUNDS times in ABBA
order, and at_overload.delivered_per_s is what the median run forwarded per
second (arbitration: messages delivered) with its ring overflowing: the
rate its core sustains, which stalls do not decide.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.progress import Advance, ignore
from lab import feedproto, ops, reflect, topology
from lab.colo import EXCHANGE_ADDR, FEED_DST, FEED_PORTS, FEED_SOURCES, INGRESS_DEV, LINKS, TRADER_ADDR, TRADER_DEV
from lab.processes import DaemonProcess

MODES = ("fastpath", "kernel", "arbitration")
PORTS = {"fastpath": 9050, "kernel": 9300, "arbitration": FEED_PORTS["moldudp64"]}
GENERATOR_CPU, GATEWAY_CPU = 0, 1
# A NIC's softirq preempts user threads; a NAPI thread does so only at a
# real-time priority. Without it the daemon's Python ticks on core 1 hold
# the receive path for milliseconds, and the ring (256) overflows.
NAPI_FIFO_PRIORITY = 50
START_PPS = 50_000
RATE_FACTOR = 1.25
MAX_PPS = 8_000_000          # the climb's ceiling: far past what a veth path forwards on one core
BISECT_STEPS = 4
MIN_RATE_FRACTION = 0.95
FULL_CORE = 0.9              # core-1 busy share from which a lossy step counts as CPU-bound
OVERLOAD_PPS = 5_000_000     # asked of the generator (it offers 2-4 Mpps) to overload every mode
OVERLOAD_ROUNDS = 3          # overloaded runs per mode, ABBA; at_overload is the median run
SETTLE_S = 0.3
# For the progress bar: climbs end near 0.5 Mpps (12 steps), plus bisections, retries and overloads.
EXPECTED_STEPS = len(MODES) * (12 + BISECT_STEPS + 2 + OVERLOAD_ROUNDS)
PAYLOAD_BYTES = 64           # UDP payload of the forwarding modes
SESSION = "CAPACITY"
# A MoldUDP64 frame: Ethernet 14 + IPv4 20 + UDP 8 + session 10, then the u64 sequence number.
MOLD_SEQ_OFFSET = 14 + 20 + 8 + feedproto.MOLD_SESSION_BYTES
GENERATOR = ("lab/blast.py: XDP live frames (BPF_PROG_TEST_RUN) redirected into gw's veths, "
             "paced by the kernel clock, bursts <= 64")
METHOD = __doc__.split("\n\n", 1)[1]


@dataclass
class Path_:
    """How one mode's frames enter gw and where they are counted."""
    outputs: list[dict]            # the generator's {"ns", "dev", "frame"}
    sinks: list[tuple[str, str]]   # (role, dev) whose sink counts the port
    seq_offset: int


def mac(lab: topology.Lab, role: str, dev: str) -> str:
    with lab.iproute(role) as ipr:
        return ipr.get_links(ifname=dev)[0].get_attr("IFLA_ADDRESS")


def paths(lab: topology.Lab) -> dict[str, Path_]:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    def frame(src_mac: str, dst_mac: str, src: str, dst: str, port: int, payload: bytes) -> str:
        # UDP checksum 0 (none, legal in IPv4): the generator rewrites the sequence number.
        return bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst) /
                     UDP(sport=40000, dport=port, chksum=0) / payload).hex()

    trader_mac, gw_int_mac = mac(lab, "trader", TRADER_DEV), mac(lab, "gw", INGRESS_DEV)
    order_sinks = [(link.carrier, link.carrier_dev) for link in LINKS.values()]
    out = {m: Path_([{"ns": lab.ns("trader"), "dev": TRADER_DEV,
                      "frame": frame(trader_mac, gw_int_mac, TRADER_ADDR, EXCHANGE_ADDR, PORTS[m],
                                     bytes(PAYLOAD_BYTES))}], order_sinks, -1)
           for m in ("fastpath", "kernel")}
    mold = feedproto.mold_packet(SESSION, 0, [feedproto.lab_message("moldudp64", 0, 32)])
    out["arbitration"] = Path_(
        [{"ns": lab.ns(link.carrier), "dev": link.carrier_dev,
          "frame": frame(mac(lab, link.carrier, link.carrier_dev), mac(lab, "gw", link.gw_dev),
                         FEED_SOURCES[name], FEED_DST, PORTS["arbitration"], mold)}
         for name, link in LINKS.items()],
        [("trader", TRADER_DEV)], MOLD_SEQ_OFFSET)
    return out


# ---------------------------------------------------------------- the gateway's core

GATEWAY_RX_DEVS = (INGRESS_DEV, *(link.gw_dev for link in LINKS.values()))


def pin_gateway_napi(lab: topology.Lab, devs: tuple[str, ...] = GATEWAY_RX_DEVS) -> dict[str, int]:
    """Threaded NAPI on gw's receiving veths, each thread pinned to
    GATEWAY_CPU at NAPI_FIFO_PRIORITY. int gets GRO, which gives a veth NAPI
    (and lets it take XDP frames at all); the links have it from gw's XDP
    programs. Returns {thread name: pid}."""
    if INGRESS_DEV in devs:
        topology.set_features(lab, "gw", INGRESS_DEV, {"rx-gro": True})
    threads = topology.threaded_napi(lab, [("gw", d) for d in devs])
    for pid in threads.values():
        for cmd in (["taskset", "-pc", str(GATEWAY_CPU)], ["chrt", "-f", "-p", str(NAPI_FIFO_PRIORITY)]):
            subprocess.run([*cmd, str(pid)], check=True, capture_output=True, timeout=10)
    return threads


def gateway_nft_rules(lab: topology.Lab) -> int:
    """How many nftables rules gw has (the kernel mode's premise: none)."""
    out = subprocess.run(["ip", "netns", "exec", lab.ns("gw"), "nft", "-j", "list", "ruleset"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return sum(1 for item in json.loads(out or '{"nftables": []}')["nftables"] if "rule" in item)


# ---------------------------------------------------------------- steps

def attach_sinks(lab: topology.Lab, routes: dict[str, Path_]) -> None:
    for role, dev in sorted({s for p in routes.values() for s in p.sinks}):
        reflect.attach_sink(lab, role, dev)
    for mode, p in routes.items():
        for role, dev in p.sinks:
            reflect.set_sink_port(lab, role, dev, PORTS[mode])


def counted(lab: topology.Lab, mode: str, p: Path_) -> int:
    return sum(reflect.sink_count(lab, role, dev, PORTS[mode]) for role, dev in p.sinks)


def cpu_times(cpu: int) -> list[int]:
    """/proc/stat's jiffies of one core: user nice system idle iowait irq softirq steal."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            return [int(x) for x in line.split()[1:9]]
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


def busy(before: list[int], after: list[int]) -> dict:
    """The core's busy and stolen shares between two cpu_times()."""
    d = [a - b for a, b in zip(after, before)]
    total = sum(d) or 1
    return {"busy": round(1 - (d[3] + d[4] + d[7]) / total, 3), "steal": round(d[7] / total, 3)}


def step(lab: topology.Lab, mode: str, p: Path_, rate: float, seconds: float, first_seq: int) -> dict:
    messages = max(1, int(rate * seconds / len(p.outputs)))
    spec = {"outputs": p.outputs, "seq_offset": p.seq_offset, "rate_pps": rate, "count": messages,
            "cpu": GENERATOR_CPU, "first_seq": first_seq}
    before, core_before = counted(lab, mode, p), cpu_times(GATEWAY_CPU)
    run = subprocess.run([sys.executable, "-m", "lab.blast", json.dumps(spec)], check=False, capture_output=True, text=True,
                         timeout=10 * seconds + 30)
    gen = json.loads(run.stdout.strip().splitlines()[-1]) if run.stdout.strip() else {}
    if run.returncode != 0 or "error" in gen:
        raise RuntimeError(f"generator failed: {gen.get('error') or run.stderr.strip()[-500:]}")
    core = busy(core_before, cpu_times(GATEWAY_CPU))  # includes the generator's set-up: a lower bound
    time.sleep(SETTLE_S)
    got = counted(lab, mode, p) - before
    expected = messages if mode == "arbitration" else gen["sent"]
    reached = gen["sent"] == gen["frames"] and gen["achieved_pps"] >= MIN_RATE_FRACTION * rate
    return {"rate_pps": round(rate), "frames": gen["frames"], "sent": gen["sent"],
            "achieved_pps": gen["achieved_pps"], "seconds": gen["seconds"], "expected": expected, "counted": got,
            "lost": max(0, expected - got), "extra": max(0, got - expected),
            "gateway_core_busy": core["busy"], "gateway_core_steal": core["steal"],
            "reached": reached, "passed": reached and got == expected, "_messages": messages}


def _limit(s: dict) -> str:
    if s["extra"]:
        return "duplicates"       # arbitration forwarded a message twice: a defect, not a rate
    if s["lost"]:
        # A full core drops what it cannot process; a core with time to spare
        # drops only when a stall outlasts the ring (256 frames).
        return "gateway-core" if s["gateway_core_busy"] >= FULL_CORE else "gateway-ring"
    return "generator"            # nothing lost, but core 0 could not offer the rate


class Climb:
    """One mode's search for its highest lossless rate: up by RATE_FACTOR
    to the first failure, then BISECT_STEPS halvings between the highest
    pass and the lowest failure. A step that loses frames is run once more
    at the same rate, and the second run decides (both are kept)."""

    def __init__(self, mode: str):
        self.mode, self.steps, self.bisected, self.retrying = mode, [], 0, False
        self.low: float | None = None       # highest passing rate
        self.failed: dict | None = None     # the lowest failing step
        self.rate: float | None = START_PPS  # the next step's, None when done

    def record(self, s: dict) -> None:
        self.steps.append(s)
        if not s["passed"] and s["lost"] and not s["extra"] and not self.retrying:
            self.retrying, s["retried"] = True, True   # once more at this rate: one stall must not decide
            return
        self.retrying = False
        if self.failed:
            self.bisected += 1
        if s["passed"]:
            self.low = s["rate_pps"]
        elif self.failed is None or s["rate_pps"] < self.failed["rate_pps"]:
            self.failed = s
        if self.failed is None:
            self.rate = self.low * RATE_FACTOR if self.low * RATE_FACTOR <= MAX_PPS else None
        elif self.low is None or self.bisected >= BISECT_STEPS:
            self.rate = None
        else:
            self.rate = (self.low + self.failed["rate_pps"]) / 2

    def result(self) -> dict:
        def public(step: dict) -> dict:
            return {k: v for k, v in step.items() if not k.startswith("_")}
        return {"max_lossless_pps": self.low, "limit": _limit(self.failed) if self.failed else "ceiling",
                "first_failed_step": public(self.failed) if self.failed else None,
                "steps": [public(s) for s in self.steps]}


def measure(lab: topology.Lab, step_s: float, advance: Advance = ignore) -> dict:
    """capacity.{mode}: the caller runs the daemon (feeds on)."""
    routes = paths(lab)
    attach_sinks(lab, routes)
    threads = pin_gateway_napi(lab)
    climbs = {m: Climb(m) for m in MODES}
    seq = 1
    order = list(MODES)
    while any(c.rate for c in climbs.values()):
        for mode in order:
            c = climbs[mode]
            if c.rate:
                s = step(lab, mode, routes[mode], c.rate, step_s, seq)
                seq += s["_messages"]
                c.record(s)
                advance()
        order.reverse()   # ABBA: neither mode always runs right after the other
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for _ in range(OVERLOAD_ROUNDS):
        for mode in order:
            s = step(lab, mode, routes[mode], OVERLOAD_PPS, step_s, seq)
            seq += s["_messages"]
            # Per second of the generator's run, longer than step_s when it cannot offer OVERLOAD_PPS.
            runs[mode].append({"offered_pps": s["achieved_pps"], "delivered_per_s": round(s["counted"] / s["seconds"]),
                               "counted": s["counted"], "gateway_core_busy": s["gateway_core_busy"]})
            advance()
        order.reverse()
    overload = {m: {**sorted(r, key=lambda x: x["delivered_per_s"])[len(r) // 2], "runs": r}
                for m, r in runs.items()}
    out = {m: {**c.result(), "at_overload": overload[m], "generator": GENERATOR,
               "cores": {"generator": GENERATOR_CPU, "gateway": GATEWAY_CPU}} for m, c in climbs.items()}
    kernel, fast = out["kernel"]["max_lossless_pps"], out["fastpath"]["max_lossless_pps"]
    over_k, over_f = overload["kernel"]["delivered_per_s"], overload["fastpath"]["delivered_per_s"]
    return {**out, "fastpath_over_kernel": round(fast / kernel, 2) if fast and kernel else None,
            "fastpath_over_kernel_at_overload": round(over_f / over_k, 2) if over_k else None,
            "step_s": step_s, "gateway_napi_threads": sorted(threads), "gateway_nft_rules": gateway_nft_rules(lab),
            "method": METHOD}


def run(work: Path, step_s: float, advance: Advance) -> dict:
    """The `capacity` section of `python -m bench`: a lab of its own (its
    sinks and pinned NAPI threads end with it) and a daemon at 1 ms x 3 with
    feeds on."""
    work.mkdir(parents=True, exist_ok=True)
    lab = topology.up()
    daemon = None
    try:
        config = topology.write_config(lab, interval_us=1000, multiplier=3, feeds=True, steer_xdp=True)
        daemon = DaemonProcess(lab, config, work / "daemon.jsonl", stats_interval_s=3600)
        daemon.wait_for("ready", 60)
        result = measure(lab, step_s, advance)
        steered = sum(s["counted"] for s in result["fastpath"]["steps"]) + \
            sum(r["counted"] for r in result["fastpath"]["at_overload"]["runs"])
        result["steer"] = {"hook": "xdp" if daemon.wait_for("steer-attached", 1)["xdp"] else "tc",
                           "xdp_forwarded": ops.gateway_stat(lab, "xdp_forwarded"), "fastpath_counted": steered}
        daemon.stop()
        result["daemon_failovers"] = [e for e in daemon.events() if e.get("event") == "failover"]
        return result
    finally:
        if daemon:
            daemon.stop()
        topology.down(lab.name)


def headline(c: dict) -> str:
    return ("capacity on one core, lossless pps: " + ", ".join(f"{m} {c[m]['max_lossless_pps']} ({c[m]['limit']})"
                                                               for m in MODES)
            + f"; fast path / kernel {c['fastpath_over_kernel']}x lossless, "
              f"{c['fastpath_over_kernel_at_overload']}x overloaded")


def report_lines(c: dict) -> list[str]:
    header = ("| mode | max lossless pps | limit | core-1 busy at the first loss | offered pps overloaded "
              "| delivered/s overloaded | core-1 busy overloaded |")
    lines = ["## Forwarding capacity on one core (generator on the other)", "", header,
             "|---|---|---|---|---|---|---|"]
    for m in MODES:
        v, f = c[m], c[m]["first_failed_step"] or {}
        o = v["at_overload"]
        lines.append(f"| {m} | {v['max_lossless_pps']} | {v['limit']} | {f.get('gateway_core_busy')} | "
                     f"{o['offered_pps']} | {o['delivered_per_s']} | {o['gateway_core_busy']} |")
    ratios = (f"fast path / kernel: {c['fastpath_over_kernel']}x lossless, "
              f"{c['fastpath_over_kernel_at_overload']}x overloaded. Arbitration counts packets on both lines "
              "(two per message); its delivered/s are messages.")
    lines += ["", ratios, "", c["method"], ""]
    return lines
