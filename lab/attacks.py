"""The attack scenarios of `python -m lab scenario`: an attacker on carrier A's
wire (lab.attack, run in carA on the veth the fault injector sits
on) against the two kernel decisions an attacker there could steer.

- spoofed-heartbeats: `blackhole` on link A, run and measured exactly as
  scenario.run measures it, while forged and replayed heartbeat replies
  arrive on gw's link A at 5,000/s for the whole fault. Contract: the link
  still fails over, losing no more than a blackhole does, and no spoofed
  reply is accepted.
- forged-session: a MoldUDP64 feed on lines A and B through the arbiter, and
  one forged packet of another session on line A mid-feed. Contract: every
  message of the genuine session delivered, none twice.

How spoofed replies are counted. The daemon's `health` line carries each
link's accepted replies (links.A.replies, from the kernel). While A is black-
holed, no genuine reply can reach gw on it, so every reply accepted then is a
spoofed one. The window is from the first health line logged at least
HEALTH_SETTLE_NS after the fault began (by then the counters were read after
the fault took hold) to the last one logged before the fault was cleared.
The daemon logs health every SPOOF_STATS_INTERVAL_S here, so the window
misses at most that much (plus the settle margin) at the fault's start; the
attack runs on past the window's end until the fault is cleared. Taking the
last health line before the fault instead would count the genuine replies
between its read and the fault.
"""
from __future__ import annotations

import signal
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from appliance.edge.configfile import load as load_config
from lab import feedrun, topology
from lab.feedplan import FeedPlan, check, expected
from lab.marketdata import load_received
from lab.processes import DaemonProcess, ScenarioError, Tool

ATTACK_MODULE = "lab.attack"
SPOOF_RATE = 5000              # spoofed replies per second on link A (forged and replayed alternate)
SPOOF_STATS_INTERVAL_S = 0.1   # the daemon's health lines: the edges of the counting window
ATTACK_LEAD_S = 0.1            # the attack is in full swing this long before the fault
HEALTH_SETTLE_NS = 50_000_000  # a health line this long after the fault read its counters after it
CAPTURE_S = 1.0                # genuine replies captured for replay: the second before the attack
LOST_MARGIN = 200              # as tests/kernel/test_failover.py: slack for a loaded 2-core machine

FORGED_SESSION = "FORGED0001"
FORGE_AFTER_SEQ = 12_000       # the forged packet comes once line A has carried this far


def max_lost(rate_pps: int, interval_us: int, multiplier: int) -> int:
    """Orders a failover may lose: those sent while the failed link is still
    in use (one dead interval plus one probe period) and a margin."""
    return rate_pps * interval_us * (multiplier + 1) // 1_000_000 + LOST_MARGIN


def contract_failures(result: dict) -> list[str]:
    """What of a scenario's contract its result breaks (empty: it holds).
    Fault scenarios: it failed over. spoofed-heartbeats: it failed over from
    A to B, losing no more than the dead interval's orders, and no spoofed
    reply was accepted.
    forged-session: every message delivered, none twice."""
    r, out = result, []
    if r["scenario"] == "forged-session":
        if r["delivered"] != r["sent"]:
            out.append(f"delivered {r['delivered']} of {r['sent']} messages")
        if r["delivered_twice"]:
            out.append(f"delivered_twice {r['delivered_twice']}")
        return out
    if not r["failed_over"]:
        out.append("no failover")
    if r["scenario"] == "spoofed-heartbeats":
        if r["failed_over"] and (r["from_link"], r["to_link"]) != ("A", "B"):
            out.append(f"failed over {r['from_link']} -> {r['to_link']}, not A -> B")
        bound = max_lost(r["rate_pps"], r["interval_us"], r["multiplier"])
        if r["lost"] > bound:
            out.append(f"lost {r['lost']} orders, more than the dead interval's {bound}")
        if r["spoofed_accepted"]:
            out.append(f"{r['spoofed_accepted']} spoofed heartbeat replies accepted on A")
    return out


# ---------------------------------------------------------------- spoofed-heartbeats

def health_counters(line: dict, link: str) -> dict[str, int]:
    """The integer counters of a health line: links.<link>.* and drops.*."""
    out = {f"links.{link}.{k}": v for k, v in line["links"][link].items()
           if isinstance(v, int) and not isinstance(v, bool)}
    out.update({f"drops.{k}": v for k, v in line.get("drops", {}).items()
                if isinstance(v, int) and not isinstance(v, bool)})
    return out


def counted_during_fault(events: list[dict], link: str, fault_ns: int, clear_ns: int) -> dict:
    """The daemon's counters over the window of the module docstring:
    {"accepted": replies accepted on `link`, "counters": every counter that
    moved, "window_ms": [start, end] after the fault}. None when the fault
    held too briefly for two health lines."""
    health = [e for e in events if e.get("event") == "health"]
    first = next((h for h in health if h["mono_ns"] >= fault_ns + HEALTH_SETTLE_NS), None)
    last = next((h for h in reversed(health) if h["mono_ns"] < clear_ns), None)
    if first is None or last is None or last["mono_ns"] <= first["mono_ns"]:
        return None
    before, after = health_counters(first, link), health_counters(last, link)
    moved = {k: after[k] - before[k] for k in after if k in before and after[k] != before[k]}
    return {"accepted": after[f"links.{link}.replies"] - before[f"links.{link}.replies"],
            "counters": moved,
            "window_ms": [round((first["mono_ns"] - fault_ns) / 1e6, 1),
                          round((last["mono_ns"] - fault_ns) / 1e6, 1)]}


class HeartbeatSpoofer:
    """The spoof-heartbeats tool on link A's carrier, from before the order
    stream starts until after the fault is cleared."""

    def __init__(self, lab: topology.Lab, config: Path, link: str = "A", rate: int = SPOOF_RATE,
                 max_s: float = 60.0):
        spec = topology.LINKS[link]
        with lab.iproute("gw") as ipr:
            (gw_dev,) = ipr.get_links(ifname=spec.gw_dev)
        self.link = link
        self.tool = Tool.in_lab(
            lab, spec.carrier, "spoof-heartbeats", "--dev", spec.carrier_dev, "--src", spec.target,
            "--dst", spec.gw_addr, "--dst-mac", gw_dev.get_attr("IFLA_ADDRESS"),
            "--link-id", str(load_config(config).link_index(link)), "--rate", str(rate),
            "--capture-s", str(CAPTURE_S), "--max-s", str(max_s), "--count", str(int(rate * max_s)),
            "--timeout", str(max_s + 30), "--realtime", module=ATTACK_MODULE)
        self.tool.wait_ready()

    def go(self) -> None:
        """Starts the attack (SIGUSR1) and gives it ATTACK_LEAD_S to get going."""
        self.tool.proc.send_signal(signal.SIGUSR1)
        time.sleep(ATTACK_LEAD_S)

    def finish(self, daemon, fault_ns: int, clear) -> dict:
        """With the fault still on: waits for one more health line, clears the
        fault (clear() returns when), stops the attack; the scenario's keys."""
        asked_ns = time.monotonic_ns()
        deadline = time.monotonic() + 10 * SPOOF_STATS_INTERVAL_S + 5
        while not any(e.get("event") == "health" and e["mono_ns"] > asked_ns for e in daemon.events()):
            if time.monotonic() > deadline:
                raise ScenarioError("the daemon logged no health line")
            time.sleep(SPOOF_STATS_INTERVAL_S / 4)
        clear_ns = clear()
        self.tool.proc.send_signal(signal.SIGTERM)
        sent = self.tool.result(timeout_s=15)
        if not sent["sent"] or sent["attack_start_ns"] >= fault_ns:
            raise ScenarioError(f"the attack did not begin before the fault: {sent}")
        window = counted_during_fault(daemon.events(), self.link, fault_ns, clear_ns)
        if window is None:
            raise ScenarioError("the fault held too briefly to count accepted replies")
        return {"spoofed_sent": sent["sent"],
                "spoofed_by_kind": {"forged": sent["forged"], "replayed": sent["replayed"]},
                "spoofed_accepted": window["accepted"],
                "spoofed_window_ms": window["window_ms"],
                "gw_counters_during_fault": window["counters"],
                "attacker": sent}

    def stop(self) -> None:
        self.tool.stop()


# ---------------------------------------------------------------- forged-session

def forge_plan():
    """The genuine feed: the arbitration bench's shape (20,000 MoldUDP64
    messages at 30,000/s, two per packet, heartbeats, end of session), no
    line faults, a session of its own."""
    return FeedPlan(protocol="moldudp64", messages=20_000, rate=30_000, batch_a=2, batch_b=2,
                    heartbeat_every=2_000, end_of_session=True, session="GENUINE01", seed=7)


def run_forged_session(lab: topology.Lab | None = None) -> dict:
    """The forged-session scenario on `lab` (a fresh lab if None, torn down after)."""

    plan = forge_plan()
    with ExitStack() as cleanup:
        if lab is None:
            lab = topology.up()
            cleanup.callback(topology.down, lab.name)
        workdir = lab.dir / f"scenario-forged-session-{time.strftime('%H%M%S')}"
        workdir.mkdir(parents=True, exist_ok=True)
        daemon = DaemonProcess(lab, topology.write_config(lab, feeds=True), workdir / "daemon.jsonl")
        cleanup.callback(daemon.stop)
        daemon.wait_for("ready", 60)

        spec = topology.LINKS["A"]
        attacker = Tool.in_lab(
            lab, spec.carrier, "forge-session", "--dev", spec.carrier_dev, "--src", topology.FEED_SOURCES["A"],
            "--port", str(topology.FEED_PORTS[plan.protocol]), "--session", FORGED_SESSION,
            "--after-seq", str(FORGE_AFTER_SEQ), "--timeout", "60", module=ATTACK_MODULE)
        cleanup.callback(attacker.stop)
        attacker.wait_ready()
        run = feedrun.run_feed(lab, plan, workdir)
        if attacker.proc.poll() is None:  # the feed ended before the line got that far
            attacker.proc.send_signal(signal.SIGTERM)
        forged = attacker.result(timeout_s=15)
        if forged["forged_sent"] != 1:
            raise ScenarioError(f"the attacker injected nothing: {forged}")
        time.sleep(feedrun.SETTLE_S)

        # The forged packet, if it reached the trader, is not the feed's: judged apart.
        records = load_received(workdir / "received.npy")
        is_forged = records["session"] == FORGED_SESSION.encode()
        r = check(plan, records[~is_forged], topology.FEED_SOURCES)
        feed = feedrun.FEED_NAMES[plan.protocol]
        result = {
            "scenario": "forged-session",
            "sent": r["sent"], "delivered": r["delivered"], "delivered_twice": r["delivered_twice"],
            "out_of_order": r["out_of_order"],
            "gaps_expected": expected(plan)["gaps_expected"].get(plan.session, []),
            "gaps_reported": feedrun.reported_gaps(daemon, feed, run.start_ns),
            "forged_sent": forged["forged_sent"],
            "forged_seq": forged.get("seq"), "forged_after_seq": FORGE_AFTER_SEQ,
            "forged_frame_bytes": forged.get("frame_bytes"),
            "forged_delivered": int(np.count_nonzero(is_forged)),
            "missing": r["missing"].get(plan.session, []), "redundant_messages": r["redundant_messages"],
            "corrupt": r["corrupt"], "unexpected": r["unexpected"],
            "sessions_entered": [{"line": e["line"], "first": e["first"]} for e in daemon.events()
                                 if e.get("event") == "session" and e.get("feed") == feed
                                 and e["mono_ns"] >= run.start_ns],
            "publisher_rate": run.published["rate"],
            "lab": lab.name,
            "attacker": forged,
        }
        result["contract_failures"] = contract_failures(result)
        return result
