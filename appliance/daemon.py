"""`twinpath run`: loads the fast path, keeps its maps true to the world, and
reports what it does as JSON lines.

The wiring between the edges (BPF maps and ring buffers, netlink, the probe
sender) and the pure core (appliance.core.decision): every input goes to the
core through Daemon._consume, which records it when asked (--record) and
applies and logs the core's decisions.

Threads: the heartbeat sender (Cython, no GIL); a netlink thread that hands
carrier and next-hop changes to the core the moment they arrive; and the main
thread, which reads failover and arbitration events from the ring buffers and
the links' and feeds' state every tick. If the daemon dies, the attached
programs keep forwarding on the last state it wrote (fail static); with no
heartbeats every link goes stale together, and the data path then never
switches.
"""
from __future__ import annotations

import itertools
import json
import os
import sys
import threading
import time
from datetime import datetime, timezone
from typing import TextIO

from pyroute2 import IPRoute

from appliance import layout
from appliance.core import policy, telemetry
from appliance.core.config import Config
from appliance.core.decision import Core, Start
from appliance.core.feeds import FeedParams
from appliance.edge import gatelock, netlink, preflight
from appliance.edge.arbitration import Arbiter, multicast_mac
from appliance.edge.dataplane import PROBE_IDENT, Gateway, LinkState, open_probe_socket
from appliance.edge.feedwatch import FeedWatch
from appliance.edge.keys import HeartbeatKey
from appliance.edge.probewindows import ProbeWindows
from appliance.edge.trace import Recorder
from fastpath.heartbeat import Sender

TICK_S = 0.005
FEED_TICK_S = 0.01       # gap grace windows and line health
FEED_SUMMARY_S = 1.0
READY_TIMEOUT_NS = 5_000_000_000  # steering attaches by then even if a link never answered


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
    def __init__(self, cfg: Config, log: JsonLog, stats_interval_s: float = 10.0, record: str | None = None):
        self.cfg = cfg
        self.log = log
        self.stats_interval_s = stats_interval_s
        self.record_path = record
        self.link_names = [l.name for l in cfg.links]
        self.class_names = [c.name for c in cfg.classes]
        self.links: list[LinkState] = []
        self.core: Core | None = None
        self.recorder: Recorder | None = None
        # One input at a time, from the netlink and main threads, so the core
        # sees (and the trace records) exactly one order.
        self._core_lock = threading.Lock()
        self._on_ready = None
        self.arbiter: Arbiter | None = None
        self.trader: LinkState | None = None  # the trader-facing link and feed receivers' MACs
        self._errors = itertools.count(1)  # exceptions in event handlers, logged as 'error' (see _guarded)

    # -- the core's one entry ----------------------------------------------
    def _consume(self, kind: str, ts_ns: int, /, **fields) -> None:
        with self._core_lock:
            if self.recorder:
                self.recorder.input(kind, ts_ns, fields)
            for decision in self.core.consume(kind, ts_ns, fields):
                self._apply(decision.effect)
                self.log.emit(decision.event, mono_ns=decision.ts_ns, **decision.fields)

    def _apply(self, effect: tuple | None) -> None:
        if effect is None:
            return
        what, *args = effect
        if what == "link":
            link_id, carrier, mac = args
            state = self.links[link_id]
            state.carrier, state.dst_mac = carrier, mac
            self.gw.write_link(link_id, state)
        elif what == "active":
            self.gw.set_active(*args)
        elif what == "steer":
            self._on_ready()
        elif what == "feed":
            self._write_feed(*args)
        else:
            raise AssertionError(f"unknown effect {effect!r}")

    def _guarded(self, where: str, handler):
        """handler, but an exception in it is logged as an 'error' event and
        the daemon goes on: BCC's ring-buffer callbacks would swallow it
        silently, and a dead netlink thread would stop carrier updates. The
        data path keeps forwarding on its last state either way."""
        def call(*args) -> None:
            try:
                handler(*args)
            except Exception as e:
                self.log.emit("error", where=where, error=f"{type(e).__name__}: {e}", errors=next(self._errors))
        return call

    # -- netlink thread -----------------------------------------------------
    def _watch_netlink(self, monitor: netlink.Monitor, stop: threading.Event) -> None:
        by_ifindex = {s.ifindex: i for i, s in enumerate(self.links)}
        on_change = self._guarded("netlink", self._on_netlink)
        while not stop.is_set():
            for change in monitor.read(0.1):
                on_change(change, by_ifindex)

    def _on_netlink(self, change, by_ifindex: dict[int, int]) -> None:
        ts_ns = time.monotonic_ns()
        link_id = by_ifindex.get(change.ifindex)
        if link_id is not None:
            if isinstance(change, netlink.LinkChange):
                self._consume("carrier", ts_ns, link=link_id, up=change.carrier)
            else:
                self._consume("neighbour", ts_ns, link=link_id, ip=str(change.ip), mac=change.mac)
        elif self.trader and change.ifindex == self.trader.ifindex and isinstance(change, netlink.NeighbourChange):
            self._consume("receiver", ts_ns, ip=str(change.ip), mac=change.mac)

    def _write_feed(self, feed_id: int, mac: str | None) -> None:
        feed = self.cfg.feeds[feed_id]
        self.arbiter.write_feed(feed_id, feed.protocol, feed.dst, feed.port, self.trader.ifindex,
                                self.trader.src_mac, mac)

    # -- main thread --------------------------------------------------------
    def _on_failover(self, ev: layout.Event) -> None:
        self._consume("reflex", ev.ts_ns, class_id=ev.class_id, from_link=ev.from_link, to_link=ev.to_link,
                      cause=layout.CAUSES.get(ev.cause, str(ev.cause)), silence_ns=ev.silence_ns)

    def _tick(self, sender: Sender, windows: ProbeWindows) -> None:
        health, active = self.gw.health(), self.gw.active()
        rings = [self.gw.rtt_ring(i) for i in range(len(self.links))]
        self._consume("health", time.monotonic_ns(), links=[[h.last_reply_ns, h.fresh_since_ns] for h in health],
                      active=active, windows=windows.read(rings, sender.last_seq),
                      sender_late_ns=sender.take_late_ns())

    def _run_sender(self, sender: Sender) -> None:
        """The heartbeat thread: real-time first (when configured), because
        a sender held off the CPU makes every link silent at once."""
        priority = self.cfg.heartbeat.sender_priority
        if priority:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
            except OSError as e:
                self.log.emit("warning", what="sender_priority", priority=priority,
                              error=f"SCHED_FIFO refused ({e.strerror}): the sender runs with normal scheduling")
        sender.run()

    def _report_health(self, sender: Sender, hist_before: list[list[int]]) -> list[list[int]]:
        now = time.monotonic_ns()
        hists = [self.gw.rtt_histogram(i) for i in range(len(self.links))]
        links = {}
        health = self.gw.health()
        with self._core_lock:
            seen = self.core.links.observations([[h.last_reply_ns, h.fresh_since_ns] for h in health])
        for i, (obs, h) in enumerate(zip(seen, health)):
            window = telemetry.diff(hists[i], hist_before[i])
            links[self.link_names[i]] = {
                "fresh": policy.fresh_for_ns(obs, now, self.cfg.heartbeat.dead_ns) >= 0,
                "carrier": obs.carrier, "rtt_ewma_us": round(h.rtt_ewma_ns / 1000, 1),
                "rtt_p50_us": telemetry.histogram_bound_us(window, 0.5),
                "rtt_p99_us": telemetry.histogram_bound_us(window, 0.99),
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
        with gatelock.GatewayLock():
            with IPRoute() as ipr:
                keys = preflight.check(self.cfg, ipr)
            self._run(stop, keys)

    def _start(self, receivers: list[str | None]) -> Start:
        cfg, arb = self.cfg, self.cfg.arbitration
        return Start(
            links=cfg.link_params(READY_TIMEOUT_NS),
            feeds=FeedParams(names=[f.name for f in cfg.feeds], dsts=[str(f.dst) for f in cfg.feeds],
                             line_links=[cfg.link_index(n) for n in arb.lines] if cfg.feeds else None,
                             grace_ns=int(arb.grace_ms * 1e6), silence_ns=int(arb.silence_ms * 1e6),
                             behind_seqs=arb.behind_seqs),
            carrier=[s.carrier for s in self.links], nexthop=[s.dst_mac for s in self.links],
            receivers=receivers, started_ns=time.monotonic_ns())

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
            self.gw.open_events(self._guarded("reflex", self._on_failover))
            receivers = self._load_arbiter(ipr) if cfg.feeds else []

            sockets = [open_probe_socket(l.dev, s.local, l.target) for l, s in zip(cfg.links, self.links)]
            sender = Sender(sockets, [layout.probe_template(i, PROBE_IDENT) for i in range(len(cfg.links))],
                            layout.PROBE_SEQ_OFFSET, cfg.heartbeat.interval_us * 1000)
            monitor = netlink.Monitor()
            start = self._start(receivers)
            self.core = Core(start)
            if self.record_path:
                self.recorder = Recorder(self.record_path, start)
            feedwatch = None
            if cfg.feeds:
                feedwatch = FeedWatch(cfg, self.arbiter, self.core.feeds, self._consume, self.log)
                self.arbiter.open_events(self._guarded("arb-event", feedwatch.on_event))
            self._on_ready = lambda: self.gw.attach_steer(ipr)
            threads = [threading.Thread(target=self._run_sender, args=(sender,), name="heartbeat", daemon=True),
                       threading.Thread(target=self._watch_netlink, args=(monitor, stop),
                                        name="netlink", daemon=True)]
            try:
                # Heartbeats and probes first; steering once the links have
                # answered (the core's readiness), see Gateway.attach_steer.
                self.gw.attach_heartbeats(ipr)
                for t in threads:
                    t.start()
                if self.arbiter:
                    self.arbiter.attach(ipr, [cfg.links[cfg.link_index(n)].dev for n in cfg.arbitration.lines])
                self.log.emit("attached", startup_ms=round((time.monotonic() - t0) * 1000, 1),
                              links={l.name: l.dev for l in cfg.links}, ingress=cfg.steer.ingress,
                              interval_us=cfg.heartbeat.interval_us, multiplier=cfg.heartbeat.multiplier,
                              sender_priority=cfg.heartbeat.sender_priority,
                              feeds={f.name: {"protocol": f.protocol, "dst": f"{f.dst}:{f.port}",
                                              "receiver_mac": receivers[i]}
                                     for i, f in enumerate(cfg.feeds)})
                self._resolve_missing_nexthops(ipr)
                self._main_loop(stop, sender, feedwatch)
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
                if self.recorder:
                    self.recorder.close()
                self.log.emit("stopped", sent=sender.sent, late_periods=sender.late_periods,
                              max_late_us=round(sender.max_late_ns / 1000, 1))

    def _load_arbiter(self, ipr: IPRoute) -> list[str | None]:
        """Arbitration for the configured feeds; returns each feed's receiver
        MAC. One not known yet is filled in when the kernel learns it (the
        core's feed-receiver); until then that feed takes kernel routing."""
        self.arbiter = Arbiter(int(self.cfg.arbitration.heartbeat_dedup_ms * 1e6))
        self.arbiter.sync_clock()
        ifindex, mac, carrier = netlink.link_info(ipr, self.cfg.steer.ingress)
        self.trader = LinkState(ifindex, mac, carrier=carrier)
        receivers = []
        for feed_id, feed in enumerate(self.cfg.feeds):
            receivers.append(multicast_mac(feed.dst) if feed.dst.is_multicast else
                             netlink.neighbour_mac(ipr, ifindex, feed.dst))
            self._write_feed(feed_id, receivers[-1])
        return receivers

    def _resolve_missing_nexthops(self, ipr: IPRoute) -> None:
        """Probes make the kernel ARP for each far end; pick up the answers
        that arrived before the netlink thread was listening."""
        for i, link in enumerate(self.cfg.links):
            mac = netlink.neighbour_mac(ipr, self.links[i].ifindex, link.gateway)
            if mac:
                self._consume("neighbour", time.monotonic_ns(), link=i, ip=str(link.gateway), mac=mac)

    def _main_loop(self, stop: threading.Event, sender: Sender, feedwatch: FeedWatch | None) -> None:
        next_health = time.monotonic() + self.stats_interval_s
        next_feed_tick = time.monotonic()
        next_feed_summary = next_feed_tick + FEED_SUMMARY_S
        hists = [[0] * layout.HIST_BUCKETS for _ in self.links]
        windows = ProbeWindows(self.cfg.heartbeat.multiplier)
        while not stop.is_set():
            self.gw.poll(int(TICK_S * 1000))
            self._tick(sender, windows)
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
            if now >= next_health:
                hists = self._report_health(sender, hists)
                next_health = now + self.stats_interval_s
