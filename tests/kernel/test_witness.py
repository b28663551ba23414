"""The witness client against a real etcd (a system dependency, hence a
kernel test): a single member on loopback, its data in tmpfs."""
from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.edge.witness import Ownership, Witness, WitnessError

pytestmark = pytest.mark.kernel

START_TIMEOUT_S = 15
# etcd rounds a lease up to its minimum (1.5 x the election timeout: 2 s by
# default) and revokes expired leases every 500 ms.
LEASE_GONE_S = 4
# Generous for a loaded 2-core machine: the pair's fast path does not wait on these.
WATCH_DELIVERY_S = 2
DEAD_CALL_S = 1


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class Etcd:
    """A single-member etcd on 127.0.0.1. start() after kill() brings back the
    same store on the same ports."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="twinpath-witness-", dir="/dev/shm"))
        client_port, peer_port = _free_ports(2)
        self.endpoint = f"http://127.0.0.1:{client_port}"
        self.peer = f"http://127.0.0.1:{peer_port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.dir / "etcd.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["etcd", "--name", "witness", "--data-dir", str(self.dir / "data"), "--logger", "zap",
                 "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                 "--listen-peer-urls", self.peer, "--initial-advertise-peer-urls", self.peer,
                 "--initial-cluster", f"witness={self.peer}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.endpoint}/health", timeout=0.5) as response:
                    if json.load(response).get("health") == "true":
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        log_tail = (self.dir / "etcd.log").read_text(errors="replace")[-2000:]
        pytest.fail(f"etcd did not become healthy in {START_TIMEOUT_S} s:\n{log_tail}", pytrace=False)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def put(self, key: str, value: bytes) -> None:
        """A raw put, past the witness's own encoding."""
        body = json.dumps({"key": base64.b64encode(key.encode()).decode(),
                           "value": base64.b64encode(value).decode()}).encode()
        urllib.request.urlopen(f"{self.endpoint}/v3/kv/put", body, timeout=2).read()


def _running_etcd() -> Etcd:
    if shutil.which("etcd") is None:
        # Like every kernel test: a skip under CI=true would hide that nothing ran.
        if os.environ.get("CI") == "true":
            pytest.fail("etcd is not installed (apt-get install etcd-server)", pytrace=False)
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    etcd = Etcd()
    try:
        etcd.start()
    except BaseException:
        etcd.remove()
        raise
    return etcd


@pytest.fixture(scope="module")
def etcd():
    etcd = _running_etcd()
    try:
        yield etcd
    finally:
        etcd.remove()


@pytest.fixture
def own_etcd():
    """An etcd for a test that kills it."""
    etcd = _running_etcd()
    try:
        yield etcd
    finally:
        etcd.remove()


@pytest.fixture
def prefix() -> str:
    return f"/twinpath-test/{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_witness(prefix):
    """Witness(endpoints, prefix, node, ...), closed after the test."""
    made: list[Witness] = []

    def make(endpoints: list[str], node: str, lease_s: int = 5, **kwargs) -> Witness:
        witness = Witness(endpoints, prefix, node, lease_s, **kwargs)
        made.append(witness)
        return witness

    yield make
    for witness in made:
        witness.close()


class Watching:
    """A witness's watch on a thread of its own, its deliveries in a queue."""

    def __init__(self, witness: Witness):
        self.changes: queue.Queue[Ownership | None] = queue.Queue()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=witness.watch, args=(self.changes.put, self.stop), daemon=True)
        self.thread.start()

    def until(self, wanted: Callable[[Ownership | None], bool], within_s: float) -> list[Ownership | None]:
        """Every delivery up to and including the first that is wanted."""
        seen = []
        deadline = time.monotonic() + within_s
        while True:
            try:
                change = self.changes.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                pytest.fail(f"no wanted delivery within {within_s} s; saw {seen}")
            seen.append(change)
            if wanted(change):
                return seen

    def halt(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        assert not self.thread.is_alive(), "the watch did not stop"


def test_acquire_on_an_empty_key_gives_a_token(etcd, make_witness):
    a = make_witness([etcd.endpoint], "gw-a")
    empty = a.read()
    assert (empty.owner, empty.token, empty.states) == (None, 0, {})
    token = a.acquire(0)
    assert token is not None and token > 0
    now = a.read()
    assert (now.owner, now.token) == ("gw-a", token)
    assert now.revision >= token


def test_a_stale_token_loses(etcd, make_witness):
    a, b = make_witness([etcd.endpoint], "gw-a"), make_witness([etcd.endpoint], "gw-b")
    token_a = a.acquire(0)
    assert b.acquire(0) is None, "the key is no longer absent"
    assert b.acquire(token_a - 1) is None
    assert a.read().owner == "gw-a"
    token_b = b.acquire(token_a)  # b saw a's token: a takeover
    assert token_b is not None and token_b > token_a
    assert a.acquire(token_a) is None, "a's token was deposed"
    assert (a.read().owner, a.read().token) == ("gw-b", token_b)


def test_hand_over_needs_the_current_token(etcd, make_witness):
    a, b = make_witness([etcd.endpoint], "gw-a"), make_witness([etcd.endpoint], "gw-b")
    token_a = a.acquire(0)
    assert a.hand_over("gw-b", token_a + 1) is None
    assert a.hand_over("gw-b", 0) is None
    token_b = a.hand_over("gw-b", token_a)
    assert token_b is not None and token_b > token_a
    assert (b.read().owner, b.read().token) == ("gw-b", token_b)
    assert a.hand_over("gw-a", token_a) is None, "a stale owner cannot take the new owner's key back"
    assert b.read().owner == "gw-b"


def test_tokens_strictly_increase_across_owners(etcd, make_witness):
    a, b = make_witness([etcd.endpoint], "gw-a"), make_witness([etcd.endpoint], "gw-b")
    tokens = [a.acquire(0)]
    a.publish({"role": "active"})  # other writes under the prefix between changes of owner
    tokens.append(a.hand_over("gw-b", tokens[-1]))
    tokens.append(a.acquire(tokens[-1]))
    b.publish({"role": "standby"})
    tokens.append(b.acquire(tokens[-1]))
    tokens.append(b.hand_over("gw-a", tokens[-1]))
    assert None not in tokens
    assert tokens == sorted(set(tokens)), f"not strictly increasing: {tokens}"
    assert a.read().token == tokens[-1]


def test_published_states_are_read_by_node(etcd, make_witness):
    a, b = make_witness([etcd.endpoint], "gw-a"), make_witness([etcd.endpoint], "gw-b")
    a.publish({"role": "active", "links": ["A", "B"]})
    b.publish({"role": "standby"})
    assert b.read().states == {"gw-a": {"role": "active", "links": ["A", "B"]}, "gw-b": {"role": "standby"}}
    b.publish({"role": "standby", "ready": True})
    assert a.read().states["gw-b"] == {"role": "standby", "ready": True}
    assert a.read().owner is None, "states are not ownership"


def _state_gone_after(witness: Witness, node: str, within_s: float) -> float:
    started = time.monotonic()
    while node in witness.read().states:
        assert time.monotonic() - started < within_s, f"{node}'s state outlived its lease by far"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_state_lives_with_its_lease(etcd, make_witness):
    a = make_witness([etcd.endpoint], "gw-a", lease_s=1)
    b = make_witness([etcd.endpoint], "gw-b")
    a.publish({"role": "active"})
    for _ in range(12):  # 3 s: past the lease, kept alive
        assert a.keepalive() > 0
        time.sleep(0.25)
    assert b.read().states == {"gw-a": {"role": "active"}}
    _state_gone_after(b, "gw-a", LEASE_GONE_S)  # a's daemon "died": no keepalive
    a.publish({"role": "standby"})  # on a new lease
    assert b.read().states == {"gw-a": {"role": "standby"}}
    _state_gone_after(b, "gw-a", LEASE_GONE_S)
    assert a.keepalive() > 0, "an expired lease is granted anew"
    assert b.read().states == {"gw-a": {"role": "standby"}}, "and the last state published again on it"


def test_the_owner_key_outlives_the_lease(etcd, make_witness):
    a = make_witness([etcd.endpoint], "gw-a", lease_s=1)
    token = a.acquire(0)
    a.publish({"role": "active"})
    _state_gone_after(a, "gw-a", LEASE_GONE_S)
    assert (a.read().owner, a.read().token) == ("gw-a", token), "fail static: ownership stays"


def test_watch_delivers_another_clients_changes(etcd, make_witness):
    a, b = make_witness([etcd.endpoint], "gw-a"), make_witness([etcd.endpoint], "gw-b")
    watching = Watching(a)
    try:
        first = watching.until(lambda change: True, WATCH_DELIVERY_S)[0]
        assert first is not None and first.owner is None, "the watch starts with the current ownership"
        token = b.acquire(0)
        changed = watching.until(lambda change: change is not None and change.owner == "gw-b", WATCH_DELIVERY_S)[-1]
        assert changed.token == token
        b.publish({"role": "active"})
        watching.until(lambda change: change is not None and "gw-b" in change.states, WATCH_DELIVERY_S)
    finally:
        watching.halt()


def test_watch_reports_a_lost_witness_once_and_its_return(own_etcd, make_witness):
    a, b = make_witness([own_etcd.endpoint], "gw-a"), make_witness([own_etcd.endpoint], "gw-b")
    token = b.acquire(0)
    watching = Watching(a)
    try:
        watching.until(lambda change: change is not None and change.token == token, WATCH_DELIVERY_S)
        own_etcd.kill()
        watching.until(lambda change: change is None, WATCH_DELIVERY_S)
        time.sleep(1)  # retries meanwhile
        assert watching.changes.empty(), "unreachable is reported once"
        own_etcd.start()
        back = watching.until(lambda change: True, WATCH_DELIVERY_S)
        assert back == [Ownership("gw-b", token, back[0].revision, {})], "a fresh read once it is back"
        moved = b.hand_over("gw-a", token)  # on a new connection: the kept-alive one died with etcd
        changed = watching.until(lambda change: change is not None and change.owner == "gw-a", WATCH_DELIVERY_S)
        assert changed[-1].token == moved, "the watch streams again"
    finally:
        watching.halt()


def test_watch_reports_a_frozen_witness(own_etcd, make_witness):
    """A stopped etcd closes no connection, like one behind a partition: only
    the watch's probe of a silent stream can tell."""
    a = make_witness([own_etcd.endpoint], "gw-a")
    watching = Watching(a)
    try:
        watching.until(lambda change: change is not None, WATCH_DELIVERY_S)
        own_etcd.proc.send_signal(signal.SIGSTOP)
        try:
            watching.until(lambda change: change is None, WATCH_DELIVERY_S)
            with pytest.raises(WitnessError, match="timed out"):
                a.read()
        finally:
            own_etcd.proc.send_signal(signal.SIGCONT)
        assert watching.until(lambda change: True, WATCH_DELIVERY_S)[0] == Ownership(None, 0, a.read().revision, {})
    finally:
        watching.halt()


@pytest.fixture
def silent_endpoint():
    """Accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_a_dead_endpoint_raises_within_a_second(kind, silent_endpoint, make_witness):
    endpoint = silent_endpoint if kind == "silent" else f"http://127.0.0.1:{_free_ports(1)[0]}"
    a = make_witness([endpoint], "gw-a")
    calls = {"read": a.read, "acquire": lambda: a.acquire(0), "hand_over": lambda: a.hand_over("gw-b", 1),
             "publish": lambda: a.publish({}), "keepalive": a.keepalive}
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(WitnessError, match=endpoint):
            call()
        assert time.monotonic() - started < DEAD_CALL_S, name


def test_endpoints_are_tried_in_turn(etcd, silent_endpoint, make_witness):
    a = make_witness([silent_endpoint, etcd.endpoint], "gw-a")
    token = a.acquire(0)
    assert token is not None
    started = time.monotonic()
    assert a.read().owner == "gw-a"
    # Asking the silent one first would have waited out its whole timeout.
    assert time.monotonic() - started < a.timeout_s, "the endpoint that answered is asked first"


def test_watch_reports_an_unreachable_witness_at_start(silent_endpoint, make_witness):
    watching = Watching(make_witness([silent_endpoint], "gw-a"))
    try:
        assert watching.until(lambda change: True, WATCH_DELIVERY_S) == [None]
    finally:
        watching.halt()


@pytest.mark.parametrize("key, value", [
    ("owner", b"not json"),
    ("owner", b'{"node": 7}'),
    ("owner", b'["gw-a"]'),
    ("owner", b"\xff\xfe"),
    ("state/gw-b", b'"active"'),
    ("state/gw-b", b"{"),
])
def test_a_malformed_value_is_a_witness_error(etcd, make_witness, prefix, key, value):
    a = make_witness([etcd.endpoint], "gw-a")
    etcd.put(f"{prefix}/{key}", value)
    with pytest.raises(WitnessError, match=f"{etcd.endpoint}: kv/range: {prefix}/{key}"):
        a.read()
