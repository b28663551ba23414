"""Turns a bench run's raw section results into results.json (the contract's
keys plus detail), REPORT.md and PNG plots."""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from appliance.core.stats import percentiles
from bench.analysis import outside, state_at
from bench.failover import HOLD_S

HEADLINE_CASE = ("blackhole", "1000us_x3")  # the ratio the README quotes
SCENARIOS = ("blackhole", "carrier-down")


# ---------------------------------------------------------------- machine

def _cmd(argv: list[str]) -> str | None:
    if not shutil.which(argv[0]):
        return None
    out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def machine() -> dict:
    """What the figures were measured on."""
    cpuinfo = _read("/proc/cpuinfo") or ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 None)
    repo = Path(__file__).resolve().parent.parent
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    dirty = bool(subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True).stdout.strip())
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "virtualised": f"{_cmd(['systemd-detect-virt']) or 'unknown'} (systemd-detect-virt); hypervisor CPU flag "
                       f"{'present' if ' hypervisor' in cpuinfo else 'absent'}",
        "clocksource": _read("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        "loadavg_at_start": _read("/proc/loadavg"),
        "memory_mb": int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20),
        "git_commit": commit + ("-dirty" if dirty else "") if commit else None,
        "frr": _cmd(["/usr/lib/frr/bfdd", "--version"]),
        "stress_ng": _cmd(["stress-ng", "--version"]),
    }


# ---------------------------------------------------------------- summary

def summarise(raw: dict) -> dict:
    """The contract's keys (see issue #4 / README) from the raw sections."""
    s = raw["sections"]
    out: dict = {"mode": raw["mode"], "machine": raw["machine"], "errors": raw["errors"],
                 "section_seconds": raw["section_seconds"], "total_seconds": raw.get("total_seconds")}
    if "failover" in s:
        out.update(_failover(s["failover"]))
    if "stress" in s:
        out["stress"] = s["stress"]
    if "detection" in s:
        out["detection"] = _detection(s["detection"])
    if "fastpath" in s:
        out["fastpath_ns"] = s["fastpath"]
    if "latency" in s:
        lat = s["latency"]
        out["latency"] = {mode: lat["latency"][mode] for mode in ("fastpath", "kernel")}
        out["latency"]["detail"] = {k: v for k, v in lat["latency"].items() if k not in ("fastpath", "kernel")}
        out["throughput"] = lat["throughput"]
    if "capacity" in s:
        out["capacity"] = s["capacity"]
    if "control" in s:
        out["control"] = s["control"]
    if "security" in s:
        from bench import security
        out["security"] = security.summarise(s["security"])
    if "host" in s:
        from bench import host
        out["host"] = host.summarise(s["host"])
    out["config"] = raw["config"]
    return out


def _failover(blocks: dict) -> dict:
    failover: dict = {}
    bfdd: dict[str, list] = {}
    kernel: dict[str, dict[str, list]] = {}
    tcp: dict = {}
    for key, b in blocks.items():
        scenario, setting = key.split("/")
        tw = b["twinpath"]
        preempted = sum(b["preempted"])
        failover.setdefault(scenario, {})[setting] = {
            "trials": len(b["fault_ns"]) - preempted,
            "preempted": preempted,
            "failed_over": sum(d is not None for d in tw["detect_us"]),
            "detect_us": percentiles(tw["detect_us"]),
            "failover_us": percentiles(tw["failover_us"]),
            "lost_per_trial": percentiles(tw["lost"], ("p50", "p99", "max")),
            "lost_outside_trials_total": tw["lost_outside_trials"],
            "lost_after_clear_per_trial": percentiles(tw["lost_after_clear"], ("p50", "p99", "max")),
            "duplicated": tw["duplicated"], "reordered": tw["reordered"],
            "unexplained_failovers": tw["unexplained_failovers"],
        }
        k = kernel.setdefault(scenario, {"failover_us": [], "lost": [], "lost_after_clear": []})
        for field in k:  # the kernel stream's own trials: a preempted twinpath trial is still one
            k[field] += b["kernel"][field]
        if "bfdd" in b:
            # A trial whose fault found bfdd's session on A already down (bfdd
            # took it down on its own just before) cannot detect anything.
            down_already = [state_at(b["bfdd"]["transitions"], "A", f) != "up" for f in b["fault_ns"]]
            per = bfdd.setdefault(scenario, {"detect_us": [], "preempted": 0, "false_downs": 0,
                                             "redowns_after_recovery": 0})
            per["detect_us"] += [None if p else d for p, d in zip(down_already, b["bfdd"]["detect_us"])]
            per["preempted"] += sum(down_already)
            downs = [t for t in b["bfdd"]["transitions"] if t["to"] == "down"]
            per["false_downs"] += sum(t["link"] != "A" for t in downs)  # B never has a fault
            per["redowns_after_recovery"] += outside([t["mono_ns"] for t in downs if t["link"] == "A"],
                                                     list(zip(b["fault_ns"], b["clear_ns"])))
        if "tcp" in b:
            t = b["tcp"]
            tcp[setting] = {"sessions": t["sessions"], "stall_ms": percentiles(t["max_gap_ms"]),
                            "survived": round(sum(t["survived"]) / max(1, len(t["survived"])), 3),
                            "client_errors": t["client_errors"]}
    peers = {"bfdd": {sc: {"setting": "10ms_x3", "trials": len(v["detect_us"]) - v["preempted"],
                           "preempted": v["preempted"], "false_downs": v["false_downs"],
                           "redowns_after_recovery": v["redowns_after_recovery"],
                           "detected": sum(d is not None for d in v["detect_us"]),
                           "detect_us": percentiles(v["detect_us"])} for sc, v in bfdd.items()},
             "kernel": {sc: {"trials": len(v["lost"]),
                             "failed_over_before_clear": sum(f is not None for f in v["failover_us"]),
                             "lost_during_fault_per_trial": percentiles(
                                 [a - c for a, c in zip(v["lost"], v["lost_after_clear"])], ("p50", "p99", "max")),
                             "failover_us": percentiles(v["failover_us"]),
                             "lost_per_trial": percentiles(v["lost"], ("p50", "p99", "max")),
                             "lost_after_clear_per_trial": percentiles(v["lost_after_clear"], ("p50", "p99", "max"))}
                        for sc, v in kernel.items()}}
    ratio: dict = {"by_case": {}}
    for scenario, per_setting in failover.items():
        peer = peers["bfdd"].get(scenario)
        for setting, f in per_setting.items():
            if peer and f["detect_us"]["p50"] and peer["detect_us"]["p50"]:
                ratio["by_case"][f"{scenario}/{setting}"] = {
                    q: round(peer["detect_us"][q] / f["detect_us"][q], 1) for q in ("p50", "p99")}
    head = ratio["by_case"].get("/".join(HEADLINE_CASE))
    ratio["headline_case"] = "/".join(HEADLINE_CASE)
    ratio["detect_p50_bfdd_over_twinpath"] = head["p50"] if head else None
    ratio["detect_p99_bfdd_over_twinpath"] = head["p99"] if head else None
    out = {"failover": failover, "peers": peers, "ratio": ratio}
    if tcp:
        main = tcp.get(HEADLINE_CASE[1]) or next(iter(tcp.values()))
        out["tcp_stall_ms"] = main["stall_ms"]
        out["tcp_sessions_survived"] = main["survived"]
        out["tcp"] = tcp
    return out


# ---------------------------------------------------------------- report

def _fmt(v, digits: int = 0) -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}"


def _pct(d: dict, keys=("p50", "p99", "max"), digits: int = 0) -> str:
    return " / ".join(_fmt(d.get(k), digits) for k in keys)


def markdown(r: dict, plots: list[str]) -> str:
    m = r["machine"]
    lines = [f"# twinpath bench report ({r['mode']} run)", "",
             f"Measured {m['date']} on {m['cpus']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, "
             f"virtualised: {m['virtualised']}, clock source {m['clocksource']}, load at start "
             f"`{m['loadavg_at_start']}`, commit {m['git_commit']}. {m['frr']}; {m['stress_ng']}. "
             f"Total {r['total_seconds']} s.", "",
             "The machine is shared: compare figures measured side by side in this run; single absolute "
             "numbers are not the point. All times CLOCK_MONOTONIC; percentiles are nearest-rank over every sample "
             "(each one a measured value).", ""]
    if r["errors"]:
        lines += ["## Sections that failed", ""] + [f"- **{k}**: `{v.strip().splitlines()[-1]}`"
                                                     for k, v in r["errors"].items()] + [""]
    lines += ["## Headline", ""] + [f"- {h}" for h in headline(r).splitlines()] + [""]
    if "failover" in r:
        lines += ["## Failover (fault on link A; heartbeat interval x multiplier)", "",
                  "detect: fault -> the data path's failover event; failover: fault -> first order over link B "
                  "at the exchange; lost: orders never received, per trial (10,000 orders/s). Preempted: trials "
                  "whose fault found orders already on B (a move just before it), left out of the figures. "
                  "Unexplained moves: reflex moves of orders not caused by a fault on A (e.g. B -> A because B's "
                  "replies paused while orders sat on B), i.e. false failovers.", "",
                  "| scenario | setting | trials (preempted) | failed over | detect_us p50 / p99 / max | "
                  "failover_us p50 / p99 / max | lost/trial p50 / p99 / max | of which after the clear, max | "
                  "dup / reorder | unexplained moves |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for sc, per in r["failover"].items():
            for setting, f in per.items():
                lines.append(f"| {sc} | {setting} | {f['trials']} ({f['preempted']}) | {f['failed_over']} | {_pct(f['detect_us'])} | "
                             f"{_pct(f['failover_us'])} | {_pct(f['lost_per_trial'])} | "
                             f"{_fmt(f['lost_after_clear_per_trial']['max'])} | "
                             f"{f['duplicated']} / {f['reordered']} | {f['unexplained_failovers']} |")
        lines += ["", "### The alternatives, same faults, same run", "",
                  "| peer | scenario | trials | detected / failed over | detect or failover us p50 / p99 / max | "
                  "lost/trial during the fault, p50 / p99 / max | after the clear, p50 / max |",
                  "|---|---|---|---|---|---|---|"]
        for sc, b in r["peers"]["bfdd"].items():
            lines.append(f"| FRR bfdd 10 ms x 3 | {sc} | {b['trials']} ({b['preempted']} preempted) | "
                         f"{b['detected']} (session down) | "
                         f"{_pct(b['detect_us'])} | – | – |")
        for sc, k in r["peers"]["kernel"].items():
            lines.append(f"| kernel routing (static, linkdown ignored) | {sc} | {k['trials']} | "
                         f"{k['failed_over_before_clear']} (before the fault cleared) | {_pct(k['failover_us'])} | "
                         f"{_pct(k['lost_during_fault_per_trial'])} | "
                         f"{_pct(k['lost_after_clear_per_trial'], ('p50', 'max'))} |")
        lines += ["", "bfdd preempted: its session on A was already down when the fault came: after a fault "
                  "is cleared, bfdd's session on A often comes up and goes down once more (neighbor-down, while "
                  "the two ends re-sync), sometimes that late. " + "; ".join(
                      f"{sc} blocks: {b['redowns_after_recovery']} such re-downs on A outside the faults, and "
                      f"{b['false_downs']} false downs on B, which never had a fault"
                      for sc, b in r["peers"]["bfdd"].items()) + ".", "",
                  "bfdd detect / twinpath detect, same faults:", "", "| case | p50 | p99 |", "|---|---|---|"]
        lines += [f"| {case} | {v['p50']}x | {v['p99']}x |" for case, v in r["ratio"]["by_case"].items()]
        lines.append("")
    if "tcp" in r:
        lines += ["### TCP order session across a blackhole failover", "",
                  "One order (16 bytes, TCP_NODELAY) per ms; per trial, the longest gap between consecutive "
                  "orders arriving at exch.", "", "| setting | sessions | stall_ms p50 / p99 / max | survived |",
                  "|---|---|---|---|"]
        lines += [f"| {s} | {t['sessions']} | {_pct(t['stall_ms'], digits=1)} | {t['survived']:.0%} |"
                  for s, t in r["tcp"].items()]
        lines.append("")
    if "stress" in r:
        st = r["stress"]
        lines += ["## False failovers under stress (no fault)", "",
                  f"{st['seconds']} s with {st['load']}; traffic in both classes.", "",
                  "| | setting | false failovers / session downs |", "|---|---|---|",
                  f"| twinpath | {st['twinpath']['setting']} | {st['twinpath']['false_failovers']} |",
                  f"| FRR bfdd | {st['bfdd']['setting']} | {st['bfdd']['false_failovers']} |", "",
                  f"twinpath's heartbeat sender was late {st['twinpath']['heartbeat_late_periods']} periods, "
                  f"at most {st['twinpath']['heartbeat_max_late_us']} us.", ""]
    if "detection" in r:
        lines += _detection_lines(r["detection"])
    if "fastpath_ns" in r:
        lines += ["## Fast-path cost (BPF_PROG_TEST_RUN, side by side)", "",
                  "| program / path | hook | ns (p50 of rounds) | empty program ns | ratio | p99 ns | repeat |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {name} | {v['hook']} | {v['ns']} | {v['empty_ns']} | {v['ratio']}x | {v['p99_ns']} | "
                  f"{v['repeat']} |" for name, v in r["fastpath_ns"].items()]
        lines += ["", "repeat > 1: the kernel runs the packet that many times per call (no syscall overhead in the "
                  "figure); repeat 1: one packet per call, so the figure includes the call overhead, and so does "
                  "its empty twin.", ""]
    if "latency" in r:
        lines += ["## Added latency and throughput (trader -> gw -> carrier -> exch -> back)", "",
                  "| path | samples | p50 us | p99 us | p99.9 us | max us | lost |", "|---|---|---|---|---|---|---|"]
        for mode in ("fastpath", "kernel"):
            v = r["latency"][mode]
            lines.append(f"| {mode} | {_fmt(v.get('samples'))} | {_fmt(v['p50_us'], 1)} | {_fmt(v['p99_us'], 1)} | "
                         f"{_fmt(v['p999_us'], 1)} | {_fmt(v['max_us'], 1)} | {_fmt(v.get('lost'))} |")
        d = r["latency"]["detail"]
        lines += ["", "; ".join(f"{k}: {v}" for k, v in d.items() if not isinstance(v, (dict, list))), "",
                  "| path | highest step passed (pps) | what failed next | highest lossless rate the sender "
                  "achieved (pps) |", "|---|---|---|---|"]
        for mode in ("fastpath", "kernel"):
            t = r["throughput"][mode]
            lines.append(f"| {mode} | {_fmt(t['max_pps'])} | {t['limit']} | {_fmt(t['lossless_achieved_pps'])} |")
        lines += ["", r["throughput"]["method"]]
        lines.append("")
    if "capacity" in r:
        from bench import capacity
        lines += capacity.report_lines(r["capacity"])
    if "control" in r:
        lines += _control_lines(r["control"])
    if "security" in r:
        from bench import security
        lines += security.report_lines(r["security"])
    if "host" in r:
        from bench import host
        lines += host.report_lines(r["host"])
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + ["", "## Daemon config (1 ms x 3 blocks)", "",
                                                                  "```toml", r["config"].rstrip(), "```", ""]
    return "\n".join(lines)


def _control_lines(c: dict) -> list[str]:
    lines = ["## Control-plane cost (daemon CPU, % of one core)", "", c["method"], "",
             "| setting | CPU % | carriers' NAPI threads, CPU % | sender late periods | max late us "
             "| health readings (quiet) | kernel wakes |",
             "|---|---|---|---|---|---|---|"]
    for s, v in c["cpu_percent"].items():
        sender, pace = c["heartbeat_sender"][s], c.get("readings", {}).get(s, {})
        lines.append(f"| {s} | {v} | {c.get('carrier_napi_cpu_percent', {}).get(s, '—')} | "
                     f"{sender['late_periods']} | {sender['max_late_us']} | "
                     f"{_fmt(pace.get('readings'))} ({_fmt(pace.get('quiet_readings'))}) | "
                     f"{_fmt(pace.get('kernel_wakes'))} |")
    return lines + ["", "Readings and wakes over each daemon's life (start-up included), from its "
                        "`stopped` event.", ""]


def headline(r: dict) -> str:
    out = []
    if r.get("ratio", {}).get("detect_p50_bfdd_over_twinpath"):
        f = r["failover"]["blackhole"]["1000us_x3"]
        b = r["peers"]["bfdd"]["blackhole"]
        out.append(f"blackhole detection at 1 ms x 3: twinpath p50 {_fmt(f['detect_us']['p50'])} us, p99 "
                   f"{_fmt(f['detect_us']['p99'])} us; bfdd 10 ms x 3 p50 {_fmt(b['detect_us']['p50'])} us, p99 "
                   f"{_fmt(b['detect_us']['p99'])} us: {r['ratio']['detect_p50_bfdd_over_twinpath']}x faster at p50, "
                   f"{r['ratio']['detect_p99_bfdd_over_twinpath']}x at p99")
    for sc in SCENARIOS:
        f = r.get("failover", {}).get(sc, {}).get("200us_x3")
        if f:
            out.append(f"{sc} at 200 us x 3: detect p50 {_fmt(f['detect_us']['p50'])} us, failover p50 "
                       f"{_fmt(f['failover_us']['p50'])} us, lost per trial p50 {_fmt(f['lost_per_trial']['p50'])}")
    k = r.get("peers", {}).get("kernel", {})
    if "blackhole" in k:
        out.append(f"plain kernel routing stays on a blackholed link: failed over in "
                   f"{k['blackhole']['failed_over_before_clear']} of {k['blackhole']['trials']} trials, "
                   f"lost p50 {_fmt(k['blackhole']['lost_per_trial']['p50'])} orders per trial (all of the "
                   f"{int(HOLD_S * 1000)} ms the fault lasted)")
    if "stress" in r:
        out.append(f"false failovers under stress-ng: twinpath {r['stress']['twinpath']['false_failovers']}, "
                   f"bfdd {r['stress']['bfdd']['false_failovers']}")
    if "detection" in r:
        det = r["detection"]
        out.append("detection soak (stress-ng, no fault): false failovers " + ", ".join(
            f"{k} {v['false_failovers']} in {v['seconds']} s (bfdd {v['bfdd']['session_downs']})"
            for k, v in det["soak"].items()))
        out.append("detection detect_us p50/p99: " + ", ".join(
            f"{k} {_fmt(v['detect_us']['p50'])}/{_fmt(v['detect_us']['p99'])}" for k, v in det["scenarios"].items())
            + f"; Cython window loop {det['cython_speedup']['speedup']}x")
        if "model" in det:
            m = det["model"]
            out.append(f"prediction model on fresh traces: precision {m['precision']}, recall {m['recall']}, "
                       f"median lead {_fmt(m['median_lead_ms'])} ms; orders lost in creep-then-blackhole "
                       + ", ".join(f"{c} {v['reactive']['lost_total']} reactive / {v['predictive']['lost_total']} "
                                   f"predictive" for c, v in m["benefit"].items()))
    if "tcp_stall_ms" in r:
        out.append(f"TCP order session across a blackhole failover: stall p50 {_fmt(r['tcp_stall_ms']['p50'], 1)} ms, "
                   f"max {_fmt(r['tcp_stall_ms']['max'], 1)} ms, sessions survived {r['tcp_sessions_survived']:.0%}")
    if "latency" in r:
        fp, kn = r["latency"]["fastpath"], r["latency"]["kernel"]
        out.append(f"round-trip latency p50 fast path {_fmt(fp['p50_us'], 1)} us vs kernel {_fmt(kn['p50_us'], 1)} us; "
                   f"p99 {_fmt(fp['p99_us'], 1)} vs {_fmt(kn['p99_us'], 1)} us")
    if "fastpath_ns" in r and "steer_redirect" in r["fastpath_ns"]:
        s = r["fastpath_ns"]["steer_redirect"]
        out.append(f"steer: {s['ns']} ns/packet, {s['ratio']}x an empty TC program")
    if "capacity" in r:
        from bench import capacity
        out.append(capacity.headline(r["capacity"]))
    if "control" in r:
        out.append("daemon CPU: " + ", ".join(f"{k} {v}%" for k, v in r["control"]["cpu_percent"].items()))
    if "security" in r:
        from bench import security
        out.append(security.headline(r["security"]))
    if "host" in r:
        from bench import host
        out.append(host.headline(r["host"]))
    return "\n".join(out)


def _detection(d: dict) -> dict:
    """detection.soak, .scenarios.<name> and .cython_speedup as the contract
    names them; per-event detail stays in raw.json."""
    soak = {setting: {k: v for k, v in r.items() if k != "failover_events"} for setting, r in d["soak"].items()}
    scenarios = {name: {k: v for k, v in r.items() if k != "wrong_move_events"} for name, r in d["scenarios"].items()}
    out = {"soak": soak, "scenarios": scenarios, "cython_speedup": d["cython_speedup"]}
    if "model" in d:
        m = d["model"]
        benefit = {creep: {mode: {k: r[mode][k] for k in ("lost", "lost_total", "left_before_blackhole_ms",
                                                          "causes", "false_moves")} for mode in ("reactive", "predictive")}
                   for creep, r in m["benefit"].items() if isinstance(r, dict) and "reactive" in r}
        out["model"] = {**{k: v for k, v in m.items() if k != "benefit"}, "benefit": benefit}
    return out


def _detection_lines(det: dict) -> list[str]:
    lines = ["## Detection (issue #11)", "", "### Soak: no fault, stress-ng --cpu 2 plus traffic", "",
             "| setting | seconds | false failovers | bfdd 10 ms x 3 session downs | other verdicts | sender late periods |",
             "|---|---|---|---|---|---|"]
    for setting, s in det["soak"].items():
        lines.append(f"| {setting} | {s['seconds']} | {s['false_failovers']} | {s['bfdd']['session_downs']} | "
                     f"{s['decisions'] or '-'} | {s['heartbeat_late_periods']} |")
    lines += ["", "### Scenarios: a fault on a carrier link, 1 ms x 3", "",
              "detect_us: from the fault (creep-then-blackhole: from its blackhole; negative = left before it). "
              "The class that must move: orders (active-backup), quotes (lowest-latency) for delay.", "",
              "| scenario | trials | detected | detect_us p50 / p99 / max | failovers | lost orders | "
              "flaps suppressed | wrong moves | causes |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in det["scenarios"].items():
        lines.append(f"| {name} | {r['trials']} | {r['detected']} | {_pct(r['detect_us'])} | {r['failovers']} | "
                     f"{r['lost']} | {r['flaps_suppressed']} | {r['wrong_moves']} | {', '.join(r['causes'])} |")
    if "model" in det:
        m = det["model"]
        lines += ["", "### Failure prediction (appliance/core/predict.py, shipped weights)", "",
                  f"On {m['runs']} lab runs recorded now from seeds its training never saw: precision {m['precision']}, "
                  f"recall {m['recall']} ({m['predicted']} of {m['failures']} failures), median lead "
                  f"{_fmt(m['median_lead_ms'])} ms (horizon {m['horizon_ms']} ms), false alarms per hour of "
                  f"failure-free runs {m['false_alarms_per_hour']}.", "",
                  "creep-then-blackhole, prediction off (reactive: gray detectors and reflex) and on:", "",
                  "| creep | mode | orders lost (total) | left A before the blackhole, ms (min / p50 / max) | "
                  "causes | false moves |", "|---|---|---|---|---|---|"]
        for creep, modes in m["benefit"].items():
            for mode, r in modes.items():
                lines.append(f"| {creep} | {mode} | {r['lost_total']} | "
                             f"{_pct(r['left_before_blackhole_ms'], ('min', 'p50', 'max'))} | "
                             f"{', '.join(r['causes'])} | {r['false_moves']} |")
    c = det["cython_speedup"]
    lines += ["", f"Window summaries (fastpath/detect.pyx) on one batch of {c['batch_windows']} windows: "
                  f"Cython {c['cython_ns_per_window']} ns, Python reference {c['python_ns_per_window']} ns per window, "
                  f"{c['speedup']}x.", ""]
    return lines


# ---------------------------------------------------------------- plots

def plot(raw: dict, r: dict, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def cdf(ax, values, label):
        v = np.sort(np.asarray([x for x in values if x is not None], dtype=float))
        if len(v):
            ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=f"{label} (n={len(v)})")

    made = []
    s = raw["sections"]
    if "failover" in s:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, sc in zip(axes, SCENARIOS):
            bfd = []
            for key, b in s["failover"].items():
                if key.startswith(sc + "/"):
                    cdf(ax, b["twinpath"]["detect_us"], f"twinpath {key.split('/')[1]}")
                    bfd += b.get("bfdd", {}).get("detect_us", [])
            cdf(ax, bfd, "FRR bfdd 10ms_x3")
            ax.set(xscale="log", xlabel="fault -> detection (us, log)", ylabel="fraction of trials", title=sc)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        made.append(_save(fig, out, "failover_detect.png"))
    samples = out / "latency" / "latency_samples_ns.npz"
    if "latency" in s and samples.exists():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        with np.load(samples) as ns:
            for mode in ("fastpath", "kernel"):
                cdf(ax, ns[mode] / 1000, mode)
        ax.set(xscale="log", xlabel="round trip from intended send time (us, log)", ylabel="fraction",
               title="ping-pong latency, alternating blocks")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        made.append(_save(fig, out, "latency.png"))
    if "fastpath_ns" in r:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        names = list(r["fastpath_ns"])
        x = np.arange(len(names))
        ax.bar(x - 0.2, [r["fastpath_ns"][n]["ns"] for n in names], 0.4, label="program")
        ax.bar(x + 0.2, [r["fastpath_ns"][n]["empty_ns"] for n in names], 0.4, label="empty program, same hook")
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set(ylabel="ns per packet (p50 of rounds)", title="fast-path cost, BPF_PROG_TEST_RUN")
        ax.legend()
        made.append(_save(fig, out, "fastpath_ns.png"))
    if "failover" in s and any("tcp" in b for b in s["failover"].values()):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for key, b in s["failover"].items():
            if "tcp" in b:
                cdf(ax, b["tcp"]["max_gap_ms"], key)
        ax.set(xlabel="longest gap between orders at exch (ms)", ylabel="fraction of sessions",
               title="TCP order session across a blackhole failover")
        ax.grid(True, alpha=0.3)
        ax.legend()
        made.append(_save(fig, out, "tcp_stall.png"))
    return made


def _save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return name


def write(out: Path, raw: dict) -> dict:
    """results.json, raw.json (every section's output: the figures can be
    recomputed from it), REPORT.md, plots; returns the results."""
    r = summarise(raw)
    (out / "results.json").write_text(json.dumps(r, indent=1) + "\n")
    (out / "raw.json").write_text(json.dumps(raw) + "\n")
    plots = plot(raw, r, out)
    (out / "REPORT.md").write_text(markdown(r, plots))
    return r
