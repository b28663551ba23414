"""The heartbeat sender as a process of its own, so that probes keep flowing
when the daemon dies or stops: the data path then still detects a dead link
and moves traffic (its reflex), where a sender inside the daemon would leave
every link silent and the data path static.

The daemon opens the probe sockets, maps a memfd for the sender's counters
(fastpath.heartbeat.Stats) and starts

    python -m appliance.edge.probesender --stats-fd N --interval-ns NS ...

with those descriptors. The daemon reads the counters from the same memory
(sequence, lateness, sends) as if the sender were a thread. The pin registry
records the sender's pid and start time; the next daemon stops that sender
(it may be a dead daemon's) before it starts its own, so there is one sender
per gateway, and `twinpath detach` stops it too. The child takes SIGTERM's
default action: its loop runs without the GIL, where no Python handler runs.
"""
from __future__ import annotations

import argparse
import mmap
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fastpath.heartbeat import STATS_SIZE, Sender, Stats

REGISTRY_KEY = "sender"
STOP_WAIT_S = 2.0


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (the state) on; None for a process gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat
    field 22): with the pid, it names one process even after pid reuse.
    None for a process gone or a zombie."""
    fields = _stat_fields(pid)
    return None if not fields or fields[0] in ("Z", "X") else fields[19]


def _is_sender(pid: int) -> bool:
    try:
        return b"appliance.edge.probesender" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop_recorded(pins) -> int | None:
    """Stops the sender the pin registry names, if it still runs; returns
    its pid if there was one to stop."""
    record = pins.get(REGISTRY_KEY)
    if not record:
        return None
    pid_text, started = record.split()
    pid = int(pid_text)
    pins.delete(REGISTRY_KEY)
    if _start_time(pid) != started or not _is_sender(pid):
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while _start_time(pid) == started:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + STOP_WAIT_S
        time.sleep(0.005)
    return pid


class SenderProcess:
    """A running sender child and its shared counters (.stats)."""

    def __init__(self, sockets, templates: list[bytes], seq_offset: int, interval_ns: int, priority: int):
        self._memfd = os.memfd_create("twinpath-sender-stats", os.MFD_CLOEXEC)
        os.ftruncate(self._memfd, STATS_SIZE)
        self._mem = mmap.mmap(self._memfd, STATS_SIZE)
        self.stats = Stats(len(sockets), self._mem)
        # Microseconds since boot, as Sender's default: never a sequence an
        # earlier sender used. Set here so that last_seq is right before the
        # child runs (Daemon resets the links' missed rounds to it).
        self.stats.reset(time.monotonic_ns() // 1000)
        self._fds = [s.fileno() for s in sockets]
        self._args = ["--interval-ns", str(interval_ns), "--seq-offset", str(seq_offset), "--priority", str(priority),
                      "--sockets", ",".join(map(str, self._fds)), "--templates", ",".join(t.hex() for t in templates)]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Starts the child; its first round is stats.last_seq + 1, so a
        restarted one carries on the dead one's sequence."""
        # Its own session: a signal to the daemon's process group (a terminal's
        # Ctrl-C) does not reach it; stdout/stderr stay the daemon's (journald).
        # Without the daemon's systemd notify and watchdog sockets: those are the daemon's to speak on.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_"))}
        argv = [sys.executable, "-m", "appliance.edge.probesender", "--stats-fd", str(self._memfd),
                "--last-seq", str(self.stats.last_seq), *self._args]
        self.proc = subprocess.Popen(argv, pass_fds=[self._memfd, *self._fds], start_new_session=True,
                                     stdin=subprocess.DEVNULL, env=env)

    def exit_status(self) -> int | None:
        """None while the child runs; else its status (negative: the signal
        that ended it). A zombie is reaped here."""
        return self.proc.poll() if self.proc else None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def state(self) -> str:
        """The child's scheduler state, as /proc names it (R, S, D, T, ...)."""
        fields = _stat_fields(self.pid) if self.proc else None
        return fields[0] if fields else "gone"

    def kill(self) -> None:
        """SIGKILL; exit_status() then reaps it."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()

    def record(self, pins) -> None:
        started = None
        deadline = time.monotonic() + STOP_WAIT_S
        while started is None and time.monotonic() < deadline and self.proc.poll() is None:
            started = _start_time(self.pid)
        if started is None:
            raise RuntimeError(f"the probe sender (pid {self.pid}) exited at once ({self.proc.poll()})")
        pins.put(REGISTRY_KEY, f"{self.pid} {started}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()

    def close(self) -> None:
        """Lets go of the counters (the child keeps running)."""
        self._mem.close()
        os.close(self._memfd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.edge.probesender",
                                 description="twinpath's heartbeat sender (started by `twinpath run`)")
    ap.add_argument("--stats-fd", type=int, required=True)
    ap.add_argument("--last-seq", type=int, required=True)
    ap.add_argument("--interval-ns", type=int, required=True)
    ap.add_argument("--seq-offset", type=int, required=True)
    ap.add_argument("--priority", type=int, required=True)
    ap.add_argument("--sockets", required=True, help="comma-separated inherited socket fds, one per link")
    ap.add_argument("--templates", required=True, help="comma-separated hex probe templates, one per link")
    args = ap.parse_args(argv)
    import socket
    sockets = [socket.socket(fileno=int(fd)) for fd in args.sockets.split(",")]
    templates = [bytes.fromhex(t) for t in args.templates.split(",")]
    mem = mmap.mmap(args.stats_fd, STATS_SIZE)
    sender = Sender(sockets, templates, args.seq_offset, args.interval_ns, Stats(len(sockets), mem), args.last_seq)
    if args.priority:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.priority))
        except OSError as e:
            print(f'{{"event": "warning", "what": "sender_priority", "priority": {args.priority}, '
                  f'"error": "SCHED_FIFO refused ({e.strerror}): the sender runs with normal scheduling"}}',
                  flush=True)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sender.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
