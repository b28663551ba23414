"""The HA pair's witness: etcd records which gateway owns the service, hands
out fencing tokens and holds each gateway's published state.

etcd arbitrates split brain; it never detects failure: the pair detects a
dead peer in the data path, in milliseconds. A takeover consults the witness
once, a compare-and-swap on the owner key, so that two gateways that each
believe the other dead cannot both take over. The owner key's mod_revision is
the fencing token: every change of ownership raises it, so a deposed owner's
token is always smaller than the current one.

Keys under the pair's prefix:

    {prefix}/owner          {"node": name}, on no lease: ownership outlives a
                            daemon restart (the data path keeps forwarding:
                            fail static)
    {prefix}/state/{node}   the node's published state, on the node's lease: a
                            dead daemon's state goes after lease_s

The client speaks etcd's gRPC gateway (JSON over HTTP, /v3/) with http.client
and one kept-alive connection per endpoint, so a takeover's CAS is one round
trip with no connection setup. Not etcd3gw, the OpenStack client of the same
API: its watch never reports a broken stream (with etcd killed, its iterator
blocks forever), opens without a timeout and knows one endpoint, and
requests costs it ~2 ms a call.
"""
from __future__ import annotations

import base64
import http.client
import json
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

API = "/v3"
DEFAULT_PORT = 2379
# Between attempts to reach a witness that went away.
RETRY_S = 0.15
# A partitioned etcd closes no stream: after this long without a message,
# the watch asks the stream's endpoint whether it still answers.
PROBE_S = 0.5
# gRPC NOT_FOUND: in etcd's KV and lease API only a lease is ever not found.
GRPC_NOT_FOUND = 5


class WitnessError(Exception):
    """The witness could not be reached or answered nonsense (the message
    says which endpoint, what)."""


class _LeaseNotFound(WitnessError):
    """The lease expired: an answer, the same from every member."""


@dataclass(frozen=True)
class Ownership:
    owner: str | None  # node name in the owner key, None if the key is absent
    token: int  # the owner key's mod_revision: the fencing token (0 if absent)
    revision: int  # the store's revision at the read
    states: dict[str, dict]  # each node's published state, by node name


def _address(endpoint: str) -> tuple[str, int]:
    url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if url.scheme != "http" or not url.hostname:
        raise ValueError(f"witness endpoint {endpoint!r}: expected http://host:port")
    return url.hostname, url.port or DEFAULT_PORT


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _prefix_end(prefix: str) -> str:
    """The range end covering every key that starts with prefix, base64."""
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode()


def _readable(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _int(obj: object, field: str, where: str) -> int:
    """An int64 field as the gateway writes it: a decimal string, absent when 0."""
    if not isinstance(obj, dict):
        raise WitnessError(f"{where}: expected an object holding {field}, got {obj!r:.100}")
    value = obj.get(field, 0)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise WitnessError(f"{where}: {field} is {value!r:.100}, not an integer") from None


def _json_value(kv: dict, key: str, where: str) -> object:
    try:
        return json.loads(base64.b64decode(kv.get("value", ""), validate=True))
    except (TypeError, ValueError):  # bad base64, bad UTF-8 and bad JSON are all ValueErrors
        raise WitnessError(f"{where}: {key} does not hold JSON: {kv.get('value')!r:.100}") from None


class _Gateway:
    """Unary JSON calls to etcd's gRPC gateway: one kept-alive connection per
    endpoint, endpoints tried in turn from the last one that answered."""

    def __init__(self, endpoints: list[str], timeout_s: float):
        if not endpoints:
            raise ValueError("the witness needs at least one endpoint")
        self.endpoints = list(endpoints)
        self._conns = {e: http.client.HTTPConnection(*_address(e), timeout=timeout_s) for e in self.endpoints}
        self._preferred = 0
        # http.client connections are not thread-safe.
        self._lock = threading.Lock()

    def in_turn(self) -> list[str]:
        return self.endpoints[self._preferred:] + self.endpoints[:self._preferred]

    def call(self, method: str, request: dict, only: str | None = None) -> tuple[str, dict]:
        """(the endpoint that answered, its reply). A call that timed out may
        still be applied; the next endpoint then sees its effect."""
        body = json.dumps(request).encode()
        failures = []
        with self._lock:
            for endpoint in [only] if only else self.in_turn():
                try:
                    reply = self._post(endpoint, method, body)
                except _LeaseNotFound:
                    raise
                except WitnessError as e:
                    failures.append(str(e))
                    continue
                self._preferred = self.endpoints.index(endpoint)
                return endpoint, reply
        raise WitnessError("; ".join(failures))

    def _post(self, endpoint: str, method: str, body: bytes) -> dict:
        conn = self._conns[endpoint]
        # An idle kept-alive connection turns readable only when the server
        # closed it (etcd restarted): reconnect rather than fail on it.
        if conn.sock is not None and _readable(conn.sock):
            conn.close()
        where = f"{endpoint}: {method}"
        try:
            conn.request("POST", f"{API}/{method}", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise WitnessError(f"{where}: {e or type(e).__name__}") from None
        try:
            reply = json.loads(data)
        except ValueError:
            raise WitnessError(f"{where}: HTTP {response.status}, not JSON: {data[:100]!r}") from None
        if not isinstance(reply, dict):
            raise WitnessError(f"{where}: HTTP {response.status}, not a JSON object: {data[:100]!r}")
        if response.status != 200:
            error = _LeaseNotFound if reply.get("code") == GRPC_NOT_FOUND else WitnessError
            raise error(f"{where}: HTTP {response.status}: {reply.get('message') or data[:100]!r}")
        return reply

    def close(self) -> None:
        with self._lock:
            for conn in self._conns.values():
                conn.close()


class _WatchStream:
    """One watch stream on a socket of its own. It is requested over HTTP/1.0,
    so the gateway sends it unchunked: a JSON message a line, until it closes."""

    def __init__(self, endpoint: str, create_request: dict, timeout_s: float):
        self.endpoint = endpoint
        self._pending = b""
        body = json.dumps({"create_request": create_request}).encode()
        head = (f"POST {API}/watch HTTP/1.0\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        try:
            self._sock = socket.create_connection(_address(endpoint), timeout=timeout_s)
        except OSError as e:
            raise WitnessError(f"{endpoint}: watch: {e or type(e).__name__}") from None
        try:
            self._sock.sendall(head + body)
            status = self._take(b"\r\n\r\n").split(b"\r\n", 1)[0]
            if status.split(b" ")[1:2] != [b"200"]:
                raise WitnessError(f"{endpoint}: watch: {status[:100]!r}")
            self._sock.settimeout(PROBE_S)
        except BaseException:
            self._sock.close()
            raise

    def _recv(self) -> bytes:
        try:
            data = self._sock.recv(65536)
        except TimeoutError:
            raise  # silence, not failure: the caller tells which it is
        except OSError as e:
            raise WitnessError(f"{self.endpoint}: watch: {e or type(e).__name__}") from None
        if not data:
            raise WitnessError(f"{self.endpoint}: watch: the stream was closed")
        return data

    def _take(self, separator: bytes) -> bytes:
        while separator not in self._pending:
            try:
                self._pending += self._recv()
            except TimeoutError:
                raise WitnessError(f"{self.endpoint}: watch: no answer") from None
        taken, self._pending = self._pending.split(separator, 1)
        return taken

    def receive(self) -> list[dict] | None:
        """The watch responses that arrived next; None after PROBE_S of silence."""
        if b"\n" not in self._pending:
            try:
                self._pending += self._recv()
            except TimeoutError:
                return None
        *lines, self._pending = self._pending.split(b"\n")
        return [self._result(line) for line in lines if line.strip()]

    def _result(self, line: bytes) -> dict:
        try:
            result = json.loads(line)["result"]
        except (ValueError, KeyError, TypeError):
            raise WitnessError(f"{self.endpoint}: watch: not a watch response: {line[:100]!r}") from None
        if not isinstance(result, dict):
            raise WitnessError(f"{self.endpoint}: watch: not a watch response: {line[:100]!r}")
        if result.get("canceled"):  # e.g. its start revision was compacted
            raise WitnessError(f"{self.endpoint}: watch canceled: {line[:200]!r}")
        return result

    def close(self) -> None:
        self._sock.close()


class Witness:
    """This node's client of the pair's witness. Every call answers within
    about timeout_s per endpoint or raises WitnessError."""

    def __init__(self, endpoints: list[str], prefix: str, node: str, lease_s: int, timeout_s: float = 0.25):
        self.node = node
        self.lease_s = lease_s
        self.timeout_s = timeout_s
        self._prefix = prefix.rstrip("/") + "/"
        self._owner_key = f"{self._prefix}owner"
        self._state_prefix = f"{self._prefix}state/"
        self._rpc = _Gateway(endpoints, timeout_s)
        self._lease: int | None = None
        self._published: str | None = None  # the last state, put again on a new lease
        self._lease_lock = threading.Lock()

    def read(self) -> Ownership:
        return self._read(self._rpc)

    def acquire(self, expected_token: int) -> int | None:
        """Takes ownership if the owner key is still as at expected_token (0:
        absent). The new token, or None if ownership moved first (after a
        WitnessError that may have been this node's own attempt: read())."""
        return self._swap(expected_token, self._owner_put(self.node))

    def hand_over(self, to: str, expected_token: int) -> int | None:
        return self._swap(expected_token, self._owner_put(to))

    def publish(self, state: dict) -> None:
        value = json.dumps(state)
        with self._lease_lock:
            self._published = value
            if self._lease is None:
                self._grant()
            try:
                self._put_state(value)
            except _LeaseNotFound:
                self._grant()
                self._put_state(value)

    def keepalive(self) -> int:
        """Refreshes the lease; the TTL left. An expired lease is granted anew
        and the last published state put on it again."""
        with self._lease_lock:
            if self._lease is not None:
                endpoint, reply = self._rpc.call("lease/keepalive", {"ID": str(self._lease)})
                ttl = _int(reply.get("result"), "TTL", f"{endpoint}: lease/keepalive")
                if ttl > 0:
                    return ttl  # 0: expired
            ttl = self._grant()
            if self._published is not None:
                self._put_state(self._published)
            return ttl

    def watch(self, on_change: Callable[[Ownership | None], None], stop: threading.Event) -> None:
        """A thread's loop until stop is set (seen within PROBE_S): calls
        on_change with a fresh Ownership on start and after every batch of
        changes under the prefix; with None, once, when the witness becomes
        unreachable; with a fresh Ownership when it is back."""
        # Connections of its own: a takeover's CAS never waits behind the watch.
        reader = _Gateway(self._rpc.endpoints, self.timeout_s)
        lost = False
        try:
            while not stop.is_set():
                try:
                    current = self._read(reader)
                except WitnessError:
                    if not lost:
                        lost = True
                        on_change(None)
                    stop.wait(RETRY_S)
                    continue
                lost = False
                on_change(current)
                started = time.monotonic()
                try:
                    self._follow(reader, current.revision + 1, on_change, stop)
                except WitnessError:
                    # Read again at once, so a dead witness is reported now;
                    # but a stream that breaks as it opens must not spin.
                    if time.monotonic() - started < RETRY_S:
                        stop.wait(RETRY_S)
        finally:
            reader.close()

    def close(self) -> None:
        # The lease is left to expire, not revoked: a restarting daemon's
        # peer should not see its state vanish.
        self._rpc.close()

    def _read(self, gateway: _Gateway) -> Ownership:
        endpoint, reply = gateway.call("kv/range", {"key": _b64(self._prefix), "range_end": _prefix_end(self._prefix)})
        where = f"{endpoint}: kv/range"
        owner, token, states = None, 0, {}
        kvs = reply.get("kvs", [])
        if not isinstance(kvs, list):
            raise WitnessError(f"{where}: kvs is {kvs!r:.100}")
        for kv in kvs:
            try:
                key = base64.b64decode(kv["key"], validate=True).decode()
            except (TypeError, KeyError, ValueError):
                raise WitnessError(f"{where}: not a key-value: {kv!r:.100}") from None
            value = _json_value(kv, key, where)
            if key == self._owner_key:
                owner = value.get("node") if isinstance(value, dict) else None
                if not isinstance(owner, str):
                    raise WitnessError(f'{where}: {key} holds {value!r:.100}, not {{"node": name}}')
                token = _int(kv, "mod_revision", where)
            elif key.startswith(self._state_prefix):
                if not isinstance(value, dict):
                    raise WitnessError(f"{where}: {key} holds {value!r:.100}, not a JSON object")
                states[key.removeprefix(self._state_prefix)] = value
        return Ownership(owner, token, _int(reply.get("header"), "revision", where), states)

    def _owner_put(self, node: str) -> dict:
        return {"request_put": {"key": _b64(self._owner_key), "value": _b64(json.dumps({"node": node}))}}

    def _swap(self, expected_token: int, operation: dict) -> int | None:
        """One txn: operation if the owner key is as at expected_token (0:
        absent); the store's new revision (the owner key's new mod_revision),
        None if the compare failed."""
        held = ({"target": "CREATE", "create_revision": 0} if expected_token == 0
                else {"target": "MOD", "mod_revision": expected_token})
        compare = {"key": _b64(self._owner_key), "result": "EQUAL", **held}
        endpoint, reply = self._rpc.call("kv/txn", {"compare": [compare], "success": [operation]})
        succeeded = reply.get("succeeded", False)  # absent when false
        if not isinstance(succeeded, bool):
            raise WitnessError(f"{endpoint}: kv/txn: succeeded is {succeeded!r:.100}")
        return _int(reply.get("header"), "revision", f"{endpoint}: kv/txn") if succeeded else None

    def _grant(self) -> int:
        endpoint, reply = self._rpc.call("lease/grant", {"TTL": self.lease_s})
        where = f"{endpoint}: lease/grant"
        lease, ttl = _int(reply, "ID", where), _int(reply, "TTL", where)
        if reply.get("error") or not lease or ttl <= 0:
            raise WitnessError(f"{where}: no lease granted: {reply!r:.200}")
        self._lease = lease
        return ttl

    def _put_state(self, value: str) -> None:
        self._rpc.call("kv/put", {"key": _b64(f"{self._state_prefix}{self.node}"), "value": _b64(value),
                                  "lease": str(self._lease)})

    def _follow(self, gateway: _Gateway, start_revision: int, on_change: Callable[[Ownership | None], None],
                stop: threading.Event) -> None:
        """Streams the changes under the prefix from start_revision, calling
        on_change(a fresh read) after each batch; returns when stop is set,
        raises WitnessError when the stream breaks or its endpoint goes silent."""
        create = {"key": _b64(self._prefix), "range_end": _prefix_end(self._prefix), "start_revision": start_revision}
        failures = []
        for endpoint in gateway.in_turn():
            try:
                stream = _WatchStream(endpoint, create, self.timeout_s)
                break
            except WitnessError as e:
                failures.append(str(e))
        else:
            raise WitnessError("; ".join(failures))
        probe = {"key": _b64(self._owner_key), "count_only": True}
        try:
            while not stop.is_set():
                results = stream.receive()
                if results is None:
                    gateway.call("kv/range", probe, only=stream.endpoint)
                elif any(result.get("events") for result in results):
                    on_change(self._read(gateway))
        finally:
            stream.close()
