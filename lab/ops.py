"""The operations scenarios of `python -m lab scenario`: what a restart, a
reload, an upgrade or a killed daemon does to traffic that keeps flowing.

An order stream runs trader -> exch over link A and an A/B MoldUDP64 feed
runs exch -> trader on both lines, both from before the operation to after
it. The result is scenario.run's object (sent, received, lost, duplicated,
... of the order stream) plus the feed's delivered_twice, missing and
delivered, and what the operation took:

  daemon-restart  SIGTERM (fail static), then a new daemon on the same config
  reload          SIGHUP after the config file changed in ways applied live
  upgrade         SIGTERM, then a daemon built with a changed map layout
                  (lab.upgrade: tp_health gains a field, so its version moves
                  on and the new daemon migrates the pinned map)
  daemon-kill     SIGKILL, then a blackhole on link A while no daemon runs:
                  the data path must still move orders to B (failed_over, from
                  the exchange's own arrivals: no daemon logs it)
"""
from __future__ import annotations

import ctypes
import signal
import threading
import time
from contextlib import ExitStack

import numpy as np

from appliance import layout
from appliance.edge import bpfsys
from lab import faults, feedrun, labbpf, libbpf, topology
from lab.feedplan import FeedPlan, check
from lab.marketdata import load_received
from lab.processes import ORDERS_PORT, DaemonProcess, ScenarioError, udp_stream
from lab.traffic import analyze_stream

OPS_SCENARIOS = ("daemon-restart", "daemon-kill", "reload", "upgrade")
FAULT_LINK, STANDBY_EXCH_DEV = "A", "hB"
# How long the streams run past the operation's start: a new daemon compiles
# its programs first (seconds; tens of seconds on a loaded 2-core host), and
# the switch to it must happen while both streams flow.
OPERATION_S = {"daemon-restart": 60.0, "upgrade": 60.0, "reload": 5.0, "daemon-kill": 5.0}
FEED_RATE = 3_000          # messages/s on each line


def _feed_plan(duration_s: float) -> FeedPlan:
    return FeedPlan(protocol="moldudp64", messages=int(FEED_RATE * duration_s), rate=FEED_RATE, batch_a=2,
                    batch_b=2, heartbeat_every=2_000, end_of_session=True, session="OPS", seed=11)


def run(name: str, lab: topology.Lab | None = None, rate_pps: int = 10_000, before_s: float = 1.0,
        after_s: float = 2.0, interval_us: int = 1000, multiplier: int = 3, slow_link_us: int = 0,
        steer_xdp: bool = False) -> dict:
    """slow_link_us: a delay on what comes back over link A throughout (its
    heartbeat RTT), from before the first daemon starts. steer_xdp: orders
    steered at XDP (steer.xdp, and the carriers' ends run GRO so that gw's
    links take XDP frames); xdp_forwarded then counts them."""
    if name not in OPS_SCENARIOS:
        raise ScenarioError(f"unknown operations scenario {name!r}; choose from {', '.join(OPS_SCENARIOS)}")
    duration_s = before_s + OPERATION_S[name] + after_s
    with ExitStack() as cleanup:
        if lab is None:
            lab = topology.up()
            cleanup.callback(topology.down, lab.name)
        workdir = lab.dir / f"scenario-{name}-{time.strftime('%H%M%S')}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = topology.write_config(lab, interval_us=interval_us, multiplier=multiplier, feeds=True,
                                       steer_xdp=steer_xdp)
        if steer_xdp:
            for link in topology.LINKS.values():
                topology.set_features(lab, link.carrier, link.carrier_dev, {"rx-gro": True})
                cleanup.callback(topology.set_features, lab, link.carrier, link.carrier_dev, {"rx-gro": False})
        if slow_link_us:
            faults.inject(lab, "delay", FAULT_LINK, delay_us=slow_link_us)
            cleanup.callback(faults.clear, lab, "delay", FAULT_LINK)
        first = DaemonProcess(lab, config, workdir / "daemon-1.jsonl")
        cleanup.callback(first.stop)
        first.wait_for("ready", 60)

        feed: dict = {}
        feed_thread = threading.Thread(target=lambda: feed.update(
            run=feedrun.run_feed(lab, _feed_plan(duration_s), workdir / "feed", timeout_s=duration_s + 30)),
            daemon=True)
        (workdir / "feed").mkdir()
        receiver, sender = udp_stream(lab, workdir, rate_pps, duration_s)
        cleanup.callback(receiver.stop)
        cleanup.callback(sender.stop)
        feed_thread.start()
        time.sleep(before_s)

        reflex_before, xdp_before = reflex_failovers(lab), gateway_stat(lab, "xdp_forwarded")
        op_ns = time.monotonic_ns()
        second, operation = _operate(name, lab, config, workdir, first, cleanup, interval_us, multiplier)
        took_s = (time.monotonic_ns() - op_ns) / 1e9
        if took_s > OPERATION_S[name]:
            raise ScenarioError(f"{name} took {took_s:.1f} s, past the streams' {OPERATION_S[name]:g} s: "
                                f"the switch-over was not measured under traffic")
        sent = sender.result(timeout_s=duration_s + 15)
        receiver.result(timeout_s=20)
        feed_thread.join(timeout=duration_s + 60)
        if "run" not in feed:
            raise ScenarioError(f"the feed did not finish (see {workdir / 'feed'})")
        time.sleep(feedrun.SETTLE_S)

        reflex = reflex_failovers(lab) - reflex_before
        xdp_forwarded = gateway_stat(lab, "xdp_forwarded") - xdp_before
        arrivals = np.load(workdir / f"arrivals-{ORDERS_PORT}.npy")
        stream = analyze_stream(arrivals, sent["issued"], op_ns, lab.ifindex("exch", STANDBY_EXCH_DEV))
        checked = check(_feed_plan(duration_s), load_received(workdir / "feed" / "received.npy"),
                                topology.FEED_SOURCES)
        daemons = [d for d in (first, second) if d]
        failovers = [e for d in daemons for e in d.events() if e.get("event") == "failover"
                     and e["class"] == "orders" and e["cause"] != "failback" and e["mono_ns"] >= op_ns]
        first_standby = stream["first_standby_ns"]
        moved = first_standby is not None
        return {
            "scenario": name,
            "failed_over": moved,
            "failovers": len(failovers) or int(moved),
            "from_link": FAULT_LINK if moved else None,
            "to_link": "B" if moved else None,
            "cause": failovers[0]["cause"] if failovers else ("data path, no daemon" if moved else None),
            "detect_us": round((failovers[0]["mono_ns"] - op_ns) / 1000, 1) if failovers else None,
            "failover_us": round((first_standby - op_ns) / 1000, 1) if moved else None,
            "sent": stream["sent"], "received": stream["received"], "lost": stream["lost"],
            "duplicated": stream["duplicated"], "reordered": stream["reordered"],
            "lost_ranges": stream["lost_seqs_ranges"],
            "feed_sent": checked["sent"], "delivered": checked["delivered"],
            "delivered_twice": checked["delivered_twice"],
            # What delivered_twice counts besides data: heartbeats and ends beyond one line's.
            "feed_heartbeats": {"sent": checked["heartbeats_sent"], "received": checked["heartbeats_received"]},
            "feed_ends": {"sent": checked["end_of_session_sent"], "received": checked["end_of_session_received"]},
            "feed_missing": checked["missing"].get("OPS", []),
            "interval_us": interval_us, "multiplier": multiplier, "rate_pps": rate_pps, "slow_link_us": slow_link_us,
            "lab": lab.name,
            "operation": operation,
            "daemon_failovers": [e for d in daemons for e in d.events() if e.get("event") == "failover"],
            "reflex_failovers": reflex,
            "xdp_forwarded": xdp_forwarded,
        }


def _newest_pin(lab: topology.Lab, name: str):
    return max(lab.gw_pin_dir.glob(f"{name}_v*"), key=lambda p: int(p.name.rsplit("_v", 1)[1]))


def reflex_failovers(lab: topology.Lab) -> int:
    """The data path's own count of reflex moves (pinned tp_steer_stats, every
    class, link and CPU): it also counts the moves made while no daemon runs
    to log them."""
    total = 0
    with labbpf.pinned(_newest_pin(lab, "tp_steer_stats"), "is a daemon's data path attached?") as fd:
        for index in range(layout.MAX_CLASSES * layout.MAX_LINKS):
            per_cpu = (layout.Counters * libbpf.possible_cpus())()
            bpfsys.map_lookup(fd, ctypes.c_uint32(index), per_cpu)
            total += sum(c.failovers for c in per_cpu)
    return total


def gateway_stat(lab: topology.Lab, name: str) -> int:
    """One of the data path's tp_gstats counters (layout.STATS), over every CPU, from its pin."""
    with labbpf.pinned(_newest_pin(lab, "tp_gstats"), "is a daemon's data path attached?") as fd:
        per_cpu = (ctypes.c_uint64 * libbpf.possible_cpus())()
        bpfsys.map_lookup(fd, ctypes.c_uint32(layout.STATS.index(name)), per_cpu)
        return sum(per_cpu)


def _operate(name: str, lab: topology.Lab, config, workdir, first: DaemonProcess, cleanup: ExitStack,
             interval_us: int, multiplier: int) -> tuple[DaemonProcess | None, dict]:
    """Does the operation; returns the daemon that runs after it (None for
    daemon-kill) and what the operation reported."""
    t0 = time.monotonic()
    if name == "reload":
        # Live changes only (appliance.core.reload): the failback hold-down and a detector's margin.
        topology.write_config(lab, interval_us=interval_us, multiplier=multiplier, holddown_ms=1500, feeds=True)
        first.signal(signal.SIGHUP)
        reloaded = first.wait_for("reloaded", 30)
        return None, {"reloaded": reloaded, "seconds": round(time.monotonic() - t0, 3)}
    if name == "daemon-kill":
        first.proc.kill()
        first.proc.wait()
        time.sleep(0.2)
        fault_ns = faults.inject(lab, "blackhole", FAULT_LINK)
        cleanup.callback(faults.clear, lab, "blackhole", FAULT_LINK)
        return None, {"killed": "SIGKILL", "blackhole_after_kill_ms": round((fault_ns / 1e9 - t0) * 1000, 1)}
    first.stop(detach=False)
    module = "lab.upgrade" if name == "upgrade" else "appliance.cli"
    second = DaemonProcess(lab, config, workdir / "daemon-2.jsonl", module=module)
    cleanup.callback(second.stop)
    ready = second.wait_for("ready", 60)
    pinned = second.wait_for("pinned", 1)
    if name == "upgrade" and "tp_health" not in pinned["migrated"]:
        raise ScenarioError(f"the upgraded daemon migrated no tp_health: {pinned}")
    return second, {"restart_s": round(time.monotonic() - t0, 3), "migrated": pinned["migrated"],
                    "adopted": any(e.get("event") == "adopted" for e in second.events()),
                    "ready_fresh": ready.get("fresh")}



def contract_failures(r: dict) -> list[str]:
    """What the measurement contract requires of each operation, broken."""
    if r["scenario"] == "daemon-kill":
        return [] if r["failed_over"] else ["the data path did not fail over with the daemon killed"]
    return [f"{k} {r[k]} (must be 0)" for k in ("lost", "duplicated", "delivered_twice") if r[k]] + \
        (["orders moved with no fault"] if r["failed_over"] else [])


def summary(r: dict) -> str:
    failures = contract_failures(r)
    return "\n".join([
        f"scenario {r['scenario']}: {r['operation']}",
        f"  orders: sent {r['sent']}, received {r['received']}, lost {r['lost']}, duplicated {r['duplicated']}"
        + (f"; moved to {r['to_link']} after {r['failover_us']} us" if r["failed_over"] else "")
        + (f"; {r['reflex_failovers']} reflex moves in the data path" if r["reflex_failovers"] else ""),
        f"  feed: sent {r['feed_sent']}, delivered {r['delivered']}, delivered twice {r['delivered_twice']}, "
        f"missing {len(r['feed_missing'])} ranges",
        "  contract holds" if not failures else "  CONTRACT BROKEN: " + "; ".join(failures)])
