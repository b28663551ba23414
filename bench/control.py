"""Control-plane cost: the daemon's CPU use with its probe sender's (all
their threads, user + system, from /proc/<pid>/stat; the sender is a process
of its own since issue #12) at each heartbeat interval with 2 and 8 links,
idle otherwise. Kernel work done on its behalf in softirq (forwarding the probes,
running the heartbeat programs) is not charged to it and not in the figure."""
from __future__ import annotations

import os
import time
from pathlib import Path

from bench import analysis
from bench.progress import Advance
from lab import topology
from lab.processes import DaemonProcess

SETTINGS = [(interval_us, links) for links in (2, 8) for interval_us in (1000, 200)]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def setting_name(interval_us: int, links: int) -> str:
    return f"{interval_us}us_{links}links"


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def run(lab: topology.Lab, work: Path, seconds: float, advance: Advance) -> dict:
    """advance() after each setting of SETTINGS."""
    work.mkdir(parents=True, exist_ok=True)
    topology.add_spare_links(lab)
    cpu, late = {}, {}
    for interval_us, links in SETTINGS:
        name = setting_name(interval_us, links)
        config = topology.write_config(lab, interval_us=interval_us, multiplier=3, spare_links=links - 2)
        daemon = DaemonProcess(lab, config, work / f"daemon-{name}.jsonl", stats_interval_s=3600)
        try:
            daemon.wait_for("ready", 60)
            time.sleep(1.0)  # past start-up work (ARP, first reports)
            pids = (daemon.proc.pid, daemon.wait_for("attached", 1)["sender_pid"])
            ticks, t0 = sum(map(_cpu_ticks, pids)), time.monotonic()
            time.sleep(seconds)
            cpu[name] = analysis.cpu_percent(ticks, sum(map(_cpu_ticks, pids)), time.monotonic() - t0, CLOCK_TICKS)
        finally:
            daemon.stop()
        stopped = next((e for e in daemon.events() if e.get("event") == "stopped"), {})
        late[name] = {"late_periods": stopped.get("late_periods"), "max_late_us": stopped.get("max_late_us"),
                      "probes_sent": stopped.get("sent")}
        advance()
    return {"cpu_percent": cpu, "heartbeat_sender": late, "seconds_per_setting": seconds,
            "method": "utime+stime of the daemon and probe sender processes (all threads) from "
                      "/proc/<pid>/stat over the interval, as % of one core; daemon idle apart from heartbeats"}
