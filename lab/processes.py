"""The lab's processes: a traffic tool or the daemon run inside a lab
namespace, waited for and stopped; the order stream the scenarios and the
bench send. Shared by lab.scenario, lab.attacks, lab.feedrun, bench/ and the
tests, and importing none of them."""
from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from lab import topology

ORDERS_PORT = 9000


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
    """`twinpath run` inside a gateway's namespace, logging JSON lines to a file."""

    def __init__(self, lab: topology.Lab, config: Path, log_path: Path, stats_interval_s: float = 1.0,
                 record: Path | None = None, module: str = "appliance.cli", role: str = "gw"):
        """module: what runs `run` (lab.upgrade: a build with a changed layout).
        role: the gateway's namespace role (lab.pair's gw1 / gw2)."""
        self.lab, self.config, self.role = lab, config, role
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = lab.spawn(role, [sys.executable, "-m", module, "run", "--config", str(config),
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

    def stop(self, detach: bool = True) -> None:
        """SIGTERM, which leaves the data path and the probe sender running
        (fail static); then, unless detach is False, `twinpath detach`, so
        that the next daemon in this lab starts from nothing, as a test or
        a bench trial expects."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        if detach:
            self.lab.run(self.role, [sys.executable, "-m", "appliance.cli", "detach", "--config",
                                     str(self.config)], timeout=30)


def traffic_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "lab.traffic", *args]


def udp_stream(lab: topology.Lab, workdir: Path, rate_pps: int, duration_s: float, port: int = ORDERS_PORT,
               sender_priority: int = 0):
    """Starts receiver (exch) then sender (trader, SCHED_FIFO at
    sender_priority unless 0); returns both, ready. The arrivals land in
    workdir/arrivals-<port>.npy."""
    count = int(rate_pps * duration_s)
    receiver = Tool.in_lab(
        lab, "exch", "udp-recv", "--bind", topology.EXCHANGE_ADDR, "--port", str(port),
        "--timeout", str(duration_s + 15), "--idle", "1.0", "--out", str(workdir / f"arrivals-{port}.npy"))
    receiver.wait_ready()
    sender = Tool.in_lab(
        lab, "trader", "udp-send", "--dst", topology.EXCHANGE_ADDR, "--port", str(port),
        "--rate", str(rate_pps), "--count", str(count), "--timeout", str(duration_s + 10),
        "--priority", str(sender_priority))
    sender.wait_ready()
    return receiver, sender


def stop_stream(receiver: Tool, sender: Tool) -> tuple[dict, dict]:
    """Ends a udp_stream early: the sender stops at once, the receiver once
    the stream has been idle; returns (sender's result, receiver's)."""
    sender.proc.send_signal(signal.SIGTERM)
    sent = sender.result(timeout_s=15)
    return sent, receiver.result(timeout_s=30)
