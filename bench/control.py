"""Control-plane cost: the daemon's CPU use with its probe sender's (all
their threads, from /proc/<pid>/task/*/schedstat: run time in ns, not
4 ms scheduler ticks; the sender is a process of its own since issue #12)
at each heartbeat interval with 2 and 8 links, idle otherwise.

Kernel work done on the daemon's behalf in softirq (forwarding the probes,
running the heartbeat programs) is not charged to it and not in the figure.
On veths it would be: a veth hands a frame to its peer's backlog and the
sending CPU processes it at once, in the sending syscall, so the carrier's
echo reply and gw's receipt of it (about half the sender's time at 200 us x
8) ran inside the sender's send(). Here the carriers' gw-facing veths run
threaded NAPI, as a carrier router is another box: that work runs in
kernel threads, reported apart as `carrier_napi_cpu_percent`. The sender
still pays the wake-up of those threads, which a NIC would not cost it."""
from __future__ import annotations

import time
from pathlib import Path

from bench import analysis
from bench.progress import Advance
from lab import topology
from lab.processes import DaemonProcess

SETTINGS = [(interval_us, links) for links in (2, 8) for interval_us in (1000, 200)]


def setting_name(interval_us: int, links: int) -> str:
    return f"{interval_us}us_{links}links"


def run_ns(pid: int) -> int:
    """Every thread's run time so far (schedstat's first field); a thread
    that ended in between takes its time with it, which only understates."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return total


def carrier_napi(lab: topology.Lab) -> list[int]:
    """Threaded NAPI on each carrier's gw-facing veth (every link's, spares
    included); returns the NAPI threads' pids. rx-gro gives a veth NAPI, and
    rx-udp-gro-forwarding lets frames from a sender with TSO on use it."""
    ends = [(link.carrier, link.carrier_dev) for link in topology.LINKS.values()] + \
        [(veth.peer_role, veth.peer_ifname) for veth in topology.SPARE_LINKS.values()]
    threads = topology.threaded_napi(lab, ends, {"rx-gro": True, "rx-udp-gro-forwarding": True})
    return sorted(threads.values())


def run(work: Path, seconds: float, advance: Advance) -> dict:
    """The `control` section of `python -m bench`, in a lab of its own (its
    carriers' threaded NAPI ends with it); advance() after each setting."""
    work.mkdir(parents=True, exist_ok=True)
    lab = topology.up()
    try:
        return measure(lab, work, seconds, advance)
    finally:
        topology.down(lab.name)


def measure(lab: topology.Lab, work: Path, seconds: float, advance: Advance) -> dict:
    topology.add_spare_links(lab)
    napi = carrier_napi(lab)
    cpu, carrier_cpu, late, readings = {}, {}, {}, {}
    for interval_us, links in SETTINGS:
        name = setting_name(interval_us, links)
        config = topology.write_config(lab, interval_us=interval_us, multiplier=3, spare_links=links - 2)
        daemon = DaemonProcess(lab, config, work / f"daemon-{name}.jsonl", stats_interval_s=3600)
        try:
            daemon.wait_for("ready", 60)
            time.sleep(1.0)  # past start-up work (ARP, first reports)
            pids = (daemon.proc.pid, daemon.wait_for("attached", 1)["sender_pid"])
            ns, napi_ns, t0 = sum(map(run_ns, pids)), sum(map(run_ns, napi)), time.monotonic()
            time.sleep(seconds)
            wall_s = time.monotonic() - t0
            cpu[name] = analysis.cpu_percent_ns(ns, sum(map(run_ns, pids)), wall_s)
            carrier_cpu[name] = analysis.cpu_percent_ns(napi_ns, sum(map(run_ns, napi)), wall_s)
        finally:
            daemon.stop()
        stopped = next((e for e in daemon.events() if e.get("event") == "stopped"), {})
        late[name] = {"late_periods": stopped.get("late_periods"), "max_late_us": stopped.get("max_late_us"),
                      "probes_sent": stopped.get("sent")}
        readings[name] = {key: stopped.get(key) for key in ("readings", "quiet_readings", "kernel_wakes")}
        advance()
    return {"cpu_percent": cpu, "carrier_napi_cpu_percent": carrier_cpu, "heartbeat_sender": late,
            "readings": readings, "seconds_per_setting": seconds,
            "method": "run time of the daemon's and the probe sender's threads (/proc/<pid>/task/*/schedstat) "
                      "over the interval, as % of one core; daemon idle apart from heartbeats; the carriers' "
                      "echo replies in threaded NAPI on their gw-facing veths (carrier_napi_cpu_percent), "
                      "not in the sender's send()"}
