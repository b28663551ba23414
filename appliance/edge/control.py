"""The operator's control socket: what `twinpath status`, `events`, `force`,
`release`, `drain`, `undrain` and `reload` talk to.

One AF_UNIX stream socket per gateway, like the gateway lock:

    /run/twinpath/control-<inode of the network namespace>.sock

(config `control.socket` overrides), so the CLI run in the daemon's namespace
finds it with no argument. The socket is 0600 and every peer's SO_PEERCRED is
checked: only root (or the daemon's own user) is served.

Protocol: one request per connection, a JSON object on one line,
{"cmd": "force", "class": "orders", "link": "B"} (arguments per COMMANDS).
The answer is one JSON line, {"ok": true, ...} or {"ok": false, "error":
reason}; status answers {"ok": true, "status": {...}}. events answers
{"ok": true} and then writes the daemon's log lines as they happen: the
last `backlog` first, then new ones until the client hangs up (follow) or
just the backlog (follow false).
"""
from __future__ import annotations

import json
import logging
import os
import select
import socket
import stat
import struct
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator, Protocol

from appliance.edge import gatelock

# Arguments of each command and their JSON types: all required, except the
# ones with a default in DEFAULTS.
COMMANDS: dict[str, dict[str, type]] = {
    "status": {}, "reload": {},
    "force": {"class": str, "link": str}, "release": {"class": str},
    "drain": {"link": str}, "undrain": {"link": str}, "force-active": {}, "force-standby": {},
    "events": {"backlog": int, "follow": bool},
}
DEFAULTS: dict[str, dict[str, Any]] = {"events": {"backlog": 0, "follow": True}}
CHANGES_STATE = frozenset({"force", "release", "drain", "undrain", "reload", "force-active", "force-standby"})
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false"}

MAX_REQUEST_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 2.0   # for the request line to arrive
REPLY_TIMEOUT_S = 5.0     # for a client to take its answer
MAX_CLIENTS = 16          # each `events --follow` holds one
FOLLOW_QUEUE_LINES = 10_000
BACKLOG_LINES = 1000
POLL_S = 0.2              # how long stop() may wait for a connection's thread to notice
_UCRED = struct.Struct("iII")  # struct ucred: pid_t, uid_t, gid_t


class ControlError(RuntimeError):
    """The control socket cannot be served or reached; the message says why."""


class ControlRefused(ControlError):
    """The daemon answered, and refused (its reason is the message)."""


class ControlSocketBusy(ControlError):
    """Something already accepts connections at the control socket's path."""

    def __init__(self, path: str, pid: int | None):
        self.path, self.pid = path, pid
        holder = f"pid {pid}" if pid else "a process that does not answer"
        super().__init__(f"{holder} already serves the control socket {path}: another twinpath daemon in this "
                         f"network namespace? Stop it, or give this one another control.socket (nothing was changed)")


class BadRequest(ValueError):
    """A request the server answers with its reason. cmd and arguments are
    what could be read of it, so a refused state change is still logged."""

    def __init__(self, reason: str, cmd: str | None = None, arguments: dict[str, Any] | None = None):
        super().__init__(reason)
        self.cmd, self.arguments = cmd, arguments or {}  # not .args: that is the exception's own


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of a connection (SO_PEERCRED)."""
    pid: int
    uid: int
    gid: int


class Handler(Protocol):
    """What the daemon answers with. Both are called from the control
    socket's connection threads, not the daemon's main thread."""

    def status(self) -> dict[str, Any]:
        """The status document appliance.statusview renders."""

    def command(self, cmd: str, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Do a state-changing command (CHANGES_STATE) with its validated
        args. {"ok": False, "error": reason} refuses; "message", if given, is
        what `twinpath CMD` prints. An exception is answered as a refusal."""


def default_socket_path() -> str:
    return str(gatelock.LOCK_DIR / f"control-{gatelock.netns_inode()}.sock")


def socket_path(cfg_value: str | None) -> str:
    """The socket for config `control.socket` (already checked absolute)."""
    return cfg_value or default_socket_path()


def allowed(peer: Peer, server_euid: int) -> bool:
    return peer.uid == 0 or peer.uid == server_euid


def peer_credentials(sock: socket.socket) -> Peer:
    return Peer(*_UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)))


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """(cmd, args with defaults filled in) of one request line; BadRequest
    with a reason the client can act on otherwise."""
    commands = ", ".join(sorted(COMMANDS))
    try:
        request = json.loads(line)
    except ValueError as e:
        raise BadRequest(f"request is not JSON ({e}); send one line like {{\"cmd\": \"status\"}}") from None
    if not isinstance(request, dict):
        raise BadRequest(f"request must be a JSON object like {{\"cmd\": \"status\"}}, not {type(request).__name__}")
    if "cmd" not in request:
        raise BadRequest(f"request has no \"cmd\"; commands: {commands}")
    cmd = request.pop("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise BadRequest(f"unknown command {json.dumps(cmd)}; commands: {commands}")
    expected, defaults = COMMANDS[cmd], DEFAULTS.get(cmd, {})
    takes = f"{cmd} takes {', '.join(expected) or 'no arguments'}"
    extra = sorted(set(request) - set(expected))
    missing = [name for name in expected if name not in request and name not in defaults]
    if extra or missing:
        problem = f"unexpected {', '.join(extra)}" if extra else f"missing {', '.join(missing)}"
        raise BadRequest(f"{takes}; {problem}", cmd, request)
    for name, value in request.items():
        if type(value) is not expected[name]:
            raise BadRequest(f"{cmd}: {name} must be {_TYPE_NAMES[expected[name]]}, got {json.dumps(value)}",
                             cmd, request)
    if request.get("backlog", 0) < 0:
        raise BadRequest(f"{cmd}: backlog must be 0 or more, got {request['backlog']}", cmd, request)
    return cmd, {**defaults, **request}


def _dropped_line(count: int) -> str:
    return json.dumps({"event": "events-dropped", "count": count})


class Subscription:
    """One follower's queue of log lines. Bounded: a follower that stops
    reading costs at most `limit` lines, then only a count, which it gets as
    an events-dropped line where the gap is."""

    def __init__(self, hub: "EventHub", limit: int):
        self._hub, self._limit = hub, limit
        self._lines: deque[str] = deque()
        self._dropped = 0
        self._ready = threading.Condition(threading.Lock())

    def put(self, line: str) -> None:
        with self._ready:
            if len(self._lines) >= self._limit:
                self._dropped += 1  # only take() makes room, and it reports these first
                return
            self._lines.append(line)
            self._ready.notify()

    def take(self, timeout: float) -> list[str]:
        """Every line queued, waiting up to timeout for one; [] if none came."""
        with self._ready:
            if not self._lines and not self._dropped:
                self._ready.wait(timeout)
            lines = list(self._lines)
            self._lines.clear()
            if self._dropped:  # they came after everything that was queued
                lines.append(_dropped_line(self._dropped))
                self._dropped = 0
            return lines

    def close(self) -> None:
        self._hub.unsubscribe(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EventHub:
    """The daemon's log lines, fanned out to `events` followers. publish()
    is on the daemon's hot path: it never waits for a follower."""

    def __init__(self, backlog_lines: int = BACKLOG_LINES, queue_lines: int = FOLLOW_QUEUE_LINES):
        self._queue_lines = queue_lines
        self._recent: deque[str] = deque(maxlen=backlog_lines)
        self._subscribers: set[Subscription] = set()
        self._lock = threading.Lock()  # one order of lines for the backlog and every follower

    def publish(self, line: str) -> None:
        with self._lock:
            self._recent.append(line)
            for sub in self._subscribers:
                sub.put(line)

    def recent(self, n: int) -> list[str]:
        with self._lock:
            return list(self._recent)[-n:] if n else []

    def subscribe(self, backlog: int = 0) -> Subscription:
        """A queue that starts with the last `backlog` lines and then gets
        every line published, none missed or repeated in between."""
        sub = Subscription(self, self._queue_lines)
        with self._lock:
            for line in list(self._recent)[-backlog:] if backlog else []:
                sub.put(line)
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    def handler(self, formatter: logging.Formatter | None = None) -> logging.Handler:
        """A logging handler that publishes each formatted record, so
        `events` streams exactly what the log has."""
        h = _PublishHandler(self)
        if formatter:
            h.setFormatter(formatter)
        return h


class _PublishHandler(logging.Handler):
    def __init__(self, hub: EventHub):
        super().__init__()
        self._hub = hub

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._hub.publish(self.format(record))
        except Exception:
            self.handleError(record)


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


class ControlServer:
    """The listening socket and its threads: start()/stop() or a `with`
    block. Nothing a client sends ends the server: a bad request gets
    {"ok": false, "error": ...}, a handler's exception an 'error' log line
    and a refusal."""

    def __init__(self, path: str, handler: Handler, hub: EventHub, log_emit: Callable[..., None], *,
                 max_clients: int = MAX_CLIENTS, request_timeout_s: float = REQUEST_TIMEOUT_S):
        self.path = str(path)
        self.handler, self.hub, self.log_emit = handler, hub, log_emit
        self.max_clients, self.request_timeout_s = max_clients, request_timeout_s
        self._euid = os.geteuid()
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(max_clients)
        self._clients: set[threading.Thread] = set()
        self._clients_lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None  # a pipe: stop() wakes the accepting thread at once

    # -- life ------------------------------------------------------------------
    def start(self) -> "ControlServer":
        """ControlSocketBusy if something accepts connections at the path,
        ControlError if it cannot be created; either changes nothing."""
        self._stop.clear()
        replaced_stale = self._clear_stale()
        self._listener = self._bind()
        st = os.lstat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        self._wake = os.pipe()
        self._thread = threading.Thread(target=self._accept_loop, name="control", daemon=True)
        self._thread.start()
        self.log_emit("control-listening", path=self.path, replaced_stale=replaced_stale)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            os.write(self._wake[1], b"x")
            self._thread.join()
            self._thread = None
            for fd in self._wake:
                os.close(fd)
        if self._listener:
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:  # not a successor's socket
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
            self._listener.close()
            self._listener = None
        deadline = time.monotonic() + 1.0  # a handler call in progress is not waited for longer
        with self._clients_lock:
            clients = list(self._clients)
        for t in clients:
            t.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> "ControlServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _clear_stale(self) -> bool:
        """Whether a socket left by a dead daemon was removed."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{self.path} exists and is not a socket; remove it or set control.socket to "
                               f"another path")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(self.path)
            except ConnectionRefusedError:  # its daemon died without unlinking it (SIGKILL)
                os.unlink(self.path)
                return True
            except TimeoutError:  # its listener's queue is full: alive, just not answering
                raise ControlSocketBusy(self.path, None) from None
            except OSError as e:
                raise ControlError(f"cannot tell whether {self.path} is in use: {_reason(e)}") from None
            raise ControlSocketBusy(self.path, peer_credentials(probe).pid)

    def _bind(self) -> socket.socket:
        parent = os.path.dirname(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
            old = os.umask(0o177)  # never a moment when others may connect
            try:
                sock.bind(self.path)
            finally:
                os.umask(old)
            os.chmod(self.path, 0o600)
            sock.listen(self.max_clients)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise ControlError(f"cannot create the control socket {self.path}: {_reason(e)}") from None
        return sock

    # -- the accepting thread ----------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._listener, self._wake[0]], [], [])
                if self._listener in ready and not self._stop.is_set():
                    self._accept()
            except Exception as e:
                self._log_error(e)
                self._stop.wait(POLL_S)  # an error that repeats is logged five times a second, not in a spin

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, ConnectionAbortedError):  # the client gave up before we got to it
            return
        conn.setblocking(False)
        if not self._slots.acquire(blocking=False):
            with conn:
                try:  # a line fits the empty socket buffer: this cannot hold up accepting
                    conn.send(_encode({"ok": False, "error": f"busy: {self.max_clients} control connections are "
                                       f"open (each `twinpath events --follow` holds one); close one and retry"}))
                except OSError:
                    pass
            return
        t = threading.Thread(target=self._serve, args=(conn,), name="control-client", daemon=True)
        with self._clients_lock:
            self._clients.add(t)
        try:
            t.start()
        except BaseException:  # no thread to give the slot and the connection back
            with self._clients_lock:
                self._clients.discard(t)
            self._slots.release()
            conn.close()
            raise

    # -- one connection's thread ---------------------------------------------------
    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._converse(conn)
        except OSError:
            pass  # the client went away: there is no one to answer
        except Exception as e:
            self._log_error(e)
        finally:
            self._slots.release()
            with self._clients_lock:
                self._clients.discard(threading.current_thread())

    def _converse(self, conn: socket.socket) -> None:
        peer = peer_credentials(conn)
        if not allowed(peer, self._euid):
            # Not logged: any local user could otherwise fill the daemon's log.
            self._reply(conn, {"ok": False, "error": f"permission denied: uid {peer.uid} is not root"})
            return
        try:
            line = self._read_request(conn)
            if line is None:
                return  # connected and hung up (another daemon checking whether this socket is alive)
            cmd, args = parse_request(line)
        except BadRequest as e:
            reply = {"ok": False, "error": str(e)}
            if e.cmd in CHANGES_STATE:
                self._audit(peer, e.cmd, e.arguments, reply)
            self._reply(conn, reply)
            return
        if cmd == "events":
            self._events(conn, **args)
        elif cmd == "status":
            self._reply(conn, self._status())
        else:
            self._reply(conn, self._command(cmd, args, peer))

    def _read_request(self, conn: socket.socket) -> bytes | None:
        """The first line the client sends (all it sent, if it hung up
        without a newline); None if it sent nothing."""
        deadline = time.monotonic() + self.request_timeout_s
        buf = bytearray()
        while b"\n" not in buf and len(buf) <= MAX_REQUEST_BYTES:
            left = deadline - time.monotonic()
            if self._stop.is_set():
                raise BadRequest("the daemon is stopping")
            if left <= 0:
                raise BadRequest(f"no complete request line within {self.request_timeout_s:g} s")
            ready, _, _ = select.select([conn], [], [], min(left, POLL_S))
            if ready:
                chunk = conn.recv(MAX_REQUEST_BYTES)
                if not chunk:
                    break
                buf += chunk
        line = bytes(buf.partition(b"\n")[0])
        if len(line) > MAX_REQUEST_BYTES:
            raise BadRequest(f"request longer than {MAX_REQUEST_BYTES} bytes")
        return line if buf else None

    def _status(self) -> dict[str, Any]:
        try:
            return {"ok": True, "status": self.handler.status()}
        except Exception as e:
            self._log_error(e)
            return {"ok": False, "error": f"the daemon failed to report its status: {type(e).__name__}: {e}"}

    def _command(self, cmd: str, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        try:
            reply = {"ok": True, **self.handler.command(cmd, args, peer)}
        except Exception as e:
            reply = {"ok": False, "error": f"{cmd} failed inside the daemon: {type(e).__name__}: {e}"}
        self._audit(peer, cmd, args, reply)
        return reply

    def _audit(self, peer: Peer, cmd: str, args: dict[str, Any], result: dict[str, Any]) -> None:
        self.log_emit("control", peer_uid=peer.uid, peer_pid=peer.pid, cmd=cmd, args=args, result=result)

    def _events(self, conn: socket.socket, backlog: int, follow: bool) -> None:
        if not follow:
            lines = self.hub.recent(backlog)
            self._send_all(conn, _encode({"ok": True}) + _encode_lines(lines), time.monotonic() + REPLY_TIMEOUT_S)
            return
        with self.hub.subscribe(backlog) as sub:
            self._send_all(conn, _encode({"ok": True}), time.monotonic() + REPLY_TIMEOUT_S)
            while not self._stop.is_set():
                lines = sub.take(POLL_S)
                if lines:
                    # No deadline: a follower that stops reading loses lines (counted), not its stream.
                    self._send_all(conn, _encode_lines(lines))
                elif _hung_up(conn):
                    return

    def _reply(self, conn: socket.socket, reply: dict[str, Any]) -> None:
        self._send_all(conn, _encode(reply), time.monotonic() + REPLY_TIMEOUT_S)

    def _send_all(self, conn: socket.socket, data: bytes, deadline: float | None = None) -> None:
        """All of data, or TimeoutError past deadline; on stop, as much as
        went out."""
        view = memoryview(data)
        while view and not self._stop.is_set():
            wait = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError("the client did not read its answer")
            _, writable, _ = select.select([], [conn], [], wait)
            if writable:
                try:
                    view = view[conn.send(view):]
                except BlockingIOError:
                    pass

    def _log_error(self, e: Exception) -> None:
        try:
            self.log_emit("error", where="control", error=f"{type(e).__name__}: {e}")
        except Exception:
            traceback.print_exc()  # the log itself failed: stderr is what is left


def _encode(reply: dict[str, Any]) -> bytes:
    try:
        return (json.dumps(reply) + "\n").encode()
    except (TypeError, ValueError) as e:
        return (json.dumps({"ok": False, "error": f"the daemon's answer is not JSON-serialisable: {e}"})
                + "\n").encode()


def _encode_lines(lines: list[str]) -> bytes:
    return "".join(f"{line}\n" for line in lines).encode()


def _hung_up(conn: socket.socket) -> bool:
    """Whether the client closed its end (anything it sends is ignored)."""
    ready, _, _ = select.select([conn], [], [], 0)
    return bool(ready) and not conn.recv(4096)


# -- the client side (appliance.ctl) ----------------------------------------------
def _connect(path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        if isinstance(e, FileNotFoundError):
            raise ControlError(f"no twinpath daemon is listening at {path} (is it running in this network "
                               f"namespace? `ip netns exec NS twinpath status`)") from None
        if isinstance(e, PermissionError):
            raise ControlError(f"permission denied opening {path}: the control socket is root's; run twinpath "
                               f"as root") from None
        if isinstance(e, ConnectionRefusedError):
            raise ControlError(f"{path} is left over from a twinpath daemon that is no longer running (nothing "
                               f"accepts connections there); the next `twinpath run` replaces it") from None
        if isinstance(e, TimeoutError):
            raise ControlError(f"the daemon at {path} did not take the connection within {timeout:g} s (stuck? "
                               f"see its log)") from None
        raise ControlError(f"cannot connect to the daemon at {path}: {_reason(e)}") from None
    return sock


def _send_request(sock: socket.socket, path: str, request: dict[str, Any]) -> None:
    try:
        sock.sendall((json.dumps(request) + "\n").encode())
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon answered before reading it all; its answer says why
    except TimeoutError:
        raise ControlError(f"the daemon at {path} did not take the request (stuck? see its log)") from None


def _read_line(stream: BinaryIO, path: str, timeout: float) -> dict[str, Any] | None:
    """The next JSON object the daemon sends; None when it closed."""
    try:
        line = stream.readline()
    except TimeoutError:
        raise ControlError(f"the daemon at {path} did not answer within {timeout:g} s (stuck? see its log)") from None
    except OSError as e:
        raise ControlError(f"lost the connection to the daemon at {path}: {_reason(e)}") from None
    if not line:
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        raise ControlError(f"the daemon at {path} sent something that is not a JSON object: {line[:200]!r}")
    return obj


def request(path: str, cmd: str, timeout: float = REPLY_TIMEOUT_S, **args) -> dict[str, Any]:
    """The daemon's answer, ok or not; ControlError if there is none."""
    with _connect(path, timeout) as sock, sock.makefile("rb") as stream:
        _send_request(sock, path, {"cmd": cmd, **args})
        reply = _read_line(stream, path, timeout)
    if reply is None:
        raise ControlError(f"the daemon at {path} closed the connection without answering")
    return reply


def events(path: str, backlog: int = 0, follow: bool = True, timeout: float = REPLY_TIMEOUT_S) -> Iterator[dict]:
    """The daemon's last `backlog` log lines, then (follow) each new one as
    it happens. ControlRefused if the daemon refuses; ControlError if it
    cannot be reached or, when following, ends the stream."""
    with _connect(path, timeout) as sock, sock.makefile("rb") as stream:
        _send_request(sock, path, {"cmd": "events", "backlog": backlog, "follow": follow})
        ack = _read_line(stream, path, timeout)
        if ack is None:
            raise ControlError(f"the daemon at {path} closed the connection without answering")
        if not ack.get("ok"):
            raise ControlRefused(ack.get("error", "no reason given"))
        if follow:
            sock.settimeout(None)  # lines come when things happen
        while (event := _read_line(stream, path, timeout)) is not None:
            yield event
    if follow:
        raise ControlError(f"the daemon at {path} ended the event stream (it stopped or restarted)")
