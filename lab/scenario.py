"""`python -m lab scenario NAME`: a real failover, measured end to end.

A steady sequence-numbered UDP order stream runs trader -> exch through the
gateway; the fault is injected on link A's carrier; the daemon's failover
event and the stream's arrivals at exch (with the interface each packet came
in on) give detect_us and failover_us. Every time here is CLOCK_MONOTONIC, the
one clock the kernel, the daemon and the traffic tools share.

The gray scenarios inject a gray fault of lab.faults on link A with the
parameters in GRAY_SCENARIOS and are measured the same way. Today's daemon
may not fail over on them; the result then says so (failed_over false,
failovers 0, detect_us null), and only creep-then-blackhole, which ends in a
blackhole, must fail over. Their results add fault_events: what the fault's
helper recorded (flap's transitions, creep's blackhole, the helper's exit
counts), in µs from the fault.

The operations scenarios (daemon-restart, daemon-kill, reload, upgrade) are
lab.ops's; the host scenarios (a fault on the active gateway of an HA pair,
twinpath or keepalived: host-death, ...) lab.hostscenario's, on a pair lab.
The attack scenarios (lab.attacks) run here too: spoofed-heartbeats is
blackhole, measured the same way, with an attacker on link A's wire;
forged-session is a market-data feed with a forged packet on line A.
"""
from __future__ import annotations

import time
from contextlib import ExitStack

import numpy as np

from lab import attacks, faults, hostscenario, ops, topology
from lab.processes import ORDERS_PORT, DaemonProcess, ScenarioError, udp_stream
from lab.traffic import analyze_stream

SCENARIOS = ("carrier-down", "blackhole", "blackhole-tx", "blackhole-rx")   # faults on link A
# Gray faults on link A and their parameters (for delay, jitter, flap and
# creep-then-blackhole also `python -m lab fault`'s defaults).
GRAY_SCENARIOS = {
    "delay": {"delay_us": 2000},
    "jitter": {"jitter_us": 1500},
    "flap": {"down_ms": 50, "up_ms": 450},
    "loss": {"probability": 0.2},
    "creep-then-blackhole": {"creep_s": 3.0, "creep_delay_us": 3000, "creep_loss": 0.3},
}
ATTACK_SCENARIOS = ("spoofed-heartbeats", "forged-session")  # lab.attacks
ALL_SCENARIOS = SCENARIOS + tuple(GRAY_SCENARIOS) + ATTACK_SCENARIOS + ops.OPS_SCENARIOS + hostscenario.HOST_SCENARIOS
# A gray fault's helper takes about 0.5 s to start (more on a loaded machine):
# the stream runs this much longer, so after_s still follows the fault.
HELPER_START_S = 2.0
FAULT_LINK, STANDBY_LINK = "A", "B"
STANDBY_EXCH_DEV = "hB"   # exch's handoff from carrier B


def run(name: str, lab: topology.Lab | None = None, rate_pps: int = 10_000, before_s: float = 1.0,
        after_s: float = 2.0, interval_us: int = 1000, multiplier: int = 3, holddown_ms: int = 1000,
        peer: str = "twinpath") -> dict:
    """Runs scenario `name` on `lab` (a fresh lab if None, torn down after)
    and returns the measurement object. forged-session takes none of the
    order stream's parameters. A host scenario runs on a pair lab
    (lab.pair.PairLab) with `peer` (twinpath or keepalived) on its gateways."""
    if name not in ALL_SCENARIOS:
        raise ScenarioError(f"unknown scenario {name!r}; choose from {', '.join(ALL_SCENARIOS)}")
    if name in hostscenario.HOST_SCENARIOS:
        return hostscenario.run(name, lab, peer=peer, rate_pps=rate_pps, before_s=before_s, after_s=after_s,
                                interval_us=interval_us, multiplier=multiplier)
    if peer != "twinpath":
        raise ScenarioError(f"{name} runs twinpath only; --peer {peer} is for the host scenarios")
    if name == "forged-session":
        return attacks.run_forged_session(lab)
    if name in ops.OPS_SCENARIOS:
        return ops.run(name, lab, rate_pps=rate_pps, before_s=before_s, after_s=after_s, interval_us=interval_us,
                       multiplier=multiplier)
    spoofed = name == "spoofed-heartbeats"
    fault = "blackhole" if spoofed else name
    params = GRAY_SCENARIOS.get(name, {})
    # creep-then-blackhole: the blackhole, after_s's reference, comes creep_s after the fault.
    stream_after_s = after_s + params.get("creep_s", 0) + (HELPER_START_S if fault in faults.HELPERS else 0)
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
            attacker = attacks.HeartbeatSpoofer(lab, config, FAULT_LINK, max_s=before_s + stream_after_s + 30)
            cleanup.callback(attacker.stop)

        receiver, sender = udp_stream(lab, workdir, rate_pps, before_s + stream_after_s)
        cleanup.callback(receiver.stop)
        cleanup.callback(sender.stop)
        if attacker:
            time.sleep(max(0.0, before_s - attacks.ATTACK_LEAD_S))
            attacker.go()
        else:
            time.sleep(before_s)
        fault_ns = faults.inject(lab, fault, FAULT_LINK, **params)
        cleanup.callback(faults.clear, lab, fault, FAULT_LINK)
        sent = sender.result(timeout_s=stream_after_s + 15)
        receiver.result(timeout_s=20)
        gray = {}
        if name in GRAY_SCENARIOS:
            faults.clear(lab, fault, FAULT_LINK)  # first: a helper records its exit counts as it stops
            gray = {"fault_params": params, "fault_events": events_since(faults.events(lab, FAULT_LINK), fault_ns)}
        attack = attacker.finish(daemon, fault_ns, lambda: faults.clear(lab, fault, FAULT_LINK)) if attacker else {}
        arrivals = np.load(workdir / f"arrivals-{ORDERS_PORT}.npy")
        # issued, not sent: a failed send still used up its sequence number
        stream = analyze_stream(arrivals, sent["issued"], fault_ns, lab.ifindex("exch", STANDBY_EXCH_DEV))

        failovers = [e for e in daemon.events() if e.get("event") == "failover"
                     and e["class"] == "orders" and e["cause"] != "failback" and e["mono_ns"] >= fault_ns]
        failover = failovers[0] if failovers else None
        first_standby = stream["first_standby_ns"]
        result = {
            "scenario": name,
            "failed_over": failover is not None,
            "failovers": len(failovers),
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
            **gray,
            **attack,
        }
        if spoofed:
            result["contract_failures"] = attacks.contract_failures(result)
        return result


def events_since(events: list[dict], fault_ns: int) -> list[dict]:
    """A fault's events with their time in µs from the fault (t_us) instead of mono_ns."""
    return [{"t_us": round((e["mono_ns"] - fault_ns) / 1000, 1), **{k: v for k, v in e.items() if k != "mono_ns"}}
            for e in events]


def contract_holds(result: dict) -> bool:
    """What `python -m lab scenario` exits 0 for (lab.attacks.contract_failures);
    a gray fault that does not end in a blackhole has no contract yet."""
    if result["scenario"] in GRAY_SCENARIOS and result["scenario"] != "creep-then-blackhole":
        return True
    if result["scenario"] in ops.OPS_SCENARIOS:
        return not ops.contract_failures(result)
    if result["scenario"] in hostscenario.HOST_SCENARIOS:
        return not hostscenario.contract_failures(result)
    return not attacks.contract_failures(result)


def summary(result: dict) -> str:
    """The human-readable account `make demo` prints."""
    r = result
    if r["scenario"] in ops.OPS_SCENARIOS:
        return ops.summary(r)
    if r["scenario"] in hostscenario.HOST_SCENARIOS:
        return hostscenario.summary(r)
    if r["scenario"] == "forged-session":
        failures = attacks.contract_failures(r)
        return "\n".join([
            f"scenario forged-session: one forged MoldUDP64 packet (session {attacks.FORGED_SESSION}, seq "
            f"{r['forged_seq']}) on line A once it carried seq {r['forged_after_seq']}",
            f"  feed: sent {r['sent']}, delivered {r['delivered']}, delivered twice {r['delivered_twice']}, "
            f"out of order {r['out_of_order']}, gaps expected {len(r['gaps_expected'])} / reported "
            f"{len(r['gaps_reported'])}; forged packets at the trader {r['forged_delivered']}",
            "  contract holds" if not failures else "  CONTRACT BROKEN: " + "; ".join(failures)])
    gray = r["scenario"] in GRAY_SCENARIOS
    fault = (f"degrades at t=0 ({', '.join(f'{k} {v}' for k, v in r['fault_params'].items())})" if gray
             else "fails at t=0")
    lines = [f"scenario {r['scenario']}: link {FAULT_LINK} {fault} "
             f"(heartbeat {r['interval_us']} us x {r['multiplier']}, stream {r['rate_pps']} packets/s)"]
    blackhole = next((e["t_us"] for e in r.get("fault_events", ()) if e["event"] == "blackhole"), None)
    if blackhole is not None:
        lines.append(f"  link {FAULT_LINK} black-holed at {blackhole} us")
    if r["scenario"] == "spoofed-heartbeats":
        lines.append(f"  attacker on carrier {FAULT_LINK}'s wire: {r['spoofed_by_kind']['forged']} forged + "
                     f"{r['spoofed_by_kind']['replayed']} replayed heartbeat replies; accepted while "
                     f"black-holed: {r['spoofed_accepted']}")
    if r["failed_over"]:
        lines += [f"  data path moved class 'orders' {r['from_link']} -> {r['to_link']} "
                  f"(cause: {r['cause']}) after {r['detect_us']} us",
                  f"  first order over {r['to_link']} reached the exchange at {r['failover_us']} us"]
    elif gray:
        lines.append("  no failover (failovers 0, detect_us null)")
    else:
        lines.append("  NO FAILOVER happened")
    lines.append(f"  stream: sent {r['sent']}, received {r['received']}, lost {r['lost']}, "
                 f"duplicated {r['duplicated']}, reordered {r['reordered']}")
    if r.get("contract_failures"):
        lines.append("  CONTRACT BROKEN: " + "; ".join(r["contract_failures"]))
    return "\n".join(lines)
