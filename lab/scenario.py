"""`python -m lab scenario NAME`: a real failover, measured end to end.

A steady sequence-numbered UDP order stream runs trader -> exch through the
gateway; the fault is injected on link A's carrier; the daemon's failover
event and the stream's arrivals at exch (with the interface each packet came
in on) give detect_us and failover_us. Every time here is CLOCK_MONOTONIC, the
one clock the kernel, the daemon and the traffic tools share.

The attack scenarios (lab.attacks) run here too: spoofed-heartbeats
is blackhole, measured the same way, with an attacker on link A's wire;
forged-session is a market-data feed with a forged packet on line A.
"""
from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from lab import faults, topology
from lab.traffic import analyze_stream

SCENARIOS = ("carrier-down", "blackhole")   # faults on link A
ATTACK_SCENARIOS = ("spoofed-heartbeats", "forged-session")  # lab.attacks
ALL_SCENARIOS = SCENARIOS + ATTACK_SCENARIOS
ORDERS_PORT = 9000
FAULT_LINK, STANDBY_LINK = "A", "B"
STANDBY_EXCH_DEV = "hB"   # exch's handoff from carrier B


class ScenarioError(RuntimeError):
    pass


class Tool:
    """A running lab tool (lab.traffic or .marketdata). Its contract: one
    {"ready": true} line once its socket is up, then exactly one result line;
    exit 0, or 1 when what it measured failed (the result says how), or 2
    when it could not start."""

    def __init__(self, proc: subprocess.Popen, name: str):
        self.proc = proc
        self.name = name

    @classmethod
    def in_lab(cls, lab: topology.Lab, role: str, *args: str, module: str = "lab.traffic") -> Tool:
        proc = lab.spawn(role, [sys.executable, "-m", module, *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return cls(proc, args[0])

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        if not select.select([self.proc.stdout], [], [], timeout_s)[0]:
            raise ScenarioError(f"{self.name} said nothing in {timeout_s}s")
        line = self.proc.stdout.readline()
        if not line:
            raise ScenarioError(f"{self.name} exited: {self.proc.stderr.read()[-2000:]}")
        if json.loads(line) != {"ready": True}:
            raise ScenarioError(f"{self.name} did not get ready: {line!r}")

    def result(self, timeout_s: float) -> dict:
        out, err = self.proc.communicate(timeout=timeout_s)
        lines = out.splitlines()
        if self.proc.returncode not in (0, 1) or len(lines) != 1:
            raise ScenarioError(f"{self.name} failed (exit {self.proc.returncode}, "
                                f"{len(lines)} result lines): {out[-1000:]} {err[-2000:]}")
        return json.loads(lines[0])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Tool:
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()


class DaemonProcess:
    """`twinpath run` inside gw, logging JSON lines to a file."""

    def __init__(self, lab: topology.Lab, config: Path, log_path: Path, stats_interval_s: float = 1.0,
                 record: Path | None = None):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = lab.spawn("gw", [sys.executable, "-m", "appliance.cli", "run", "--config", str(config),
                                     "--stats-interval", str(stats_interval_s),
                                     *(["--record", str(record)] if record else [])],
                              stdout=self._log, stderr=subprocess.STDOUT)

    def events(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a traceback or BCC warning, kept in the file for humans
        return out

    def wait_for(self, event: str, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [e for e in self.events() if e.get("event") == event]
            if found:
                return found[0]
            if self.proc.poll() is not None:
                raise ScenarioError(f"daemon exited ({self.proc.returncode}):\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.02)
        raise ScenarioError(f"daemon logged no {event!r} in {timeout_s}s:\n{self.log_path.read_text()[-3000:]}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def traffic_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "lab.traffic", *args]


def udp_stream(lab: topology.Lab, workdir: Path, rate_pps: int, duration_s: float, port: int = ORDERS_PORT):
    """Starts receiver (exch) then sender (trader); returns both, ready. The
    arrivals land in workdir/arrivals-<port>.npy."""
    count = int(rate_pps * duration_s)
    receiver = Tool.in_lab(
        lab, "exch", "udp-recv", "--bind", topology.EXCHANGE_ADDR, "--port", str(port),
        "--timeout", str(duration_s + 15), "--idle", "1.0", "--out", str(workdir / f"arrivals-{port}.npy"))
    receiver.wait_ready()
    sender = Tool.in_lab(
        lab, "trader", "udp-send", "--dst", topology.EXCHANGE_ADDR, "--port", str(port),
        "--rate", str(rate_pps), "--count", str(count), "--timeout", str(duration_s + 10))
    sender.wait_ready()
    return receiver, sender


def stop_stream(receiver: Tool, sender: Tool) -> tuple[dict, dict]:
    """Ends a udp_stream early: the sender stops at once, the receiver once
    the stream has been idle; returns (sender's result, receiver's)."""
    sender.proc.send_signal(signal.SIGTERM)
    sent = sender.result(timeout_s=15)
    return sent, receiver.result(timeout_s=30)


def run(name: str, lab: topology.Lab | None = None, rate_pps: int = 10_000, before_s: float = 1.0,
        after_s: float = 2.0, interval_us: int = 1000, multiplier: int = 3, holddown_ms: int = 1000) -> dict:
    """Runs scenario `name` on `lab` (a fresh lab if None, torn down after)
    and returns the measurement object. forged-session takes none of the
    order stream's parameters."""
    from lab import attacks
    if name not in ALL_SCENARIOS:
        raise ScenarioError(f"unknown scenario {name!r}; choose from {', '.join(ALL_SCENARIOS)}")
    if name == "forged-session":
        return attacks.run_forged_session(lab)
    spoofed = name == "spoofed-heartbeats"
    fault = "blackhole" if spoofed else name
    with ExitStack() as cleanup:
        if lab is None:
            lab = topology.up()
            cleanup.callback(topology.down, lab.name)
        workdir = lab.dir / f"scenario-{name}-{time.strftime('%H%M%S')}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = topology.write_config(lab, interval_us=interval_us, multiplier=multiplier,
                                       holddown_ms=holddown_ms)
        daemon = DaemonProcess(lab, config, workdir / "daemon.jsonl",
                               stats_interval_s=attacks.SPOOF_STATS_INTERVAL_S if spoofed else 1.0)
        cleanup.callback(daemon.stop)
        daemon.wait_for("ready", 30)
        attacker = None
        if spoofed:  # ready (and capturing) before the stream starts
            attacker = attacks.HeartbeatSpoofer(lab, config, FAULT_LINK, max_s=before_s + after_s + 30)
            cleanup.callback(attacker.stop)

        receiver, sender = udp_stream(lab, workdir, rate_pps, before_s + after_s)
        cleanup.callback(receiver.stop)
        cleanup.callback(sender.stop)
        if attacker:
            time.sleep(max(0.0, before_s - attacks.ATTACK_LEAD_S))
            attacker.go()
        else:
            time.sleep(before_s)
        fault_ns = faults.inject(lab, fault, FAULT_LINK)
        cleanup.callback(faults.clear, lab, fault, FAULT_LINK)
        sent = sender.result(timeout_s=after_s + 15)
        receiver.result(timeout_s=20)
        attack = attacker.finish(daemon, fault_ns, lambda: faults.clear(lab, fault, FAULT_LINK)) if attacker else {}
        arrivals = np.load(workdir / f"arrivals-{ORDERS_PORT}.npy")
        # issued, not sent: a failed send still used up its sequence number
        stream = analyze_stream(arrivals, sent["issued"], fault_ns, lab.ifindex("exch", STANDBY_EXCH_DEV))

        failover = next((e for e in daemon.events() if e.get("event") == "failover"
                         and e["class"] == "orders" and e["cause"] != "failback"
                         and e["mono_ns"] >= fault_ns), None)
        first_standby = stream["first_standby_ns"]
        result = {
            "scenario": name,
            "failed_over": failover is not None,
            "from_link": failover["from"] if failover else None,
            "to_link": failover["to"] if failover else None,
            "cause": failover["cause"] if failover else None,
            "detect_us": round((failover["mono_ns"] - fault_ns) / 1000, 1) if failover else None,
            "failover_us": round((first_standby - fault_ns) / 1000, 1) if first_standby else None,
            "sent": stream["sent"], "received": stream["received"], "lost": stream["lost"],
            "duplicated": stream["duplicated"], "reordered": stream["reordered"],
            "lost_ranges": stream["lost_seqs_ranges"],
            "interval_us": interval_us, "multiplier": multiplier, "rate_pps": rate_pps,
            "lab": lab.name,
            "daemon_failovers": [e for e in daemon.events() if e.get("event") == "failover"],
            **attack,
        }
        if spoofed:
            result["contract_failures"] = attacks.contract_failures(result)
        return result


def contract_holds(result: dict) -> bool:
    """What `python -m lab scenario` exits 0 for (lab.attacks.contract_failures)."""
    from lab import attacks
    return not attacks.contract_failures(result)


def summary(result: dict) -> str:
    """The human-readable account `make demo` prints."""
    r = result
    if r["scenario"] == "forged-session":
        from lab import attacks
        failures = attacks.contract_failures(r)
        return "\n".join([
            f"scenario forged-session: one forged MoldUDP64 packet (session {attacks.FORGED_SESSION}, seq "
            f"{r['forged_seq']}) on line A once it carried seq {r['forged_after_seq']}",
            f"  feed: sent {r['sent']}, delivered {r['delivered']}, delivered twice {r['delivered_twice']}, "
            f"out of order {r['out_of_order']}, gaps expected {len(r['gaps_expected'])} / reported "
            f"{len(r['gaps_reported'])}; forged packets at the trader {r['forged_delivered']}",
            "  contract holds" if not failures else "  CONTRACT BROKEN: " + "; ".join(failures)])
    lines = [f"scenario {r['scenario']}: link {FAULT_LINK} fails at t=0 "
             f"(heartbeat {r['interval_us']} us x {r['multiplier']}, stream {r['rate_pps']} packets/s)"]
    if r["scenario"] == "spoofed-heartbeats":
        lines.append(f"  attacker on carrier {FAULT_LINK}'s wire: {r['spoofed_by_kind']['forged']} forged + "
                     f"{r['spoofed_by_kind']['replayed']} replayed heartbeat replies; accepted while "
                     f"black-holed: {r['spoofed_accepted']}")
    if r["failed_over"]:
        lines += [f"  data path moved class 'orders' {r['from_link']} -> {r['to_link']} "
                  f"(cause: {r['cause']}) after {r['detect_us']} us",
                  f"  first order over {r['to_link']} reached the exchange at {r['failover_us']} us"]
    else:
        lines.append("  NO FAILOVER happened")
    lines.append(f"  stream: sent {r['sent']}, received {r['received']}, lost {r['lost']}, "
                 f"duplicated {r['duplicated']}, reordered {r['reordered']}")
    if r.get("contract_failures"):
        lines.append("  CONTRACT BROKEN: " + "; ".join(r["contract_failures"]))
    return "\n".join(lines)
