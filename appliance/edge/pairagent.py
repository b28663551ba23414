"""The HA pair's edge: feeds the pair core its inputs and carries out its
requests (appliance.core.pair).

Three threads:
  pair     reads the heartbeat map exactly when the next link could go stale
           (PairCore.next_deadline), so a dead peer is seen within
           microseconds of its dead interval, without polling at 1 kHz; and
           runs the witness requests the core makes (a compare-and-swap on
           the critical path of a takeover, then the answer back to the core)
  watch    etcd's watch on the pair's prefix: ownership and published states
  lease    publishes this node's state under its lease and keeps the lease
           alive, off the takeover's path

Every witness call is bounded by its timeout; a failure reaches the core as
"witness unreachable", which decides nothing new (see the core).
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from appliance.edge.witness import Ownership, Witness, WitnessError

SLACK_NS = 50_000          # read just after a deadline, not just before it
IDLE_WAKE_NS = 20_000_000  # re-read the heartbeat map at least this often
WARM_NS = 200_000_000      # a witness read at least this often keeps the takeover's connection open and warm


class PairAgent:
    def __init__(self, consume: Callable[..., list], read_health: Callable[[], list[list[int]]], next_deadline,
                 witness_factory: Callable[[], Witness], lease_s: int, log_emit: Callable[..., None]):
        """consume: the daemon's one core entry (kind, ts_ns, **fields);
        read_health: each link's [last accepted reply (ns), unanswered probes];
        next_deadline(ts_ns): the pair core's, under the daemon's lock."""
        self._consume, self._read_health, self._next_deadline = consume, read_health, next_deadline
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._published: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._lease_s = lease_s
        self._log = log_emit
        # One client per thread: each holds its own connection (and the lease thread's, the lease).
        self._calls, self._watcher, self._leaser = witness_factory(), witness_factory(), witness_factory()
        self._states: dict[str, dict] = {}
        self._threads: list[threading.Thread] = []

    # -- called from the daemon's _apply (under its core lock): never block
    def request(self, op: str, expected: int, to: str | None) -> None:
        self._requests.put((op, expected, to))
        self._wake.set()

    def publish(self, state: dict) -> None:
        self._published.put(dict(state))

    # -- threads -----------------------------------------------------------
    def start(self, stop: threading.Event) -> None:
        for name, target in (("pair", self._run), ("pair-watch", self._watch), ("pair-lease", self._keep_lease)):
            t = threading.Thread(target=target, args=(stop,), name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def join(self, timeout_s: float = 1.0) -> None:
        self._wake.set()
        for t in self._threads:
            t.join(timeout=timeout_s)
        for client in (self._calls, self._watcher, self._leaser):
            client.close()

    def _run(self, stop: threading.Event) -> None:
        self._read_witness()
        last_call = time.monotonic_ns()
        while not stop.is_set():
            if self._drain_requests():
                last_call = time.monotonic_ns()
            now = time.monotonic_ns()
            if now - last_call >= WARM_NS:
                self._read_witness()
                last_call = now = time.monotonic_ns()
            self._consume("pair-health", now, links=self._read_health())
            deadline = self._next_deadline(time.monotonic_ns())
            wait_ns = IDLE_WAKE_NS if deadline is None else min(IDLE_WAKE_NS, deadline + SLACK_NS - now)
            if wait_ns > 0:
                self._wake.wait(wait_ns / 1e9)
            self._wake.clear()   # before the next drain: a request put meanwhile is still drained

    def _drain_requests(self) -> bool:
        """Whether there was any."""
        drained = False
        while True:
            try:
                item = self._requests.get_nowait()
            except queue.Empty:
                return drained
            self._carry_out(*item)
            drained = True

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
