"""The security section: attacks from carrier A's wire, repeated, and (room
for) the fuzz figures.

- spoofed-heartbeats (lab.attacks): blackhole on link A while
  forged and replayed heartbeat replies arrive on it at 5,000/s. Per trial:
  did it fail over, what it lost, how many spoofed replies were accepted.
- forged-session: a MoldUDP64 feed with one forged packet of another session
  on line A. Per trial: sent, delivered, delivered twice.
- fuzz (bench/fuzz.py): random and mutated frames through every product
  program against pure-Python references; `security.fuzz.frames`,
  `.mismatches` (must be 0) and `.frames_per_s` (run_fuzz() below).

results.json gets `security`: spoofed_replies_accepted (the sum over every
spoofed-heartbeats trial; must be 0), spoofed_sent (the sum), per-scenario
figures under `scenarios`, and `fuzz`. summarise() is pure, so `--render`
recomputes it from raw.json.
"""
from __future__ import annotations

import json
import traceback
from pathlib import Path

from appliance.core.stats import percentiles
from bench.progress import Advance, Progress
from lab import attacks, scenario, topology

SPOOF_SETTING = {"rate_pps": 10_000, "interval_us": 1000, "multiplier": 3}  # scenario.run's defaults


def run(lab: topology.Lab, work: Path, plan, progress: Progress) -> dict:
    """Every trial's scenario result (raw), saved in work/trials.json too.
    Two bars: the attack trials, then the fuzz frames."""
    work.mkdir(parents=True, exist_ok=True)
    raw: dict = {"spoofed-heartbeats": [], "forged-session": [], "errors": []}
    runs = (("spoofed-heartbeats", plan.security_spoof_trials), ("forged-session", plan.security_forge_trials))
    with progress.bar("security", sum(trials for _, trials in runs), "trials") as bar:
        for name, trials in runs:
            for trial in range(trials):
                try:
                    kwargs = SPOOF_SETTING if name == "spoofed-heartbeats" else {}
                    raw[name].append(scenario.run(name, lab, **kwargs))
                except Exception:  # one broken trial must not cost the others
                    raw["errors"].append({"scenario": name, "trial": trial, "error": traceback.format_exc()})
                bar.advance()
    with progress.bar("fuzz", plan.fuzz_frames, "frames") as bar:
        raw["fuzz"] = run_fuzz(work / "fuzz", plan, bar.advance)
    (work / "trials.json").write_text(json.dumps(raw, indent=1))
    return raw


def summarise(raw: dict) -> dict:
    """results.json's `security` from the section's raw output."""
    spoof, forge = raw["spoofed-heartbeats"], raw["forged-session"]
    bound = attacks.max_lost(SPOOF_SETTING["rate_pps"], SPOOF_SETTING["interval_us"], SPOOF_SETTING["multiplier"])
    rejected: dict[str, int] = {}
    for r in spoof:
        for key, moved in r["gw_counters_during_fault"].items():
            if key.startswith("drops.reply_") and key != "drops.reply_ok":
                rejected[key.removeprefix("drops.")] = rejected.get(key.removeprefix("drops."), 0) + moved
    return {
        "spoofed_replies_accepted": sum(r["spoofed_accepted"] for r in spoof),
        "spoofed_sent": sum(r["spoofed_sent"] for r in spoof),
        "errors": len(raw["errors"]),
        "scenarios": {
            "spoofed-heartbeats": {
                "trials": len(spoof),
                "contract_held": sum(not attacks.contract_failures(r) for r in spoof),
                "failed_over": sum(r["failed_over"] for r in spoof),
                "spoofed_accepted": [r["spoofed_accepted"] for r in spoof],
                "spoofed_sent": {kind: sum(r["spoofed_by_kind"][kind] for r in spoof)
                                 for kind in ("forged", "replayed")},
                # The heartbeat program's rejections in the counting windows (all links).
                "rejected_during_fault": rejected,
                "counted_s": round(sum(r["spoofed_window_ms"][1] - r["spoofed_window_ms"][0] for r in spoof) / 1000, 1),
                "detect_us": percentiles([r["detect_us"] for r in spoof]),
                "lost_per_trial": percentiles([r["lost"] for r in spoof]),
                "max_lost_allowed": bound,
                **SPOOF_SETTING,
            },
            "forged-session": {
                "trials": len(forge),
                "contract_held": sum(not attacks.contract_failures(r) for r in forge),
                "forged_sent": sum(r["forged_sent"] for r in forge),
                "forged_delivered": sum(r["forged_delivered"] for r in forge),
                "sent": sum(r["sent"] for r in forge),
                "delivered": sum(r["delivered"] for r in forge),
                "delivered_twice": sum(r["delivered_twice"] for r in forge),
                "out_of_order": sum(r["out_of_order"] for r in forge),
                "gaps_expected": sum(len(r["gaps_expected"]) for r in forge),
                "gaps_reported": sum(len(r["gaps_reported"]) for r in forge),
            },
        },
        "fuzz": summarise_fuzz(raw.get("fuzz") or {}),
    }


def report_lines(s: dict) -> list[str]:
    """REPORT.md's security section (s: results.json's `security`)."""
    sp, fs = s["scenarios"]["spoofed-heartbeats"], s["scenarios"]["forged-session"]
    lines = ["## Security (attacks from carrier A's wire)", "",
             "spoofed-heartbeats: link A black-holed while forged and replayed heartbeat replies arrive on it at "
             "5,000/s, sent past the fault injector; accepted: replies the gateway accepted on A while it was "
             "black-holed (all spoofed). forged-session: one forged MoldUDP64 packet of another session on line A "
             "mid-feed. Contract: fails over losing no more than a blackhole "
             f"(<= {sp['max_lost_allowed']} orders at {sp['rate_pps']:,}/s), no spoofed reply accepted; the "
             "genuine feed delivered whole, nothing twice.", "",
             "| scenario | trials | contract held | detail |", "|---|---|---|---|",
             f"| spoofed-heartbeats | {sp['trials']} | {sp['contract_held']} | failed over {sp['failed_over']}; "
             f"spoofed sent {s['spoofed_sent']:,} (forged {sp['spoofed_sent']['forged']:,}, replayed "
             f"{sp['spoofed_sent']['replayed']:,}), accepted **{s['spoofed_replies_accepted']:,}** in "
             f"{sp['counted_s']} s counted; lost/trial p50 / p99 / max "
             + " / ".join(_num(sp['lost_per_trial'][k]) for k in ("p50", "p99", "max")) + "; rejected "
             + (", ".join(f"{k} {v:,}" for k, v in sp["rejected_during_fault"].items()) or "none") + " |",
             f"| forged-session | {fs['trials']} | {fs['contract_held']} | delivered {fs['delivered']:,} of "
             f"{fs['sent']:,}, twice {fs['delivered_twice']}, forged sent {fs['forged_sent']}, forged at the "
             f"trader {fs['forged_delivered']} |", ""]
    if s["errors"]:
        lines += [f"{s['errors']} trial(s) could not run; see security/trials.json.", ""]
    return lines + report_lines_fuzz(s["fuzz"])


def _num(v) -> str:
    return "–" if v is None else f"{v:,.0f}"


def headline(s: dict) -> str:
    sp, fs = s["scenarios"]["spoofed-heartbeats"], s["scenarios"]["forged-session"]
    return (f"security: spoofed heartbeat replies accepted on a black-holed link: {s['spoofed_replies_accepted']:,} "
            f"({s['spoofed_sent']:,} sent; {sp['trials']} blackhole trials, {sp['failed_over']} failed over); "
            f"forged session: "
            f"{fs['delivered']:,} of {fs['sent']:,} messages delivered, {fs['delivered_twice']} twice "
            f"({fs['trials']} trials)")


# ---------------------------------------------------------------- fuzz: security.fuzz.*
# bench/fuzz.py pushes random and mutated frames through every product
# program (BPF_PROG_TEST_RUN on programs compiled for it; the lab is not
# used) and checks each verdict, output and counter against the program's
# pure-Python reference (lab/fuzz.py, fuzzref.py), plan.fuzz_frames
# in all (10^7 in the full run). Workers: one per core, at most 2.

def run_fuzz(work: Path, plan, advance: Advance) -> dict:
    """bench.fuzz.run()'s output, also saved in work/fuzz.json."""
    import os
    import time

    from bench import fuzz
    workers = min(2, os.cpu_count() or 1)
    seed = time.time_ns() % 1_000_000_007     # recorded: a mismatch names it, and replays from it
    try:
        out = fuzz.run(plan.fuzz_frames, seed, workers=workers, advance=advance)
    except Exception:  # the attack trials' figures must survive a broken fuzz run
        out = {"error": traceback.format_exc(), "seed": seed}
    work.mkdir(parents=True, exist_ok=True)
    (work / "fuzz.json").write_text(json.dumps(out, indent=1))
    return out


def summarise_fuzz(raw: dict) -> dict:
    """results.json's security.fuzz: frames, mismatches (must be 0), frames_per_s
    (wall clock, all workers), and per program."""
    if not raw or "error" in raw:
        return dict(raw)
    return {
        "frames": raw["frames"], "mismatches": raw["mismatches"], "frames_per_s": raw["frames_per_s"],
        "seconds": raw["seconds"], "seed": raw["seed"], "workers": raw["workers"],
        "per_program": {p: {"frames": d["frames"], "mismatches": d["mismatches"], "frames_per_s": d["frames_per_s"],
                            "ambiguous": d["ambiguous"]}
                        for p, d in raw["per_program"].items()},
        "mismatch_samples": raw["samples"][:3],
    }


def report_lines_fuzz(fuzz: dict) -> list[str]:
    if not fuzz:
        return []
    if "error" in fuzz:
        return ["### Fuzz", "", f"The fuzz run failed (seed {fuzz.get('seed')}):", "", "```",
                fuzz["error"].rstrip(), "```", ""]
    lines = ["### Fuzz (BPF_PROG_TEST_RUN against pure-Python references)", "",
             f"{fuzz['frames']:,} random and mutated frames, seed {fuzz['seed']}, {fuzz['workers']} worker(s), "
             f"{fuzz['seconds']} s: **{fuzz['mismatches']} mismatches**, {fuzz['frames_per_s']:,.0f} frames/s in all. "
             "Verdict, output bytes and counters are checked per frame (arbitration: also events and feed "
             "state), every counter, claim word and health entry at the end.", "",
             "| program | frames | mismatches | frames/s (one process) |", "|---|---|---|---|"]
    lines += [f"| {p} | {d['frames']:,} | {d['mismatches']} | {d['frames_per_s']:,.0f} |"
              for p, d in fuzz["per_program"].items()]
    for s in fuzz.get("mismatch_samples", []):
        lines.append(f"- mismatch: `{s['replay']}` expected {s['expected']}, got {s['got']}")
    return lines + [""]
