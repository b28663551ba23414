"""The host section: HA pair failover (lab.hostscenario), twinpath beside
keepalived.

For each peer (twinpath at 1 ms x 3 with an etcd witness; keepalived, VRRP
adverts every 10 ms) one pair lab is built and its software started once;
every host scenario then runs `trials` times on it, back to back (each
trial restores the lab and waits for the pair to settle; only software a
fault killed is restarted). Per trial: did the standby take over, when the
first order through it reached the exchange, how long both gateways
forwarded at once (dual_active_us), orders lost and duplicated, and for
host-death whether a TCP order session survived.

results.json gets `host.<peer>.<scenario>` and `host.goals` (summarise(),
pure, so `--render` recomputes it from raw.json).
"""
from __future__ import annotations

import json
import traceback
from pathlib import Path

from appliance.core.stats import percentiles
from bench.progress import Advance
from lab import hostscenario, pair
from lab.hostscenario import EXPECT, HOST_SCENARIOS, LOSSLESS, PEERS

SETTING = {"rate_pps": 10_000, "interval_us": 1000, "multiplier": 3}
TAKEOVER_GOAL_US = 5000
# Consecutive failed trials after which a peer's pair is given up on: each
# would otherwise wait the whole settle timeout.
MAX_CONSECUTIVE_ERRORS = 3


def run(work: Path, trials: int, advance: Advance, scenarios: tuple[str, ...] = HOST_SCENARIOS) -> dict:
    """Every trial's result (raw), per peer and scenario; also saved in
    work/trials.json. advance() after each trial, run or skipped."""
    work.mkdir(parents=True, exist_ok=True)
    raw: dict = {"setting": SETTING, "trials": trials, "scenarios": list(scenarios), "errors": [],
                 **{peer: {name: [] for name in scenarios} for peer in PEERS}}
    for peer in PEERS:
        pending = trials * len(scenarios)
        lab = pair.up()
        try:
            hp = hostscenario.prepare(lab, peer, SETTING["interval_us"], SETTING["multiplier"], work / peer)
            try:
                failed_in_a_row = 0
                for name in scenarios:
                    for trial in range(trials):
                        try:
                            raw[peer][name].append(hostscenario.trial(hp, name, SETTING["rate_pps"]))
                            failed_in_a_row = 0
                        except Exception:  # one broken trial must not cost the others
                            raw["errors"].append({"peer": peer, "scenario": name, "trial": trial,
                                                  "error": traceback.format_exc()})
                            failed_in_a_row += 1
                        pending -= 1
                        advance()
                        if failed_in_a_row >= MAX_CONSECUTIVE_ERRORS:
                            raise RuntimeError(f"{failed_in_a_row} trials in a row failed; {peer} given up")
            finally:
                hp.stop()
        except Exception:  # the other peer's figures must survive
            raw["errors"].append({"peer": peer, "error": traceback.format_exc()})
            advance(pending)
        finally:
            pair.down(lab.name)
    (work / "trials.json").write_text(json.dumps(raw, indent=1))
    return raw


def summarise_scenario(results: list[dict]) -> dict:
    took = [r for r in results if r["took_over"]]
    dual = [r["dual_active_us"] for r in results]
    out = {
        "trials": len(results),
        "took_over": len(took),
        "takeover_us": percentiles([r["takeover_us"] for r in took]),
        # Far above the path's tens of µs: the sender was held off the CPU, and takeover_us measures that.
        "takeover_order_delay_us": percentiles([r["takeover_order_delay_us"] for r in took], ("p50", "max")),
        # The exchange's own view: last order through the old gateway -> first through the new one.
        "outage_us": percentiles([r["outage_us"] for r in took if r.get("outage_us") is not None]),
        "dual_active_us": {"max": max(dual, default=None), "total": round(sum(dual), 1)},
        "lost": percentiles([r["lost"] for r in results], ("p50", "max")),
        "duplicated": sum(r["duplicated"] for r in results),
    }
    if any("tcp_session_survived" in r for r in results):
        out["tcp_sessions_survived"] = sum(bool(r.get("tcp_session_survived")) for r in results)
    return out


def summarise(raw: dict) -> dict:
    """results.json's `host`: per peer and scenario, the goals, the setting
    and how many trials could not run."""
    scenarios = raw.get("scenarios", HOST_SCENARIOS)   # --host-scenarios: a subset
    out: dict = {peer: {name: summarise_scenario(raw[peer][name]) for name in scenarios} for peer in PEERS}
    tw = out["twinpath"]
    death = tw.get("host-death")
    # None: the goal's scenario was not run.
    out["goals"] = {
        # Every trial took over, and within the goal at p99: a trial that did not take over never did.
        "host_death_takeover_p99_le_5000_us": None if death is None else bool(
            death["trials"] and death["took_over"] == death["trials"]
            and death["takeover_us"]["p99"] <= TAKEOVER_GOAL_US),
        "dual_active_zero": all(s["trials"] and s["dual_active_us"]["max"] == 0 for s in tw.values()),
        **{f"no_takeover_{name.replace('-', '_')}": None if name not in tw else
           bool(tw[name]["trials"] and tw[name]["took_over"] == 0)
           for name in HOST_SCENARIOS if not EXPECT[name]},
        **{f"lossless_{name}": None if name not in tw else
           bool(tw[name]["trials"] and tw[name]["took_over"] == tw[name]["trials"] and tw[name]["lost"]["max"] == 0)
           for name in LOSSLESS},
    }
    out["setting"] = raw["setting"]
    out["errors"] = len(raw["errors"])
    return out


def _cell(summary: dict, keys: tuple[str, ...], field: str) -> str:
    values = summary[field]
    return " / ".join("–" if values[k] is None else f"{values[k]:,.0f}" for k in keys)


def report_lines(h: dict) -> list[str]:
    """REPORT.md's host section (h: results.json's `host`): each scenario's
    figures, twinpath beside keepalived."""
    s = h["setting"]
    lines = ["## Host failover (HA pair: a fault on the active gateway)", "",
             (f"Orders at {s['rate_pps']:,}/s trader -> VIP -> exchange; twinpath at {s['interval_us']} us x "
              f"{s['multiplier']} with an etcd witness, keepalived with VRRP adverts every 10 ms (plain kernel "
              "routing). took over: an order sent after the fault reached the exchange through the other gateway "
              "(twinpath must in host-death, host-links-down and lan-partition, and only there); takeover_us: "
              "fault -> that order's arrival, over the trials that took over; outage_us: the exchange's own "
              "clock, last order through the old gateway -> first through the new; dual active: send time during which "
              "orders went through both gateways (a clean handover counts 0), max per trial and total. "
              "Each cell: twinpath | keepalived. A takeover_us close to the delay of the order that showed it "
              "(results.json: takeover_order_delay_us) measures the order sender held off the CPU, not the "
              "pair."), "",
             ("| scenario | trials | took over | takeover_us p50 / p99 / max | outage_us p50 / p99 / max | "
              "dual active us max / total | lost/trial p50 / max | duplicated |"), "|---|---|---|---|---|---|---|---|"]
    for name in h["twinpath"]:
        tw, ka = h["twinpath"][name], h["keepalived"][name]
        lines.append(" | ".join([
            f"| {name}", f"{tw['trials']} \\| {ka['trials']}",
            f"{tw['took_over']}{' (must)' if EXPECT[name] else ' (must not)'} \\| {ka['took_over']}",
            *(f"{_cell(tw, keys, field)} \\| {_cell(ka, keys, field)}"
              for field, keys in (("takeover_us", ("p50", "p99", "max")), ("outage_us", ("p50", "p99", "max")),
                                  ("dual_active_us", ("max", "total")),
                                  ("lost", ("p50", "max")))),
            f"{tw['duplicated']} \\| {ka['duplicated']} |"]))
    if "host-death" in h["twinpath"]:
        lines += ["", "TCP order session across host-death, sessions survived: " + ", ".join(
            f"{peer} {h[peer]['host-death'].get('tcp_sessions_survived', 0)} of {h[peer]['host-death']['trials']}"
            for peer in PEERS)]
    lines += ["", "Goals (twinpath): " + ", ".join(
        f"{goal} **{'not run' if met is None else 'yes' if met else 'no'}**" for goal, met in h["goals"].items()), ""]
    if h["errors"]:
        lines += [f"{h['errors']} trial(s) or pair(s) could not run; see host/trials.json.", ""]
    return lines


def headline(h: dict) -> str:
    dual = {peer: max((s["dual_active_us"]["max"] or 0) for s in h[peer].values()) for peer in PEERS}
    death = ""
    if "host-death" in h["twinpath"]:
        tw, ka = h["twinpath"]["host-death"], h["keepalived"]["host-death"]
        death = (f"host-death takeover p50/p99: twinpath {_cell(tw, ('p50', 'p99'), 'takeover_us')} us, "
                 f"keepalived {_cell(ka, ('p50', 'p99'), 'takeover_us')} us; ")
    return (f"{death}dual active max over every scenario run: twinpath {dual['twinpath']:,.0f} us, "
            f"keepalived {dual['keepalived']:,.0f} us")
