"""What a running daemon shows: `twinpath status` (appliance.statusview) and
the Prometheus endpoint (appliance.edge.metrics), read from the maps and the
decision core at the moment they are asked. Reads only: nothing here
changes the data path or the core.
"""
from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from appliance import __version__, layout
from appliance.core import policy, stats
from appliance.core.feeds import LINE_NAMES
from appliance.edge import metrics


@dataclass
class FailoverTally:
    """Failovers the daemon logged since it started, per class and cause."""
    by_cause: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    last: dict[str, tuple[str, int]] = field(default_factory=dict)   # class -> (cause, mono_ns)
    pair_causes: Counter = field(default_factory=Counter)             # pair-role changes by cause

    def count(self, fields: dict, ts_ns: int) -> None:
        self.by_cause[fields["class"]][fields["cause"]] += 1
        self.last[fields["class"]] = (fields["cause"], ts_ns)


def ring_rtt_us(ring: layout.RttRing, last_seq: int) -> tuple[float | None, float | None, float | None]:
    """p50, p99 and max RTT (us, nearest rank) of the replies in a link's
    ring that answer its last TP_RTT_RING rounds."""
    low = max(last_seq - layout.RTT_RING, 0)
    recent = sorted(rtt for seq, rtt in zip(ring.seq, ring.rtt_ns) if low < seq <= last_seq)
    if not recent:
        return None, None, None
    return tuple(round(stats.nearest_rank(recent, pm) / 1000, 1) for pm in (500, 990, 1000))


def link_state(view: policy.LinkView, seen: policy.LinkObservation, now_ns: int, dead_ns: int) -> str:
    """One word per link, the most severe first; fresh as the data path
    judges it now (the core's view is as of its last reading: at most 5 ms
    ago, or 50 ms while the links are quiet)."""
    if view.drained:
        return "drained"
    if not seen.carrier:
        return "down"
    if policy.fresh_for_ns(seen, now_ns, dead_ns) < 0:
        return "stale"
    if view.suppressed:
        return "damped"
    return "gray" if view.gray else "up"


class Observer:
    def __init__(self, daemon):
        self.d = daemon
        self.started_s = time.time()
        self.started_mono = time.monotonic()
        self.tally = FailoverTally()

    def _links(self, now_ns: int) -> tuple[list, list, list[policy.LinkView]]:
        d = self.d
        health = d.gw.health()
        with d._core_lock:
            seen = d.core.links.observations([[h.last_reply_ns, h.fresh_since_ns] for h in health])
            views = d.core.links.views(now_ns)
        return health, seen, views

    def status(self) -> dict:
        d, cfg = self.d, self.d.cfg
        now = time.monotonic_ns()
        health, seen, views = self._links(now)
        last_seq = d.sender_stats.last_seq
        links = {}
        rings = d.gw.rtt_rings()
        for i, name in enumerate(d.link_names):
            p50, p99, worst = ring_rtt_us(rings[i], last_seq)
            links[name] = {
                "state": link_state(views[i], seen[i], now, cfg.heartbeat.dead_ns), "rtt_p50_us": p50, "rtt_p99_us": p99,
                "rtt_max_us": worst, "loss": views[i].loss,
                "heartbeat_age_ms": round((now - health[i].last_reply_ns) / 1e6, 1) if health[i].last_reply_ns
                else None,
                "carrier": seen[i].carrier, "drained": views[i].drained,
                "reasons": [r for r, on in (("gray", views[i].gray), ("suppressed", views[i].suppressed))
                            if on]}
        active = d.gw.active()
        with d._core_lock:
            forced = [s.forced for s in d.core.links.classes]
            held = [s.gray_held for s in d.core.links.classes]
        classes = {}
        for cid, c in enumerate(cfg.classes):
            counters = [d.gw.counters(cid, cfg.link_index(n)) for n in c.links]
            last = self.tally.last.get(c.name)
            classes[c.name] = {
                "link": d.link_names[active[cid]], "policy": c.policy, "preferred": c.links[0],
                "forced": d.link_names[forced[cid]] if forced[cid] is not None else None,
                "gray_held": held[cid],
                "failovers": sum(self.tally.by_cause[c.name].values()),
                "last_cause": last[0] if last else None,
                "last_failover_age_s": round((now - last[1]) / 1e9, 1) if last else None,
                "packets": sum(x["packets"] for x in counters), "bytes": sum(x["bytes"] for x in counters)}
        return {"daemon": {"pid": os.getpid(), "version": __version__, "uptime_s": round(time.monotonic() - self.started_mono, 1),
                           "config": cfg.source, "interval_us": cfg.heartbeat.interval_us,
                           "multiplier": cfg.heartbeat.multiplier, "pin_dir": str(d.pins.path),
                           "sender_pid": d.sender_pid, "readings": self._readings()},
                "links": links, "classes": classes, "feeds": self._feeds(), **self._pair(now)}

    def _readings(self) -> dict:
        """How the main thread reads the links (appliance.edge.pace)."""
        pace = self.d.pace
        return {"pace": "quiet" if pace.quiet_now else "tick", "every_ms": round(
            1000 * (pace.quiet_s if pace.quiet_now else pace.tick_s), 1), "total": pace.readings,
            "quiet": pace.quiet_readings, "kernel_wakes": pace.wakes}

    def _pair(self, now: int) -> dict:
        d = self.d
        if not d.core.pair:
            return {}
        with d._pair_lock:
            pair = d.core.pair.status()
        gate = d.gw.pair()
        pair["gate"] = {"mode": layout.PAIR_MODES.get(gate.mode, str(gate.mode)), "token": gate.token,
                        "fenced_packets": gate.fenced}
        pair["vip"] = str(d.cfg.pair.vip)
        return {"pair": pair}

    def _feeds(self) -> dict:
        d = self.d
        if not d.arbiter:
            return {}
        feeds = {}
        with d._core_lock:
            statuses = [list(h.status) for h in d.core.feeds.health]
            totals = [dict(t) for t in d.core.feeds.totals]
        for fid, f in enumerate(d.cfg.feeds):
            won = [d.arbiter.line_counters(fid, line, ("won",))["won"] for line in range(layout.ARB_LINES)]
            total = sum(won)
            feeds[f.name] = {"won_pct": {LINE_NAMES[l]: round(100 * won[l] / total, 2) if total else None
                                         for l in range(layout.ARB_LINES)},
                             "gaps": totals[fid]["gaps"], "lost": totals[fid]["lost_seqs"],
                             "lines": dict(zip(LINE_NAMES, statuses[fid]))}
        return feeds

    def snapshot(self) -> metrics.Snapshot:
        d, cfg = self.d, self.d.cfg
        now = time.monotonic_ns()
        health, seen, views = self._links(now)
        stats = d.sender_stats
        links = {name: metrics.LinkMetrics(
            rtt_buckets=d.gw.rtt_histogram(i), probes_sent=health[i].probes, replies=health[i].replies,
            send_errors=stats.errors[i], fresh=policy.fresh_for_ns(seen[i], now, cfg.heartbeat.dead_ns) >= 0,
            carrier=seen[i].carrier,
            drained=views[i].drained) for i, name in enumerate(d.link_names)}
        active = d.gw.active()
        classes = {}
        for cid, c in enumerate(cfg.classes):
            counters = {n: d.gw.counters(cid, cfg.link_index(n)) for n in c.links}
            classes[c.name] = metrics.ClassMetrics(
                link=d.link_names[active[cid]], links=list(c.links),
                packets={n: x["packets"] for n, x in counters.items()},
                bytes={n: x["bytes"] for n, x in counters.items()},
                failovers=dict(self.tally.by_cause[c.name]))
        feeds, passed = {}, {}
        if d.arbiter:
            feeds = {f.name: {LINE_NAMES[l]: d.arbiter.line_counters(fid, l, metrics.ARB_COUNTERS)
                              for l in range(layout.ARB_LINES)} for fid, f in enumerate(cfg.feeds)}
            passed = d.arbiter.global_stats()
        pair = None
        if d.core.pair:
            with d._pair_lock:
                status = d.core.pair.status()
            pair = metrics.PairMetrics(role=status["role"], token=status["token"],
                                       witness_reachable=status["witness"]["reachable"],
                                       peer_paths=status["peer_paths"], fenced_packets=d.gw.pair().fenced,
                                       role_changes=dict(self.tally.pair_causes))
        return metrics.Snapshot(up_since_s=self.started_s, links=links, classes=classes, pair=pair,
                                sender_periods=stats.periods, sender_late_periods=stats.late_periods,
                                sender_skipped_periods=stats.skipped_periods, sender_restarts=d.sender_restarts,
                                readings=d.pace.readings, quiet_readings=d.pace.quiet_readings,
                                kernel_wakes=d.pace.wakes,
                                datapath_stats=d.gw.global_stats(), feeds=feeds, arbitration_passed=passed)
