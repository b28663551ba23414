"""`twinpath run`: loads the fast path, keeps its maps true to the world, and
reports what it does as JSON lines.

Threads: the heartbeat sender (Cython, no GIL); a netlink thread that writes
carrier and next-hop changes to the maps the moment they arrive; and the main
thread, which reads failover events from the ring buffer and applies the
failback policy. If the daemon dies, the attached programs keep forwarding on
the last state it wrote (fail static); with no heartbeats every link goes
stale together, and the data path then never switches.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from datetime import datetime, timezone
from typing import TextIO

from pyroute2 import IPRoute

from appliance import layout
from appliance.core import policy, telemetry
from appliance.core.config import Config
from appliance.edge import netlink
from appliance.edge.arbitration import Arbiter, multicast_mac
from appliance.edge.dataplane import PROBE_IDENT, Gateway, LinkState, open_probe_socket
from appliance.edge.feedwatch import FeedWatch
from appliance.edge.keys import HeartbeatKey
from fastpath.heartbeat import Sender

TICK_S = 0.005
FEED_TICK_S = 0.01       # gap grace windows and line health
FEED_SUMMARY_S = 1.0
READY_TIMEOUT_S = 5.0


class JsonLog:
    """One JSON object per line: time (UTC wall clock), mono_ns (the clock
    the data path stamps with), event, fields."""

    def __init__(self, stream: TextIO = sys.stdout):
        self._stream = stream
        self._lock = threading.Lock()

    def emit(self, event: str, **fields) -> None:
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                  "mono_ns": time.monotonic_ns(), "event": event, **fields}
        with self._lock:
            self._stream.write(json.dumps(record) + "\n")
            self._stream.flush()


class Daemon:
    def __init__(self, cfg: Config, log: JsonLog, stats_interval_s: float = 10.0):
        self.cfg = cfg
        self.log = log
        self.stats_interval_s = stats_interval_s
        self.link_names = [l.name for l in cfg.links]
        self.class_names = [c.name for c in cfg.classes]
        self.class_links = [[cfg.link_index(n) for n in c.links] for c in cfg.classes]
        self.links: list[LinkState] = []
        self.carrier_lost_ns: dict[int, int] = {}
        self._lock = threading.Lock()  # guards self.links between netlink and main threads
        self.arbiter: Arbiter | None = None
        self.trader: LinkState | None = None  # the trader-facing link and feed receivers' MACs
        self.feed_macs: dict[int, str | None] = {}

    # -- netlink thread -----------------------------------------------------
    def _watch_netlink(self, monitor: netlink.Monitor, stop: threading.Event) -> None:
        by_ifindex = {s.ifindex: i for i, s in enumerate(self.links)}
        while not stop.is_set():
            for change in monitor.read(0.1):
                link_id = by_ifindex.get(change.ifindex)
                if link_id is not None:
                    self._apply(link_id, change)
                elif self.trader and change.ifindex == self.trader.ifindex and \
                        isinstance(change, netlink.NeighbourChange):
                    self._apply_feed_receiver(change)

    def _apply_feed_receiver(self, change) -> None:
        """A feed receiver's MAC appeared or changed: its winners can go
        straight to it. A MAC that disappears is kept (fail static)."""
        for feed_id, feed in enumerate(self.cfg.feeds):
            if feed.dst == change.ip and change.mac and change.mac != self.feed_macs.get(feed_id):
                self._write_feed(feed_id, change.mac)
                self.log.emit("feed-receiver", feed=feed.name, ip=str(change.ip), mac=change.mac)

    def _write_feed(self, feed_id: int, mac: str | None) -> None:
        feed = self.cfg.feeds[feed_id]
        self.feed_macs[feed_id] = mac
        self.arbiter.write_feed(feed_id, feed.protocol, feed.dst, feed.port, self.trader.ifindex,
                                self.trader.src_mac, mac)

    def _apply(self, link_id: int, change) -> None:
        name = self.link_names[link_id]
        with self._lock:
            state = self.links[link_id]
            if isinstance(change, netlink.LinkChange):
                if change.carrier == state.carrier:
                    return
                state.carrier = change.carrier
                self.gw.write_link(link_id, state)
                if not change.carrier:
                    self.carrier_lost_ns[link_id] = time.monotonic_ns()
                self.log.emit("carrier", link=name, up=change.carrier)
            elif change.ip == self.cfg.links[link_id].gateway:
                if change.mac is None:
                    if state.dst_mac:  # keep forwarding to the last known MAC
                        self.log.emit("nexthop-unresolved", link=name, kept=state.dst_mac)
                    return
                if change.mac != state.dst_mac:
                    state.dst_mac = change.mac
                    self.gw.write_link(link_id, state)
                    self.log.emit("nexthop", link=name, ip=str(change.ip), mac=change.mac)

    # -- main thread --------------------------------------------------------
    def _on_failover(self, ev: layout.Event) -> None:
        cause = layout.CAUSES.get(ev.cause, str(ev.cause))
        if cause == "carrier" and ev.from_link in self.carrier_lost_ns:
            detect_ns = ev.ts_ns - self.carrier_lost_ns[ev.from_link]
        else:
            detect_ns = ev.silence_ns
        self.log.emit("failover", mono_ns=ev.ts_ns, **{
            "class": self.class_names[ev.class_id], "from": self.link_names[ev.from_link],
            "to": self.link_names[ev.to_link], "cause": cause, "detect_us": round(detect_ns / 1000, 1)})

    def _observe(self, health: list[layout.Health]) -> list[policy.LinkObservation]:
        with self._lock:
            return [policy.LinkObservation(carrier=s.carrier, nexthop=s.dst_mac is not None,
                                           last_reply_ns=h.last_reply_ns, fresh_since_ns=h.fresh_since_ns)
                    for s, h in zip(self.links, health)]

    def _tick(self) -> None:
        now = time.monotonic_ns()
        hb = self.cfg.heartbeat
        for sw in policy.failbacks(self.class_links, self.gw.active(), self._observe(self.gw.health()),
                                   now, hb.dead_ns, hb.holddown_ms * 1_000_000):
            self.gw.set_active(sw.class_id, sw.to_link)
            self.log.emit("failover", **{
                "class": self.class_names[sw.class_id], "from": self.link_names[sw.from_link],
                "to": self.link_names[sw.to_link], "cause": sw.cause, "detect_us": None,
                "fresh_for_ms": round(sw.fresh_for_ns / 1e6, 1)})

    def _report_health(self, sender: Sender, hist_before: list[list[int]]) -> list[list[int]]:
        now = time.monotonic_ns()
        hists = [self.gw.rtt_histogram(i) for i in range(len(self.links))]
        links = {}
        health = self.gw.health()
        for i, (obs, h) in enumerate(zip(self._observe(health), health)):
            window = telemetry.diff(hists[i], hist_before[i])
            links[self.link_names[i]] = {
                "fresh": policy.fresh_for_ns(obs, now, self.cfg.heartbeat.dead_ns) >= 0,
                "carrier": obs.carrier, "rtt_ewma_us": round(h.rtt_ewma_ns / 1000, 1),
                "rtt_p50_us": telemetry.histogram_percentile_us(window, 0.5),
                "rtt_p99_us": telemetry.histogram_percentile_us(window, 0.99),
                "probes": h.probes, "replies": h.replies,
                "sent": sender.sent[i], "send_errors": sender.errors[i]}
        self.log.emit("health", links=links, active={
            self.class_names[c]: self.link_names[l] for c, l in enumerate(self.gw.active())},
            sender={"periods": sender.periods, "late": sender.late_periods,
                    "skipped": sender.skipped_periods, "max_late_us": round(sender.max_late_ns / 1000, 1)},
            drops=self.gw.global_stats(),
            **({"arbitration_passed": self.arbiter.global_stats()} if self.arbiter else {}))
        return hists

    def run(self, stop: threading.Event) -> None:
        """One daemon per gateway (gatelock.GatewayBusy), and a config this
        host can run (preflight: ConfigError), both before anything is
        compiled or attached; the lock is held until run returns."""
        from appliance.edge import gatelock, preflight
        with gatelock.GatewayLock():
            with IPRoute() as ipr:
                keys = preflight.check(self.cfg, ipr)
            self._run(stop, keys)

    def _run(self, stop: threading.Event, keys: list[HeartbeatKey]) -> None:
        cfg = self.cfg
        t0 = time.monotonic()
        with IPRoute() as ipr:
            netlink.link_info(ipr, cfg.steer.ingress)  # fail before touching anything
            for link in cfg.links:
                ifindex, mac, carrier = netlink.link_info(ipr, link.dev)
                self.links.append(LinkState(ifindex, mac, netlink.neighbour_mac(ipr, ifindex, link.gateway),
                                            carrier, local=netlink.source_address(ipr, ifindex, link.target),
                                            target=link.target, ttl_security=link.ttl_security))
            self.gw = Gateway(cfg)
            for i, state in enumerate(self.links):
                self.gw.write_link(i, state)
            self.gw.write_policy()
            adopted = self.gw.previous_active(ipr)
            if adopted:  # a restart: carry on where the running data path is, not from the preferred links
                for class_id, link_id in enumerate(adopted):
                    self.gw.set_active(class_id, link_id)
                self.log.emit("adopted", active={self.class_names[c]: self.link_names[l]
                                                 for c, l in enumerate(adopted)})
            self.gw.write_keys(keys)
            self.gw.open_events(self._on_failover)
            feedwatch = self._load_arbiter(ipr) if cfg.feeds else None

            sockets = [open_probe_socket(l.dev, s.local, l.target) for l, s in zip(cfg.links, self.links)]
            sender = Sender(sockets, [layout.probe_template(i, PROBE_IDENT) for i in range(len(cfg.links))],
                            layout.PROBE_SEQ_OFFSET, cfg.heartbeat.interval_us * 1000)
            monitor = netlink.Monitor()
            threads = [threading.Thread(target=sender.run, name="heartbeat", daemon=True),
                       threading.Thread(target=self._watch_netlink, args=(monitor, stop),
                                        name="netlink", daemon=True)]
            try:
                # Heartbeats and probes first; steering once the links have
                # answered (the main loop's readiness), see Gateway.attach_steer.
                self.gw.attach_heartbeats(ipr)
                for t in threads:
                    t.start()
                if self.arbiter:
                    self.arbiter.attach(ipr, [cfg.links[cfg.link_index(n)].dev for n in cfg.arbitration.lines])
                self.log.emit("attached", startup_ms=round((time.monotonic() - t0) * 1000, 1),
                              links={l.name: l.dev for l in cfg.links}, ingress=cfg.steer.ingress,
                              interval_us=cfg.heartbeat.interval_us, multiplier=cfg.heartbeat.multiplier,
                              feeds={f.name: {"protocol": f.protocol, "dst": f"{f.dst}:{f.port}",
                                              "receiver_mac": self.feed_macs[i]}
                                     for i, f in enumerate(cfg.feeds)})
                self._resolve_missing_nexthops(ipr)
                self._main_loop(stop, sender, feedwatch, lambda: self.gw.attach_steer(ipr))
            finally:
                if self.arbiter:
                    self.arbiter.detach(ipr)
                self.gw.detach(ipr)
                sender.stop()
                stop.set()
                for t in threads:
                    if t.is_alive():
                        t.join(timeout=1.0)
                monitor.close()
                for s in sockets:
                    s.close()
                self.log.emit("stopped", sent=sender.sent, late_periods=sender.late_periods,
                              max_late_us=round(sender.max_late_ns / 1000, 1))

    def _load_arbiter(self, ipr: IPRoute) -> FeedWatch:
        """Arbitration for the configured feeds. A receiver whose MAC is not
        known yet is filled in by the netlink thread when the kernel learns
        it; until then that feed takes kernel routing."""
        self.arbiter = Arbiter(int(self.cfg.arbitration.heartbeat_dedup_ms * 1e6))
        self.arbiter.sync_clock()
        ifindex, mac, carrier = netlink.link_info(ipr, self.cfg.steer.ingress)
        self.trader = LinkState(ifindex, mac, carrier=carrier)
        for feed_id, feed in enumerate(self.cfg.feeds):
            receiver = multicast_mac(feed.dst) if feed.dst.is_multicast else \
                netlink.neighbour_mac(ipr, ifindex, feed.dst)
            self._write_feed(feed_id, receiver)
        watch = FeedWatch(self.cfg, self.arbiter, self.log)
        self.arbiter.open_events(watch.on_event)
        return watch

    def _resolve_missing_nexthops(self, ipr: IPRoute) -> None:
        """Probes make the kernel ARP for each far end; pick up the answers
        that arrived before the netlink thread was listening."""
        for i, link in enumerate(self.cfg.links):
            mac = netlink.neighbour_mac(ipr, self.links[i].ifindex, link.gateway)
            if mac:
                self._apply(i, netlink.NeighbourChange(self.links[i].ifindex, link.gateway, mac))

    def _main_loop(self, stop: threading.Event, sender: Sender, feedwatch: FeedWatch | None,
                   on_ready) -> None:
        ready_deadline = time.monotonic() + READY_TIMEOUT_S
        ready = False
        next_health = time.monotonic() + self.stats_interval_s
        next_feed_tick = time.monotonic()
        next_feed_summary = next_feed_tick + FEED_SUMMARY_S
        hists = [[0] * layout.HIST_BUCKETS for _ in self.links]
        while not stop.is_set():
            self.gw.poll(int(TICK_S * 1000))
            self._tick()
            now = time.monotonic()
            if feedwatch:
                self.arbiter.poll(0)
                if now >= next_feed_tick:
                    feedwatch.tick(time.monotonic_ns())
                    next_feed_tick = now + FEED_TICK_S
                if now >= next_feed_summary:
                    feedwatch.summary(time.monotonic_ns())
                    self.arbiter.sync_clock()
                    next_feed_summary = now + FEED_SUMMARY_S
            if not ready:
                now_ns = time.monotonic_ns()
                fresh = [policy.fresh_for_ns(o, now_ns, self.cfg.heartbeat.dead_ns) >= 0
                         for o in self._observe(self.gw.health())]
                if all(fresh) or now > ready_deadline:
                    ready = True
                    on_ready()
                    self.log.emit("ready", fresh={n: f for n, f in zip(self.link_names, fresh)})
            if now >= next_health:
                hists = self._report_health(sender, hists)
                next_health = now + self.stats_interval_s
