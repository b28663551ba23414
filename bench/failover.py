"""Failover trials: many faults on one lab and one daemon, each fault seen at
once by twinpath, by plain kernel routing and (when asked) by FRR's bfdd.

A block is one scenario at one heartbeat setting. Two UDP streams run trader
-> exch for the whole block at the same rate: port 9000, which twinpath
steers, and port 9300, which no rule matches, so gw's kernel routes it (via A,
metric 100; via B, metric 200; routes over a link without carrier are
ignored). Each trial waits until the orders class is back on its preferred
link A (and bfdd's session on A is up), injects the fault on A at a random
phase of the heartbeat period, holds it, and clears it. With `tcp`, each
trial also carries one TCP order session (one 16-byte order per ms), started
before the fault and ended after it: its longest gap between orders arriving
at exch is what a trader feels.

Every time is CLOCK_MONOTONIC: fault injection, daemon events, kernel receive
stamps (converted), bfdd's transitions.
"""
from __future__ import annotations

import json
import random
import signal
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench import analysis
from bench.progress import Advance
from lab import faults, topology
from lab.processes import DaemonProcess, ScenarioError, Tool, stop_stream, udp_stream

STREAM_PORTS = {"twinpath": 9000, "kernel": 9300}  # steered by the orders rule / matched by no rule
TCP_PORT = 9001
FAULT_LINK = "A"
HOLDDOWN_MS = 200
HOLD_S = 0.2              # fault duration: longer than bfdd's 30 ms detection and TCP's recovery
PRE_FAULT_S = 0.05        # steady traffic before each fault
SETTLE_TIMEOUT_S = 10.0   # failback after a cleared carrier-down waits for linkwatch (up to 1 s)
BFD_STABLE_NS = 300_000_000  # bfdd up this long before the next fault
TRIAL_MAX_S = 4.0         # sizes the streams; the block stops them when done
TCP_ORDERS_PER_S, TCP_ORDERS = 1000, 500


@dataclass(frozen=True)
class Block:
    scenario: str         # "blackhole" | "carrier-down"
    interval_us: int
    multiplier: int
    trials: int
    bfd: bool = False
    tcp: bool = False

    @property
    def setting(self) -> str:
        return f"{self.interval_us}us_x{self.multiplier}"


def run_block(lab: topology.Lab, work: Path, block: Block, advance: Advance, rate_pps: int = 10_000,
              seed: int = 1) -> dict:
    """Runs the block's trials, advance() after each; returns per-trial
    figures (and saves them in work)."""
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    # Damping off: a fresh failure every second is what is measured here; with
    # damping the third would rightly hold A out for 30 s (bench/detection measures it).
    config = topology.write_config(lab, interval_us=block.interval_us, multiplier=block.multiplier,
                                   holddown_ms=HOLDDOWN_MS, damping=False)
    lab.run("gw", ["sysctl", "-q", "-w", "net.ipv4.conf.all.ignore_routes_with_linkdown=1"])
    fault_ns: list[int] = []
    clear_ns: list[int] = []
    tcp_clients: list[dict] = []
    with ExitStack() as stack:
        daemon = DaemonProcess(lab, config, work / "daemon.jsonl", stats_interval_s=3600)
        stack.callback(daemon.stop)
        daemon.wait_for("ready", 60)
        bfd = None
        if block.bfd:
            from lab.bfd import Bfdd
            # Under the lab's run directory: bfdd runs as user frr and must be able to read its config.
            bfd = stack.enter_context(Bfdd(lab, lab.dir / f"bfd-{work.name}", links=("A", "B"),
                                           interval_ms=10, multiplier=3))
        max_s = block.trials * TRIAL_MAX_S + 10
        streams = {}
        for name, port in STREAM_PORTS.items():
            streams[name] = udp_stream(lab, work, rate_pps, max_s, port)
            stack.callback(streams[name][0].stop)
            stack.callback(streams[name][1].stop)
        tcp_server = None
        if block.tcp:
            tcp_server = Tool.in_lab(lab, "exch", "tcp-server", "--bind", topology.EXCHANGE_ADDR,
                                     "--port", str(TCP_PORT), "--timeout", str(max_s + 60), "--idle", str(max_s),
                                     "--out", str(work / "tcp-server.json"))
            stack.callback(tcp_server.stop)
            tcp_server.wait_ready()

        for _ in range(block.trials):
            _wait_settled(daemon, bfd)
            client = None
            if block.tcp:
                client = Tool.in_lab(lab, "trader", "tcp-client", "--dst", topology.EXCHANGE_ADDR,
                                     "--port", str(TCP_PORT), "--rate", str(TCP_ORDERS_PER_S),
                                     "--count", str(TCP_ORDERS), "--timeout", "30")
                stack.callback(client.stop)
                client.wait_ready()
            # A random phase against the heartbeat schedule: no lucky alignment.
            time.sleep(PRE_FAULT_S + rng.uniform(0, block.interval_us / 1e6))
            fault_ns.append(faults.inject(lab, block.scenario, FAULT_LINK))
            time.sleep(HOLD_S)
            clear_ns.append(faults.clear(lab, block.scenario, FAULT_LINK))
            if client:
                tcp_clients.append(client.result(timeout_s=40))
            advance()
        _wait_settled(daemon, bfd)

        results = {name: stop_stream(*tools) for name, tools in streams.items()}
        tcp = None
        if tcp_server:
            tcp_server.proc.send_signal(signal.SIGTERM)
            tcp = tcp_server.result(timeout_s=30)
        events = daemon.events()
        bfd_transitions = bfd.transitions() if bfd else None

    trials = _per_trial(lab, work, block, rate_pps, fault_ns, clear_ns, results, events, bfd_transitions,
                        tcp_clients, tcp)
    (work / "trials.json").write_text(json.dumps(trials, indent=1))
    return trials


def _orders_moves(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("event") == "failover" and e.get("class") == "orders"]


def _wait_settled(daemon: DaemonProcess, bfd) -> None:
    """Until orders is back on its preferred link A and bfdd's session on the
    faulted link is up again."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        moves = _orders_moves(daemon.events())
        if not moves or moves[-1]["to"] == FAULT_LINK:
            break
        if time.monotonic() > deadline:
            raise ScenarioError(f"orders did not return to {FAULT_LINK} within {SETTLE_TIMEOUT_S}s: {moves[-1]}")
        time.sleep(0.02)
    if bfd:
        # Up, and for long enough that the carrier's side agrees: right after
        # recovery one side can still take the session down again (neighbor-down).
        while True:
            changes = [t for t in bfd.transitions() if t["link"] == FAULT_LINK]
            if changes and changes[-1]["to"] == "up" and time.monotonic_ns() - changes[-1]["mono_ns"] > BFD_STABLE_NS:
                break
            if time.monotonic() > deadline:
                raise ScenarioError(f"bfdd's session on {FAULT_LINK} not stably up within {SETTLE_TIMEOUT_S}s: "
                                    f"{changes[-3:]}")
            time.sleep(0.02)
    time.sleep(0.05)


def _per_trial(lab, work, block, rate_pps, fault_ns, clear_ns, results, events, bfd_transitions, tcp_clients, tcp):
    period_ns = 1e9 / rate_pps
    standby = lab.ifindex("exch", topology.LINKS["B"].handoff)
    streams = {}
    for name, (sent, received) in results.items():
        arrivals = np.load(work / f"arrivals-{STREAM_PORTS[name]}.npy")
        streams[name] = analysis.stream_trials(arrivals, sent["issued"], period_ns, fault_ns, clear_ns, standby)
        streams[name]["socket_drops"] = received["socket_drops"]
    # A move away from A is what a fault should cause; any other move (say
    # B -> A because B went quiet) during or between trials is unexplained.
    moves = _orders_moves(events)
    away = [e["mono_ns"] for e in moves if e["from"] == FAULT_LINK and e["cause"] != "failback"]
    others = [e["mono_ns"] for e in moves if e["cause"] != "failback" and e["from"] != FAULT_LINK]
    windows = list(zip(fault_ns, clear_ns))
    # A trial whose fault found orders already away from A (a move just
    # before it) measures nothing: it is counted, and its figures left out.
    preempted = [bool(before) and before[-1]["to"] != FAULT_LINK
                 for before in ([e for e in moves if e["mono_ns"] < f] for f in fault_ns)]
    for key in ("failover_us", "lost", "lost_after_clear"):
        streams["twinpath"][key] = [None if p else v for p, v in zip(preempted, streams["twinpath"][key])]
    out = {
        "block": asdict(block),
        "preempted": preempted,
        "rate_pps": rate_pps,
        "fault_ns": fault_ns,
        "clear_ns": clear_ns,
        "twinpath": {"detect_us": [None if p else d for p, d in
                                   zip(preempted, analysis.first_after(away, fault_ns, clear_ns))],
                     "unexplained_failovers": analysis.outside(away, windows) + len(others),
                     **streams["twinpath"]},
        "kernel": streams["kernel"],
    }
    if bfd_transitions is not None:
        faulted = [t["mono_ns"] for t in bfd_transitions if t["to"] == "down" and t["link"] == FAULT_LINK]
        out["bfdd"] = {"detect_us": analysis.first_after(faulted, fault_ns, clear_ns),
                       "transitions": bfd_transitions}
    if tcp is not None:
        sessions = tcp["sessions"]
        out["tcp"] = {
            "sessions": len(sessions),
            "max_gap_ms": [s["max_gap_ms"] for s in sessions],
            # Survived: every order arrived, in order, on the one connection, and it closed normally.
            "survived": [s["ended"] == "eof" and s["records"] == TCP_ORDERS and c["error"] is None
                         for s, c in zip(sessions, tcp_clients)],
            "in_order": tcp["in_order"],
            "client_errors": [c["error"] for c in tcp_clients if c["error"]],
        }
    return out
