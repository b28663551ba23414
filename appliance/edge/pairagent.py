"""The HA pair's edge: feeds the pair core its inputs and carries out its
requests (appliance.core.pair).

Four threads:
  pair     reads the heartbeat map exactly when the next link could go stale
           (PairCore.next_deadline), so a dead peer is seen within
           microseconds of its dead interval, without polling at 1 kHz. It
           runs SCHED_FIFO and never waits for the witness: an HTTP call to
           etcd takes 1-30 ms on a loaded host, and a dead peer's deadline
           falling inside one cost the takeover that long
  witness  the compare-and-swaps the core requests (then the answer back to
           the core), and a read at least every WARM_S that keeps its
           connection open and warm for the next swap
  watch    etcd's watch on the pair's prefix: ownership and published states
  lease    publishes this node's state under its lease and keeps the lease
           alive

Every witness call is bounded by its timeout; a failure reaches the core as
"witness unreachable", which decides nothing new (see the core).
"""
from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable

from appliance.edge.witness import Ownership, Witness, WitnessError

SLACK_NS = 50_000          # read just after a deadline, not just before it
IDLE_WAKE_NS = 20_000_000  # re-read the heartbeat map at least this often
WARM_S = 0.2               # a witness read at least this often keeps the swap's connection open and warm


class LateReadings:
    """Logs a pair-health reading that came late or took long ("pair-late"),
    at most once per LOG_EVERY_NS (with how many more there were) unless
    it decided something: a takeover decided late is then explained by the
    pair thread's own timing (woken late, the map read, the core lock and
    the decision)."""
    LATE_NS = 1_000_000
    LOG_EVERY_NS = 1_000_000_000

    def __init__(self, log_emit: Callable[..., None]):
        self._log = log_emit
        self._logged_ns: int | None = None
        self._unlogged = 0

    def check(self, wake_at: int | None, woke: int, read: int, done: int, decided: bool = False) -> None:
        late_ns = 0 if wake_at is None else woke - wake_at
        if late_ns < self.LATE_NS and done - woke < self.LATE_NS:
            return
        if not decided and self._logged_ns is not None and done - self._logged_ns < self.LOG_EVERY_NS:
            self._unlogged += 1
            return
        self._log("pair-late", woke_late_us=round(late_ns / 1000, 1), read_us=round((read - woke) / 1000, 1),
                  consume_us=round((done - read) / 1000, 1), decided=decided, unlogged_since=self._unlogged)
        self._logged_ns, self._unlogged = done, 0


class PairAgent:
    def __init__(self, consume: Callable[..., list], read_health: Callable[[], list[list[int]]], next_deadline,
                 witness_factory: Callable[[], Witness], lease_s: int, log_emit: Callable[..., None],
                 sender_priority: int = 0):
        """consume: the daemon's one core entry (kind, ts_ns, **fields);
        read_health: each link's [last accepted reply (ns), unanswered probes];
        next_deadline(ts_ns): the pair core's, under the daemon's lock;
        sender_priority: the probe sender's SCHED_FIFO priority (0: normal
        scheduling), which the pair thread follows (set_priority)."""
        self._consume, self._read_health, self._next_deadline = consume, read_health, next_deadline
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._published: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._first_witness_read = threading.Event()
        self._lease_s = lease_s
        self._log = log_emit
        # One client per thread: each holds its own connection (and the lease thread's, the lease).
        self._calls, self._watcher, self._leaser = witness_factory(), witness_factory(), witness_factory()
        self._states: dict[str, dict] = {}
        self._threads: list[threading.Thread] = []
        self._priority = sender_priority
        self.pair_tid: int | None = None     # the pair thread's, once it runs
        self._late = LateReadings(log_emit)

    # -- called from the daemon's _apply (under its core lock): never block
    def request(self, op: str, expected: int, to: str | None) -> None:
        self._requests.put((op, expected, to))

    def publish(self, state: dict) -> None:
        self._published.put(dict(state))

    # -- threads -----------------------------------------------------------
    def start(self, stop: threading.Event) -> None:
        for name, target in (("pair", self._run), ("pair-witness", self._call_witness),
                             ("pair-watch", self._watch), ("pair-lease", self._keep_lease)):
            t = threading.Thread(target=target, args=(stop,), name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def join(self, timeout_s: float = 1.0) -> None:
        self._wake.set()
        self._requests.put(None)
        for t in self._threads:
            t.join(timeout=timeout_s)
        for client in (self._calls, self._watcher, self._leaser):
            client.close()

    def set_priority(self, sender_priority: int) -> None:
        """The pair thread runs SCHED_FIFO one below the probe sender, so a
        busy host cannot make it wake late on a dead peer's deadline (a
        normal thread woke up to 2 ms late on the loaded lab), and it never
        delays a probe; 0: normal scheduling. Refused, it is a warning."""
        self._priority = sender_priority
        if self.pair_tid is None:
            return      # the thread applies it when it starts
        policy, priority = (os.SCHED_FIFO, max(1, sender_priority - 1)) if sender_priority else (os.SCHED_OTHER, 0)
        try:
            os.sched_setscheduler(self.pair_tid, policy, os.sched_param(priority))
        except OSError as e:
            self._log("warning", what="pair_priority", priority=priority,
                      error=f"scheduling of the pair thread refused ({e.strerror}): it keeps the old one")

    def _run(self, stop: threading.Event) -> None:
        self.pair_tid = threading.get_native_id()
        self.set_priority(self._priority)
        # The core hears the witness (or that it is unreachable) before the first
        # reading, as a restart adopting an active gate expects.
        while not self._first_witness_read.wait(0.1):
            if stop.is_set():
                return
        wake_at = None
        while not stop.is_set():
            woke = time.monotonic_ns()
            links = self._read_health()
            read = time.monotonic_ns()
            decisions = self._consume("pair-health", woke, links=links)
            now = time.monotonic_ns()
            self._late.check(wake_at, woke, read, now, decided=bool(decisions))
            deadline = self._next_deadline(now)
            wait_ns = IDLE_WAKE_NS if deadline is None else min(IDLE_WAKE_NS, deadline + SLACK_NS - now)
            wake_at = now + max(0, wait_ns)
            if wait_ns > 0:
                self._wake.wait(wait_ns / 1e9)

    def _call_witness(self, stop: threading.Event) -> None:
        self._read_witness()
        self._first_witness_read.set()
        while not stop.is_set():
            try:
                item = self._requests.get(timeout=WARM_S)
            except queue.Empty:
                self._read_witness()
                continue
            if item is None:
                return
            self._carry_out(*item)

    def _carry_out(self, op: str, expected: int, to: str | None) -> None:
        started = time.monotonic_ns()
        try:
            token = self._calls.acquire(expected) if op == "acquire" else self._calls.hand_over(to, expected)
            self._log("witness-swap", op=op, expected=expected, token=token,
                      took_us=round((time.monotonic_ns() - started) / 1000, 1))
        except WitnessError as e:
            self._log("warning", what="witness", op=op, error=str(e))
            self._consume("witness", time.monotonic_ns(), reachable=False, answer=True)
            return
        if token is not None:
            # The answer is the new state; no second round trip.
            self._consume("witness", time.monotonic_ns(), reachable=True, owner=self._calls.node if op == "acquire"
                          else to, token=token, states=dict(self._states), answer=True)
        else:
            self._read_witness(answer=True)

    def _read_witness(self, answer: bool = False) -> None:
        try:
            own = self._calls.read()
        except WitnessError as e:
            self._log("warning", what="witness", op="read", error=str(e))
            own = None
        self._on_change(own, answer)

    def _on_change(self, own: Ownership | None, answer: bool = False) -> None:
        if own is None:
            self._consume("witness", time.monotonic_ns(), reachable=False, answer=answer)
            return
        self._states = dict(own.states)
        self._consume("witness", time.monotonic_ns(), reachable=True, owner=own.owner, token=own.token,
                      states=dict(own.states), answer=answer)

    def _watch(self, stop: threading.Event) -> None:
        self._watcher.watch(self._on_change, stop)

    def _keep_lease(self, stop: threading.Event) -> None:
        period_s = max(0.2, self._lease_s / 3)
        next_keepalive = time.monotonic() + period_s
        while not stop.is_set():
            try:
                state = self._published.get(timeout=max(0.0, next_keepalive - time.monotonic()))
            except queue.Empty:
                state = None
            try:
                if state is not None:
                    while not self._published.empty():   # only the latest state matters
                        state = self._published.get_nowait()
                    self._leaser.publish(state)
                else:
                    self._leaser.keepalive()
                    next_keepalive = time.monotonic() + period_s
            except WitnessError as e:
                # The watch reports the witness unreachable; keepalive re-grants and
                # re-publishes once it is back.
                self._log("warning", what="witness", op="publish" if state else "keepalive", error=str(e))
                next_keepalive = time.monotonic() + period_s
