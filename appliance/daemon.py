"""`twinpath run`: loads the fast path, keeps its maps true to the world, and
reports what it does as JSON lines.

The wiring between the edges (BPF maps and ring buffers, netlink, the probe
sender) and the pure core (appliance.core.decision): every input goes to the
core through Daemon._consume, which records it when asked (--record) and
applies and logs the core's decisions.

The heartbeat sender is a process of its own (appliance.edge.probesender),
sharing its counters with the daemon. Threads: a netlink thread that hands
carrier and next-hop changes to the core the moment they arrive; and the main
thread, which reads failover and arbitration events from the ring buffers and
the links' and feeds' state: every tick, or seldom while the links are quiet
(appliance.edge.pace). A member of an HA pair adds the
pair's threads (appliance.edge.pairagent: heartbeat readings at each path's
deadline and the witness's swaps, the etcd watch, the lease) and the VIP's
(appliance.edge.vip). If the daemon dies or stops, the
attached programs keep forwarding on the last state it wrote, from pinned
maps (fail static), and the sender keeps probing, so the data path still
leaves a dead link on its own; the next daemon adopts all of it.
"""
from __future__ import annotations

import gc
import itertools
import logging
import math
import os
import socket
import sys
import threading
import time
from contextlib import ExitStack

from pyroute2 import IPRoute

from appliance import layout
from appliance.core import policy, telemetry
from appliance.core.config import Config, ConfigError
from appliance.core.decision import PAIR_INPUTS, Core, Decision, Start
from appliance.core.feeds import FeedParams
from appliance.core.pair import ACTIVE, DRAINING, STANDBY, PairParams
from appliance.edge import gatelock, netlink, preflight, probesender
from appliance.edge.arbitration import TAIL_CALLS, Arbiter, multicast_mac
from appliance.edge.control import ControlServer, EventHub, socket_path
from appliance.edge.dataplane import PROBE_IDENT, Gateway, LinkState, detach_all, detach_stale, open_probe_socket
from appliance.edge.feedwatch import FeedWatch
from appliance.edge.jsonlog import EventLog, JsonFormatter
from appliance.edge.keys import HeartbeatKey
from appliance.edge.metrics import MetricsServer
from appliance.edge.observe import Observer
from appliance.edge.pace import ReadingPace
from appliance.edge.pairagent import PairAgent
from appliance.edge.pins import PinDir, default_pin_dir
from appliance.edge.probesender import SenderProcess
from appliance.edge.probewindows import ProbeWindows
from appliance.edge.trace import Recorder
from appliance.edge.vip import Vip
from appliance.edge.witness import Witness
from fastpath.heartbeat import Stats

TICK_S = 0.005
# Readings while every link is quiet (appliance.edge.pace): the kernel wakes
# the daemon sooner at the first reply out of the ordinary. At most half a
# RTT ring of rounds apart, so no reading loses a settled probe.
QUIET_READING_S = 0.05
FEED_TICK_S = 0.01       # gap grace windows and line health
FEED_SUMMARY_S = 1.0
SENDER_RESTART_S = 1.0   # at most one probe sender restart per second: one that dies at start does not spin
SENDER_CHECK_S = 0.1     # the probe sender's liveness: a waitpid and a counter read, not worth every tick
# A sender alive that sends no round for this long (and this many of its
# periods) while the daemon watched it throughout is stopped or wedged.
SENDER_STALL_S = 1.0
SENDER_STALL_ROUNDS = 10
# Inputs that may change what the link core decides at its next reading
# (besides the reflex's events, which wake it anyway): a quiet pace ends.
# feed-lines (every 10 ms) only when it changes a line's health, the feed
# detector's evidence.
LINK_CHANGES = frozenset({"carrier", "neighbour", "force", "release", "drain", "undrain", "predict", "reconfigure"})
READY_TIMEOUT_NS = 5_000_000_000  # steering attaches by then even if a link never answered
# A thread woken by a deadline (the pair's) waits for the GIL up to this long
# while another runs Python: CPython's default of 5 ms would be a takeover's
# whole budget.
GIL_SWITCH_S = 0.0002
PAIR_READY_NS = 2_000_000_000     # the pair core's start grace: a restarted sender re-probes within it


# The control protocol's argument names -> the core's (appliance.core.decision.EXTERNAL_INPUTS).
OPERATOR_ARGS = {"class": "class_name", "link": "link_name", "role": "role"}
# Control commands that are the pair core's pair-force input.
PAIR_COMMANDS = {"force-active": ACTIVE, "force-standby": STANDBY}


def _describe(d: Decision) -> str:
    f = d.fields
    if d.event == "failover":
        return f"class {f['class']} moved {f['from']} -> {f['to']} ({f['cause']})"
    return d.event + "".join(f" {k}={v}" for k, v in f.items() if k != "evidence")


def sd_notify(state: str) -> None:
    """Tells systemd (Type=notify) `state`, if it started us."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), address)
    except OSError:
        pass   # systemd gone or not listening: nothing to tell, and never a reason to stop


class Daemon:
    def __init__(self, cfg: Config, log: EventLog, stats_interval_s: float = 10.0, record: str | None = None):
        self.cfg = cfg
        self.log = log
        self.stats_interval_s = stats_interval_s
        self.record_path = record
        self.link_names = [l.name for l in cfg.links]
        self.class_names = [c.name for c in cfg.classes]
        self.links: list[LinkState] = []
        self.core: Core | None = None
        self.recorder: Recorder | None = None
        # One input at a time, from the netlink, main, control-socket and pair
        # threads, so each core sees (and the trace records) exactly one order.
        # The pair core shares nothing with the others and has a lock of its own
        # (decision.PAIR_INPUTS). Reentrant: a health reading reads the maps
        # under it (see _read_links).
        self._core_lock = threading.RLock()
        self._pair_lock = threading.RLock()
        self._on_ready = None
        self.arbiter: Arbiter | None = None
        self.trader: LinkState | None = None  # the trader-facing link and feed receivers' MACs
        self._reload_lock = threading.Lock()
        self.reload_requested = threading.Event()   # SIGHUP: the main loop reloads
        self.observer = Observer(self)
        self.sender_stats: Stats | None = None
        self.sender_pid: int | None = None
        self.sender_restarts = 0
        self._sender_exit_logged: int | None = None   # the dead sender's pid, once its exit is logged
        self._sender_retry_at = 0.0
        self._sender_seq: int | None = None        # its last round, as the last check saw it ...
        self._sender_quiet_since = 0.0             # ... unchanged since then ...
        self._sender_checked_at: float | None = None   # ... by checks made on schedule
        self._sender_stall_s = max(SENDER_STALL_S, SENDER_STALL_ROUNDS * cfg.heartbeat.interval_us / 1e6)
        self._sender_killed: int | None = None      # the pid killed for stalling
        self._errors = itertools.count(1)  # exceptions in event handlers, logged as 'error' (see _guarded)
        self.pair_agent: PairAgent | None = None
        self.vip: Vip | None = None
        interval_s = cfg.heartbeat.interval_us / 1e6
        self.pace = ReadingPace(TICK_S, max(TICK_S, min(QUIET_READING_S, layout.RTT_RING // 2 * interval_s)),
                                settle_s=(cfg.heartbeat.multiplier + 1) * interval_s + 2 * TICK_S)

    # -- the core's one entry ----------------------------------------------
    def _consume(self, kind: str, ts_ns: int, /, **fields) -> list[Decision]:
        with self._pair_lock if kind in PAIR_INPUTS else self._core_lock:
            if self.recorder:
                self.recorder.input(kind, ts_ns, fields)
            decisions = self.core.consume(kind, ts_ns, fields)
            if kind in LINK_CHANGES or any(d.event == "line-health" for d in decisions):   # read soon, and often
                self.pace.woken(time.monotonic(), disarmed=False)
            for decision in decisions:
                self._apply(decision.effect)
                if decision.event == "failover":
                    self.observer.tally.count(decision.fields, decision.ts_ns)
                elif decision.event == "pair-role" and decision.fields["was"] != decision.fields["role"]:
                    self.observer.tally.pair_causes[decision.fields["cause"]] += 1
                self.log.emit(decision.event, mono_ns=decision.ts_ns, **decision.fields)
            return decisions

    # -- the control socket (appliance.edge.control calls these from its threads)
    def status(self) -> dict:
        if self.core is None:
            raise RuntimeError("the daemon is still starting")
        return self.observer.status()

    def command(self, cmd: str, args: dict, peer) -> dict:
        """force, release, drain, undrain: the core's operator inputs; reload."""
        if cmd == "reload":
            return self.reload("control", peer={"uid": peer.uid, "pid": peer.pid})
        if self.core is None:
            return {"ok": False, "error": "the daemon is still starting"}
        if cmd in PAIR_COMMANDS:
            if self.core.pair is None:
                return {"ok": False, "error": "this gateway is not part of an HA pair (no [pair] in its config)"}
            cmd, args = "pair-force", {"role": PAIR_COMMANDS[cmd]}
        decisions = self._consume(cmd, time.monotonic_ns(), **{OPERATOR_ARGS[name]: v for name, v in args.items()})
        refused = [d.fields["reason"] for d in decisions if d.event == "refused"]
        if refused:
            return {"ok": False, "error": "; ".join(refused)}
        return {"ok": True, "decisions": [d.record() for d in decisions],
                "message": "; ".join(_describe(d) for d in decisions) or "nothing to change"}

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
        elif what == "pair":
            self._set_role(*args)
        elif what == "witness":
            self.pair_agent.request(*args)
        elif what == "publish":
            self.pair_agent.publish(*args)
        else:
            raise AssertionError(f"unknown effect {effect!r}")

    def _set_role(self, role: str, token: int) -> None:
        """The active opens the gate before it announces the VIP, so the first
        order the trader sends it is forwarded; any other role closes the
        gate before it gives the VIP up, except right after its own hand-over
        (DRAINING): the VIP goes, the gate stays open until the core closes it."""
        if role == ACTIVE:
            self.gw.write_pair(layout.PAIR_ACTIVE, token)
            self.vip.claim()
        elif role == DRAINING:
            self.vip.release()
        else:
            self.gw.write_pair(layout.PAIR_STANDBY, token)
            self.vip.release()

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
            if isinstance(change, netlink.XdpChange):
                self._set_xdp_target(link_id, change.redirect_target)
            elif isinstance(change, netlink.LinkChange):
                self._consume("carrier", ts_ns, link=link_id, up=change.carrier)
            else:
                self._consume("neighbour", ts_ns, link=link_id, ip=str(change.ip), mac=change.mac)
        elif self.trader and change.ifindex == self.trader.ifindex and isinstance(change, netlink.NeighbourChange):
            self._consume("receiver", ts_ns, ip=str(change.ip), mac=change.mac)

    def _set_xdp_target(self, link_id: int, on: bool) -> None:
        """Whether steer may forward to this link at XDP: the kernel drops
        what is redirected to a device that does not take XDP frames."""
        with self._core_lock:
            state = self.links[link_id]
            if state.xdp_target == on:
                return
            state.xdp_target = on
            self.gw.write_link(link_id, state)
        self.log.emit("xdp-target", link=self.link_names[link_id], redirect_target=on)

    def _write_feed(self, feed_id: int, mac: str | None) -> None:
        feed = self.cfg.feeds[feed_id]
        self.arbiter.write_feed(feed_id, feed.protocol, feed.dst, feed.port, self.trader.ifindex,
                                self.trader.src_mac, mac)

    # -- main thread --------------------------------------------------------
    def _on_event(self, ev: layout.Event) -> None:
        self.pace.woken(time.monotonic(), disarmed=ev.cause == layout.CAUSE_WAKE)
        if ev.cause == layout.CAUSE_WAKE:
            return
        self._consume("reflex", ev.ts_ns, class_id=ev.class_id, from_link=ev.from_link, to_link=ev.to_link,
                      cause=layout.CAUSES.get(ev.cause, str(ev.cause)), silence_ns=ev.silence_ns)

    def _read_links(self, sender: Stats, windows: ProbeWindows) -> None:
        """A health reading, then the next one scheduled (self.pace) and the
        kernel armed to wake the daemon if the links are quiet."""
        # Read under the core's lock: an operator's command on another thread
        # may move a class between this read of tp_active and the reading's turn.
        with self._core_lock:
            health, active = self.gw.health(), self.gw.active()
            rings = self.gw.rtt_rings()
            now_ns = time.monotonic_ns()
            self._consume("health", now_ns,
                          links=[[h.last_reply_ns, h.fresh_since_ns] for h in health], active=active,
                          windows=windows.read(rings, sender.last_seq), sender_late_ns=sender.take_late_ns())
            arm = self.pace.read(now_ns / 1e9, self.core.quiet(now_ns))
            if arm:
                self.gw.arm_wake(arm)

    def _report_health(self, sender: Stats, hist_before: list[list[int]]) -> list[list[int]]:
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
        with gatelock.GatewayLock(), ExitStack() as services:
            with IPRoute() as ipr:
                keys = preflight.check(self.cfg, ipr)
            # Both bound before anything is attached: a port or socket in use changes nothing.
            if self.cfg.metrics.port:
                services.enter_context(MetricsServer(self.cfg.metrics.port, self.observer.snapshot))
            hub = EventHub()
            events = hub.handler(JsonFormatter())
            logging.getLogger().addHandler(events)
            services.callback(logging.getLogger().removeHandler, events)
            services.enter_context(ControlServer(socket_path(self.cfg.control.socket), self, hub, self.log.emit))
            self._run(stop, keys)

    def _start(self, receivers: list[str | None], **pair) -> Start:
        cfg, arb = self.cfg, self.cfg.arbitration
        return Start(
            links=cfg.link_params(READY_TIMEOUT_NS),
            feeds=FeedParams(names=[f.name for f in cfg.feeds], dsts=[str(f.dst) for f in cfg.feeds],
                             line_links=[cfg.link_index(n) for n in arb.lines] if cfg.feeds else None,
                             grace_ns=int(arb.grace_ms * 1e6), silence_ns=int(arb.silence_ms * 1e6),
                             behind_seqs=arb.behind_seqs),
            carrier=[s.carrier for s in self.links], nexthop=[s.dst_mac for s in self.links],
            receivers=receivers, started_ns=time.monotonic_ns(), **pair)

    def _pair_start(self) -> dict:
        """The pair's parameters and the role the pinned gate holds (a
        restart adopts an active one); outside a pair the gate forwards."""
        cfg = self.cfg
        if not cfg.pair:
            self.gw.write_pair(layout.PAIR_NONE, 0)
            return {}
        gate = self.gw.pair()
        role = ACTIVE if gate.mode == layout.PAIR_ACTIVE else STANDBY
        if role != ACTIVE:   # never forward, nor answer for the VIP, before the witness says so
            self.gw.write_pair(layout.PAIR_STANDBY, 0)
            self.vip.release()
        pair_links = set(cfg.pair.peer_links) | set(cfg.pair.lan_links)
        order = sorted({cfg.link_index(n) for c in cfg.classes for n in c.links if n not in pair_links})
        params = PairParams(node=cfg.pair.node, peer=cfg.pair.peer, link_names=self.link_names,
                            peer_links=[cfg.link_index(n) for n in cfg.pair.peer_links],
                            lan_links=[cfg.link_index(n) for n in cfg.pair.lan_links], order_links=order,
                            dead_ns=cfg.heartbeat.dead_ns, multiplier=cfg.heartbeat.multiplier,
                            ready_ns=PAIR_READY_NS, preempt=cfg.pair.preempt,
                            hold_down_ns=cfg.pair.hold_down_ms * 1_000_000)
        return {"pair": params, "pair_role": role, "pair_token": int(gate.token) if role == ACTIVE else 0}

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
            self.pins = PinDir(cfg.state.pin_dir or default_pin_dir())
            self.gw = Gateway(cfg, pins=self.pins)
            for i, state in enumerate(self.links):
                # The kernel forgets a next hop only the data path talks to; a restart
                # keeps the pinned one rather than make a live link look dead.
                state.dst_mac = state.dst_mac or self.gw.pinned_nexthop(i, state.ifindex)
                self.gw.write_link(i, state)
            # A restart carries on where the running data path is, not from the preferred links.
            adopted = self.gw.previous_active(ipr)
            self.gw.write_policy(adopted or self.gw.preferred_active())
            if adopted:
                self.log.emit("adopted", active={self.class_names[c]: self.link_names[l]
                                                 for c, l in enumerate(adopted)})
            self.gw.write_keys(keys)
            if cfg.pair:
                ingress_index, ingress_mac, _ = netlink.link_info(ipr, cfg.steer.ingress)
                self.vip = Vip(cfg.steer.ingress, ingress_index, ingress_mac, cfg.pair.vip,
                               lambda message: self.log.emit("error", where="vip", error=message,
                                                             errors=next(self._errors)))
            self.gw.open_events(self._guarded("reflex", self._on_event))
            receivers = self._load_arbiter(ipr) if cfg.feeds else []

            sockets = [open_probe_socket(l.dev, s.local, l.target) for l, s in zip(cfg.links, self.links)]
            sender = SenderProcess(sockets, [layout.probe_template(i, PROBE_IDENT) for i in range(len(cfg.links))],
                                   layout.PROBE_SEQ_OFFSET, cfg.heartbeat.interval_us * 1000,
                                   cfg.heartbeat.sender_priority)
            self.sender_stats = sender.stats
            self.log.emit("pinned", pin_dir=str(self.pins.path),
                          migrated={**self.gw.migrated, **(self.arbiter.migrated if self.arbiter else {})})
            xdp_targets = netlink.XdpTargets()
            monitor = netlink.Monitor(xdp_targets.mgmt_group)
            with self._core_lock:   # asked after the monitor subscribed: no change between is missed
                for i, state in enumerate(self.links):
                    state.xdp_target = xdp_targets.redirect_target(state.ifindex)
                    self.gw.write_link(i, state)
            xdp_targets.close()
            start = self._start(receivers, **self._pair_start())
            self.core = Core(start)
            if self.record_path:
                self.recorder = Recorder(self.record_path, start)
            feedwatch = None
            if cfg.feeds:
                feedwatch = FeedWatch(cfg, self.arbiter, self.core.feeds, self._consume, self.log)
                self.arbiter.open_events(self._guarded("arb-event", feedwatch.on_event))
            self._on_ready = lambda: self._steer_attached(ipr)
            netlink_thread = threading.Thread(target=self._watch_netlink, args=(monitor, stop), name="netlink",
                                              daemon=True)
            try:
                # Heartbeats and probes first; steering once the links have
                # answered (the core's readiness), see Gateway.attach_steer.
                previous = probesender.stop_recorded(self.pins)
                self.pins.resync()
                self.gw.attach_heartbeats(ipr)
                self._start_sender(sender, previous)
                netlink_thread.start()
                if cfg.pair:
                    self._start_pair(stop)
                if self.arbiter:
                    self.pins.resync()
                    self.arbiter.attach(ipr, [cfg.links[cfg.link_index(n)].dev for n in cfg.arbitration.lines])
                self.log.emit("attached", startup_ms=round((time.monotonic() - t0) * 1000, 1),
                              links={l.name: l.dev for l in cfg.links}, ingress=cfg.steer.ingress,
                              interval_us=cfg.heartbeat.interval_us, multiplier=cfg.heartbeat.multiplier,
                              sender_priority=cfg.heartbeat.sender_priority, sender_pid=sender.pid,
                              feeds={f.name: {"protocol": f.protocol, "dst": f"{f.dst}:{f.port}",
                                              "receiver_mac": receivers[i]}
                                     for i, f in enumerate(cfg.feeds)})
                self._resolve_missing_nexthops(ipr)
                self._main_loop(stop, sender, feedwatch)
            finally:
                sd_notify("STOPPING=1")
                stats = sender.stats
                self.log.emit("stopped", sent=stats.sent, late_periods=stats.late_periods,
                              max_late_us=round(stats.max_late_ns / 1000, 1), readings=self.pace.readings,
                              quiet_readings=self.pace.quiet_readings, kernel_wakes=self.pace.wakes)
                if cfg.state.on_stop == "detach":
                    self.log.emit("detached", removed=detach_all(ipr, self.pins))
                else:
                    self.log.emit("fail-static", pin_dir=str(self.pins.path), sender_pid=sender.pid, note=(
                        "the data path keeps forwarding on its last state, and the probe sender keeps "
                        "probing, so the data path still fails over; the next daemon takes both over; "
                        "`twinpath detach` removes them"))
                self.pins.close()
                stop.set()
                if netlink_thread.is_alive():
                    netlink_thread.join(timeout=1.0)
                if self.pair_agent:
                    self.pair_agent.join()
                if self.vip:
                    self.vip.close()
                monitor.close()
                for s in sockets:
                    s.close()
                sender.close()
                if self.recorder:
                    self.recorder.close()

    def _start_pair(self, stop: threading.Event) -> None:
        p = self.cfg.pair
        sys.setswitchinterval(GIL_SWITCH_S)

        def witness() -> Witness:
            return Witness(p.witness, p.prefix, p.node, p.lease_s)

        def next_deadline(ts_ns: int) -> int | None:
            with self._pair_lock:
                return self.core.pair.next_deadline(ts_ns)

        self.pair_agent = PairAgent(self._guarded_consume("pair", self._consume),
                                    lambda: [[h.last_reply_ns, h.unanswered] for h in self.gw.health()],
                                    next_deadline, witness,
                                    p.lease_s, self.log.emit, self.cfg.heartbeat.sender_priority)
        self.pair_agent.start(stop)
        self._set_daemon_priority(self.cfg.heartbeat.sender_priority)

    def _set_daemon_priority(self, sender_priority: int) -> None:
        """With [pair], every other thread of the daemon runs SCHED_FIFO 1
        (normal scheduling if sender_priority is 0). The pair thread needs
        the GIL to act on a dead peer, and a normal thread holding it, taken
        off the CPU by any busy process, held the pair thread 1-4 ms (up to
        20 ms) on the loaded lab; at FIFO 1 the holder keeps running until it
        hands the GIL over (sys.setswitchinterval), yet never delays the
        probe sender or the pair thread. Threads started later inherit it."""
        policy, param = (os.SCHED_FIFO, 1) if sender_priority else (os.SCHED_OTHER, 0)
        pair_tid = self.pair_agent.pair_tid if self.pair_agent else None
        for tid in map(int, os.listdir("/proc/self/task")):
            if tid == pair_tid:
                continue
            try:
                os.sched_setscheduler(tid, policy, os.sched_param(param))
            except ProcessLookupError:
                pass   # a thread that just ended
            except OSError as e:
                self.log.emit("warning", what="daemon_priority", priority=param,
                              error=f"scheduling of the daemon's threads refused ({e.strerror})")
                return

    def _guarded_consume(self, where: str, consume):
        """consume, but an exception is logged as 'error' and returns no
        decisions: a pair thread must never die of one bad reading."""
        def call(kind: str, ts_ns: int, /, **fields) -> list:
            try:
                return consume(kind, ts_ns, **fields)
            except Exception as e:
                self.log.emit("error", where=where, error=f"{type(e).__name__}: {e}", errors=next(self._errors))
                return []
        return call

    def _start_sender(self, sender: SenderProcess, previous: int | None) -> None:
        """One sender per gateway: the previous daemon's (`previous`, still
        probing so that its data path could still fail over) was stopped
        before our heartbeat programs replaced its own, so that no link's
        replies moved to the new programs while another's still reached
        the old ones: with a map migrated to a new layout, the old steer
        program would have seen only that other link answering and moved
        traffic to it. With no probes at all every link ages alike, which
        never moves traffic (lib/reflex.h). The links owe no rounds to the
        previous sender, and their silence counts from our first round (the
        egress program stamps its time); ours starts."""
        self.gw.reset_probe_rounds(sender.stats.last_seq)
        sender.start()
        sender.record(self.pins)
        self.sender_pid = sender.pid
        if previous:
            self.log.emit("sender-replaced", previous_pid=previous, pid=sender.pid)

    def _keep_sender(self, sender: SenderProcess, now: float) -> None:
        """A probe sender that died (killed, out of memory) is started again
        at once, carrying on its sequence: with no probes the data path
        detects no dead link at all. Its counters start again from zero. The
        gap moves nothing: every link ages alike (lib/reflex.h), the core
        takes it for a stall, and the new sender's links owe no missed rounds.
        One that lives but sends nothing (stopped, wedged) is killed first."""
        status = sender.exit_status()
        if status is None:
            # A killed sender blocked in the kernel exits when it returns: killed once, logged once.
            if self._sender_killed != sender.pid and self._sender_stalled(sender.stats.last_seq, now):
                self._kill_stalled_sender(sender, now)
            return
        if self._sender_exit_logged != sender.pid:
            self._sender_exit_logged = sender.pid
            self.log.emit("error", where="sender", errors=next(self._errors),
                          error=f"the probe sender (pid {sender.pid}) exited with status {status}: no probes go "
                                f"out, so no dead link is detected until it runs again")
        if now < self._sender_retry_at:
            return
        self._sender_retry_at = now + SENDER_RESTART_S
        previous = sender.pid
        try:
            self._start_sender(sender, None)
        except (OSError, RuntimeError) as e:
            self.log.emit("error", where="sender", errors=next(self._errors),
                          error=f"restarting the probe sender failed ({e}); retrying in {SENDER_RESTART_S:g} s")
            return
        self.sender_restarts += 1
        self.log.emit("sender-restarted", previous_pid=previous, status=status,
                      cause="stalled" if previous == self._sender_killed else "exited", pid=sender.pid,
                      first_seq=sender.stats.last_seq + 1, restarts=self.sender_restarts)

    def _sender_stalled(self, seq: int, now: float) -> bool:
        """Whether the sender's round has stood still for the stall bound
        while this daemon checked on schedule. A late check (the daemon held
        off the CPU too: a host stall, which the core already holds
        verdicts for) starts the count again."""
        on_schedule = self._sender_checked_at is not None and now - self._sender_checked_at <= 3 * SENDER_CHECK_S
        self._sender_checked_at = now
        if seq != self._sender_seq or not on_schedule:
            self._sender_seq, self._sender_quiet_since = seq, now
            return False
        return now - self._sender_quiet_since >= self._sender_stall_s

    def _kill_stalled_sender(self, sender: SenderProcess, now: float) -> None:
        """Killed, it is restarted on the next check like one that died;
        its exit is this error, not another."""
        pid = sender.pid
        self.log.emit("error", where="sender", errors=next(self._errors),
                      error=f"the probe sender (pid {pid}, state {sender.state()}) has sent no probe for "
                            f"{now - self._sender_quiet_since:.1f} s: no dead link is detected without "
                            f"probes; killing it to start a new one")
        self._sender_killed = self._sender_exit_logged = pid
        self._sender_seq = None
        sender.kill()

    def _steer_attached(self, ipr: IPRoute) -> None:
        """Steering attached: every program of this daemon now runs, so the
        maps migrated from an older layout have no reader left."""
        xdp_off = self.gw.attach_steer(ipr)
        self.log.emit("steer-attached", ingress=self.cfg.steer.ingress, xdp=xdp_off is None,
                      xdp_targets=[n for n, s in zip(self.link_names, self.links) if s.xdp_target],
                      **({"xdp_off": xdp_off} if xdp_off else {}))
        ours, tail_calls = self.gw.attachments(), set()
        if self.arbiter:
            ours |= self.arbiter.attachments()
            tail_calls.add(TAIL_CALLS)
        stale = detach_stale(ipr, self.pins, ours, tail_calls)
        if stale:
            self.log.emit("detached-stale", removed=stale)
        retired = self.pins.retire()
        if retired:
            self.log.emit("migrated", retired=retired)
        # What exists now (BCC's tables, the config, the imported modules)
        # lives as long as the daemon; frozen, a full collection no longer
        # walks it, which took 50 ms here with every thread stopped.
        gc.freeze()
        sd_notify("READY=1")

    def _load_arbiter(self, ipr: IPRoute) -> list[str | None]:
        """Arbitration for the configured feeds; returns each feed's receiver
        MAC. One not known yet is filled in when the kernel learns it (the
        core's feed-receiver); until then that feed takes kernel routing."""
        self.arbiter = Arbiter(int(self.cfg.arbitration.heartbeat_dedup_ms * 1e6), self.pins)
        self.arbiter.sync_clock()
        ifindex, mac, carrier = netlink.link_info(ipr, self.cfg.steer.ingress)
        self.trader = LinkState(ifindex, mac, carrier=carrier)
        receivers = []
        for feed_id, feed in enumerate(self.cfg.feeds):
            receivers.append(self._receiver_mac(ipr, feed))
            self._write_feed(feed_id, receivers[-1])
        pruned = self.arbiter.prune_feeds([(f.dst, f.port) for f in self.cfg.feeds])
        if pruned:
            self.log.emit("feeds-removed", feeds=pruned, why="pinned from an earlier configuration")
        return receivers

    def _receiver_mac(self, ipr: IPRoute, feed) -> str | None:
        """The group's MAC, the receiver's neighbour entry, or else the one
        the pinned feed entry already forwards to: the kernel forgets a
        neighbour that only XDP talks to, and a restart must not send the
        feed back to kernel routing (both copies) over it."""
        if feed.dst.is_multicast:
            return multicast_mac(feed.dst)
        return netlink.neighbour_mac(ipr, self.trader.ifindex, feed.dst) or self.arbiter.feed_mac(feed.dst, feed.port)

    # -- reload -------------------------------------------------------------
    def reload(self, source: str, peer: dict | None = None) -> dict:
        """Re-reads the config file and applies it whole, or not at all: a
        file that does not parse or fit this gateway, or a change that cannot
        be applied live (appliance.core.reload), is refused and the running
        configuration stays. Called from the main loop (SIGHUP) or the control
        socket; one at a time."""
        from appliance.core import reload as reload_plan
        from appliance.edge.configfile import load
        who = {"source": source, **({"peer": peer} if peer else {})}
        with self._reload_lock:
            try:
                new = load(self.cfg.source)
                with IPRoute() as ipr:
                    keys = preflight.check(new, ipr)
            except ConfigError as e:
                self.log.emit("reload-refused", **who, reasons=str(e).splitlines())
                return {"ok": False, "error": str(e)}
            plan = reload_plan.plan(self.cfg, new)
            sd_notify("RELOADING=1")
            refused = plan.refused + [f"{c.where}: {c.what}: recompiling the programs live is not supported yet; "
                                      f"{reload_plan.RESTART}" for c in plan.changes if c.how == "programs"]
            if refused:
                sd_notify("READY=1")
                self.log.emit("reload-refused", **who, reasons=refused)
                return {"ok": False, "error": "; ".join(refused), "refused": refused}
            with IPRoute() as ipr:
                self._apply_config(new, keys, ipr)
            sd_notify("READY=1")
            changes = [c.where + ": " + c.what for c in plan.changes]
            self.log.emit("reloaded", **who, changes=changes)
            return {"ok": True, "changes": changes}

    def _set_sender_priority(self, priority: int) -> None:
        policy = os.SCHED_FIFO if priority else os.SCHED_OTHER
        try:
            os.sched_setscheduler(self.sender_pid, policy, os.sched_param(priority))
        except OSError as e:
            self.log.emit("warning", what="sender_priority", priority=priority,
                          error=f"scheduling of the probe sender refused ({e.strerror}): it keeps the old one")

    def _apply_config(self, new: Config, keys: list[HeartbeatKey], ipr: IPRoute) -> None:
        """Maps first (links, classes, rules, keys, feeds appended), then the
        core's parameters as one recorded input, then any next hop the new
        config names."""
        old, self.cfg, self.gw.cfg = self.cfg, new, new
        for i, link in enumerate(new.links):
            self.links[i].ttl_security = link.ttl_security
            self.gw.write_link(i, self.links[i])
        active = self.gw.active()
        for cid, c in enumerate(new.classes):
            links = [new.link_index(n) for n in c.links]
            self.gw.write_class(cid, active[cid] if active[cid] in links else links[0])
        self.gw.write_rules()
        if new.heartbeat.key_file:   # without one the run keeps its random key
            self.gw.write_keys(keys)
        if new.heartbeat.sender_priority != old.heartbeat.sender_priority:
            self._set_sender_priority(new.heartbeat.sender_priority)
            if self.pair_agent:
                self.pair_agent.set_priority(new.heartbeat.sender_priority)
                self._set_daemon_priority(new.heartbeat.sender_priority)
        for feed_id in range(len(old.feeds), len(new.feeds)):
            self._write_feed(feed_id, self._receiver_mac(ipr, new.feeds[feed_id]))
        start = self._start([None] * len(new.feeds))
        self._consume("reconfigure", time.monotonic_ns(), links=start.links.to_json(), feeds=start.feeds.__dict__)
        self._resolve_missing_nexthops(ipr)

    def _resolve_missing_nexthops(self, ipr: IPRoute) -> None:
        """Probes make the kernel ARP for each far end; pick up the answers
        that arrived before the netlink thread was listening."""
        for i, link in enumerate(self.cfg.links):
            mac = netlink.neighbour_mac(ipr, self.links[i].ifindex, link.gateway)
            if mac:
                self._consume("neighbour", time.monotonic_ns(), link=i, ip=str(link.gateway), mac=mac)

    def _main_loop(self, stop: threading.Event, sender_process: SenderProcess, feedwatch: FeedWatch | None) -> None:
        sender = sender_process.stats
        next_health = time.monotonic() + self.stats_interval_s
        next_feed_tick = next_sender_check = time.monotonic()
        next_feed_summary = next_feed_tick + FEED_SUMMARY_S
        hists = [[0] * layout.HIST_BUCKETS for _ in self.links]
        windows = ProbeWindows(self.cfg.heartbeat.multiplier)
        while not stop.is_set():
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload("SIGHUP")
            due = [self.pace.next_s, next_sender_check] + ([next_feed_tick] if feedwatch else [])
            self.gw.poll(max(0, math.ceil((min(due) - time.monotonic()) * 1000)))
            if self.pace.due(time.monotonic()):
                self._read_links(sender, windows)
            now = time.monotonic()
            if now >= next_sender_check:
                self._keep_sender(sender_process, now)
                next_sender_check = now + SENDER_CHECK_S
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
