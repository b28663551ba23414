import argparse
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from types import SimpleNamespace

import pytest

from appliance import ctl, statusview
from appliance.edge import control, gatelock
from appliance.edge.control import ControlError, ControlServer, ControlSocketBusy, EventHub, Peer

STATUS = {"daemon": {"pid": 42, "uptime_s": 3.5, "config": "/etc/twinpath/gw.toml", "interval_us": 1000,
                     "multiplier": 3, "pin_dir": "/sys/fs/bpf/twinpath"},
          "links": {"A": {"state": "up", "rtt_p50_us": 41.0, "rtt_p99_us": 88.0, "rtt_max_us": 310.0, "loss": 0.0,
                          "heartbeat_age_ms": 0.4, "carrier": True, "drained": False, "reasons": []}},
          "classes": {"orders": {"link": "A", "policy": "active-backup", "preferred": "A", "forced": None,
                                 "failovers": 0, "last_cause": None, "last_failover_age_s": None, "packets": 10,
                                 "bytes": 640}},
          "feeds": {}}


class FakeDaemon:
    """Does what it is told, except link Z (refused) and a reload while
    `broken` (raises)."""

    def __init__(self):
        self.calls = []
        self.broken = False

    def status(self):
        if self.broken:
            raise RuntimeError("maps unreadable")
        return STATUS

    def command(self, cmd, args, peer):
        self.calls.append((cmd, args, peer))
        if self.broken:
            raise RuntimeError("config file vanished")
        if args.get("link") == "Z":
            return {"ok": False, "error": "unknown link Z"}
        return {"message": f"{cmd} done"}


def line(n: int, pad: int = 0) -> str:
    return json.dumps({"event": "test", "n": n, "pad": "x" * pad})


@pytest.fixture
def gw(tmp_path):
    log = []
    hub = EventHub()
    daemon = FakeDaemon()
    with ControlServer(str(tmp_path / "run" / "c.sock"), daemon, hub,
                       lambda event, **fields: log.append((event, fields))) as srv:
        yield SimpleNamespace(srv=srv, path=srv.path, log=log, hub=hub, daemon=daemon)


def raw(path: str, data: bytes) -> dict:
    """The answer to bytes sent as they are."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered before reading it all
        return json.loads(s.makefile("rb").readline())


def audited(log):
    return [fields for event, fields in log if event == "control"]


# -- the protocol ----------------------------------------------------------------
def test_status_and_every_command_round_trip(gw):
    assert control.request(gw.path, "status") == {"ok": True, "status": STATUS}
    me = Peer(os.getpid(), os.getuid(), os.getgid())
    for cmd, args in [("force", {"class": "orders", "link": "B"}), ("release", {"class": "orders"}),
                      ("drain", {"link": "A"}), ("undrain", {"link": "A"}), ("reload", {})]:
        assert control.request(gw.path, cmd, **args) == {"ok": True, "message": f"{cmd} done"}
        assert gw.daemon.calls[-1] == (cmd, args, me)


def test_state_changes_are_logged_with_the_peer_refused_ones_too(gw):
    control.request(gw.path, "status")
    control.request(gw.path, "drain", link="A")
    assert control.request(gw.path, "drain", link="Z") == {"ok": False, "error": "unknown link Z"}
    assert not control.request(gw.path, "force", **{"class": "orders"})["ok"]   # refused before the daemon
    assert [(a["cmd"], a["args"], a["result"]["ok"], a["peer_uid"], a["peer_pid"]) for a in audited(gw.log)] == [
        ("drain", {"link": "A"}, True, os.getuid(), os.getpid()),
        ("drain", {"link": "Z"}, False, os.getuid(), os.getpid()),
        ("force", {"class": "orders"}, False, os.getuid(), os.getpid())]
    assert audited(gw.log)[2]["result"]["error"] == "force takes class, link; missing link"
    assert [c[0] for c in gw.daemon.calls] == ["drain", "drain"]


@pytest.mark.parametrize("request_bytes, error", [
    (b"status\n", "request is not JSON"),
    (b"\xff\xfe\n", "request is not JSON"),
    (b"\n", "request is not JSON"),
    (b"[1, 2]\n", "request must be a JSON object"),
    (b'{"link": "A"}\n', 'request has no "cmd"; commands: drain, events, force, force-active, force-standby, release, reload, status, undrain'),
    (b'{"cmd": "explode"}\n', 'unknown command "explode"'),
    (b'{"cmd": 7}\n', "unknown command 7"),
    (b'{"cmd": "force", "class": "orders"}\n', "force takes class, link; missing link"),
    (b'{"cmd": "drain", "link": "A", "now": true}\n', "drain takes link; unexpected now"),
    (b'{"cmd": "status", "verbose": 1}\n', "status takes no arguments; unexpected verbose"),
    (b'{"cmd": "force", "class": 1, "link": "B"}\n', "force: class must be a string, got 1"),
    (b'{"cmd": "events", "backlog": true}\n', "events: backlog must be an integer, got true"),
    (b'{"cmd": "events", "follow": "yes"}\n', 'events: follow must be true or false, got "yes"'),
    (b'{"cmd": "events", "backlog": -1}\n', "events: backlog must be 0 or more, got -1"),
    (b"x" * (control.MAX_REQUEST_BYTES + 10) + b"\n", f"request longer than {control.MAX_REQUEST_BYTES} bytes"),
])
def test_a_bad_request_is_answered_and_the_next_client_served(gw, request_bytes, error):
    reply = raw(gw.path, request_bytes)
    assert reply["ok"] is False and error in reply["error"]
    assert control.request(gw.path, "status")["ok"]
    assert not gw.daemon.calls


def test_a_request_without_newline_before_hanging_up_is_taken(gw):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(gw.path)
        s.sendall(b'{"cmd": "status"}')
        s.shutdown(socket.SHUT_WR)
        assert json.loads(s.makefile("rb").readline())["status"] == STATUS


def test_events_arguments_default(gw):
    assert control.parse_request(b'{"cmd": "events"}') == ("events", {"backlog": 0, "follow": True})
    assert control.parse_request(b'{"cmd": "events", "follow": false}') == ("events", {"backlog": 0, "follow": False})


def test_a_request_too_slow_to_arrive_is_answered(tmp_path):
    with ControlServer(str(tmp_path / "c.sock"), FakeDaemon(), EventHub(), lambda *a, **k: None,
                       request_timeout_s=0.3) as srv:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(srv.path)
            s.sendall(b'{"cmd": "sta')
            reply = json.loads(s.makefile("rb").readline())
        assert reply == {"ok": False, "error": "no complete request line within 0.3 s"}
        assert control.request(srv.path, "status")["ok"]


def test_an_exception_in_the_daemon_is_a_refusal_and_logged(gw):
    gw.daemon.broken = True
    assert control.request(gw.path, "reload") == {
        "ok": False, "error": "reload failed inside the daemon: RuntimeError: config file vanished"}
    assert audited(gw.log)[-1]["result"]["ok"] is False
    assert control.request(gw.path, "status") == {
        "ok": False, "error": "the daemon failed to report its status: RuntimeError: maps unreadable"}
    assert ("error", {"where": "control", "error": "RuntimeError: maps unreadable"}) in gw.log
    gw.daemon.broken = False
    assert control.request(gw.path, "status")["ok"]


def test_connections_are_bounded(tmp_path):
    with ControlServer(str(tmp_path / "c.sock"), FakeDaemon(), EventHub(), lambda *a, **k: None,
                       max_clients=2) as srv:
        followers = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
        for f in followers:
            f.settimeout(5)
            f.connect(srv.path)
            f.sendall(b'{"cmd": "events"}\n')
            assert json.loads(f.makefile("rb").readline()) == {"ok": True}
        busy = raw(srv.path, b'{"cmd": "status"}\n')
        assert busy["ok"] is False and busy["error"].startswith("busy: 2 control connections are open")
        followers.pop().close()
        deadline = time.monotonic() + 5
        while not (reply := raw(srv.path, b'{"cmd": "status"}\n'))["ok"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reply["ok"], "a follower that hung up frees its connection"
        followers[0].close()


# -- the socket file ---------------------------------------------------------------
def test_socket_is_private_in_a_private_new_directory(gw, tmp_path):
    assert os.stat(gw.path).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "run").st_mode & 0o777 == 0o700
    assert ("control-listening", {"path": gw.path, "replaced_stale": False}) in gw.log


def test_default_path_is_per_network_namespace(monkeypatch):
    ino = os.stat("/proc/self/ns/net").st_ino
    assert control.default_socket_path() == f"/run/twinpath/control-{ino}.sock"
    assert control.socket_path(None) == control.default_socket_path()
    assert control.socket_path("/srv/gw1.sock") == "/srv/gw1.sock"
    monkeypatch.setattr(gatelock, "netns_inode", lambda: 7)
    assert control.default_socket_path() == "/run/twinpath/control-7.sock"


def test_stale_socket_is_replaced(tmp_path):
    path = str(tmp_path / "c.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)   # bound, never listening: what a SIGKILLed daemon leaves
    with pytest.raises(ControlError, match="left over from a twinpath daemon that is no longer running"):
        control.request(path, "status")
    log = []
    with ControlServer(path, FakeDaemon(), EventHub(), lambda event, **f: log.append((event, f))):
        assert control.request(path, "status")["ok"]
    assert ("control-listening", {"path": path, "replaced_stale": True}) in log


def test_a_live_socket_is_not_taken_over(gw):
    with pytest.raises(ControlSocketBusy, match=f"pid {os.getpid()} already serves the control socket {gw.path}"):
        ControlServer(gw.path, FakeDaemon(), EventHub(), lambda *a, **k: None).start()
    assert control.request(gw.path, "status")["ok"], "the refused start changed nothing"


def test_something_else_at_the_path_is_not_removed(tmp_path):
    path = tmp_path / "c.sock"
    path.write_text("precious")
    with pytest.raises(ControlError, match="exists and is not a socket"):
        ControlServer(str(path), FakeDaemon(), EventHub(), lambda *a, **k: None).start()
    assert path.read_text() == "precious"


def test_stop_unlinks_only_its_own_socket(tmp_path):
    path = tmp_path / "c.sock"
    with ControlServer(str(path), FakeDaemon(), EventHub(), lambda *a, **k: None):
        assert path.exists()
    assert not path.exists()
    with pytest.raises(ControlError, match=f"no twinpath daemon is listening at {path} .*ip netns exec NS"):
        control.request(str(path), "status")

    with ControlServer(str(path), FakeDaemon(), EventHub(), lambda *a, **k: None):
        path.unlink()
        path.write_text("a successor's")
    assert path.read_text() == "a successor's"


# -- who may talk to it --------------------------------------------------------------
def test_only_root_and_the_daemons_own_user_are_served():
    assert control.allowed(Peer(1, 0, 0), server_euid=0)
    assert not control.allowed(Peer(1, 65534, 65534), server_euid=0)
    assert control.allowed(Peer(1, 1000, 1000), server_euid=1000)
    assert control.allowed(Peer(1, 0, 0), server_euid=1000)
    assert not control.allowed(Peer(1, 1001, 1000), server_euid=1000)


def as_nobody(fn) -> str:
    """What fn returns, run in a child that has become uid 65534."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            out = fn()
        except BaseException as e:
            out = f"child failed: {e!r}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="becoming another user needs root")
def test_another_user_is_refused():
    top = tempfile.mkdtemp(prefix="twinpath-ctl-")
    try:
        os.chmod(top, 0o711)   # others may reach the socket; its own mode and SO_PEERCRED decide
        path = os.path.join(top, "c.sock")
        daemon = FakeDaemon()
        log = []
        with ControlServer(path, daemon, EventHub(), lambda event, **f: log.append((event, f))):
            def attempt() -> str:
                try:
                    return json.dumps(control.request(path, "drain", link="A"))
                except ControlError as e:
                    return str(e)
            assert as_nobody(attempt) == (f"permission denied opening {path}: the control socket is root's; "
                                          f"run twinpath as root")
            os.chmod(path, 0o666)   # past the file mode, the peer check still refuses
            assert json.loads(as_nobody(attempt)) == {"ok": False,
                                                      "error": "permission denied: uid 65534 is not root"}
            assert control.request(path, "status")["ok"], "and serves root after"
        assert not daemon.calls and not audited(log)
    finally:
        shutil.rmtree(top)


# -- events -----------------------------------------------------------------------
def test_follow_gets_the_backlog_then_new_lines_in_order(gw):
    for n in range(5):
        gw.hub.publish(line(n))
    stream = control.events(gw.path, backlog=3)
    assert [next(stream)["n"] for _ in range(3)] == [2, 3, 4]
    for n in range(5, 10):
        gw.hub.publish(line(n))
    assert [next(stream)["n"] for _ in range(5)] == [5, 6, 7, 8, 9]
    stream.close()


def test_events_without_follow_is_the_backlog(gw):
    assert list(control.events(gw.path, backlog=2, follow=False)) == []
    for n in range(5):
        gw.hub.publish(line(n))
    assert [e["n"] for e in control.events(gw.path, backlog=2, follow=False)] == [3, 4]
    assert len(list(control.events(gw.path, backlog=100, follow=False))) == 5


def test_stopping_ends_a_follow(tmp_path):
    srv = ControlServer(str(tmp_path / "c.sock"), FakeDaemon(), EventHub(), lambda *a, **k: None).start()
    srv.hub.publish(line(0))
    stream = control.events(srv.path, backlog=1)
    assert next(stream)["n"] == 0
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 2
    with pytest.raises(ControlError, match="ended the event stream"):
        next(stream)


def test_a_slow_follower_loses_counted_lines_not_the_publishers_time():
    hub = EventHub(backlog_lines=5, queue_lines=10)
    with hub.subscribe() as sub:
        for n in range(25):
            hub.publish(line(n))
        lines = [json.loads(s) for s in sub.take(0)]
        assert [e["n"] for e in lines[:10]] == list(range(10))
        assert lines[10] == {"event": "events-dropped", "count": 15}
        hub.publish(line(25))
        assert [json.loads(s)["n"] for s in sub.take(0)] == [25]
        assert sub.take(0.01) == []
    hub.publish(line(26))   # unsubscribed: only the backlog keeps it
    assert [json.loads(s)["n"] for s in hub.recent(10)] == [22, 23, 24, 25, 26]


def test_a_follower_that_stops_reading_does_not_block_publish(tmp_path):
    hub = EventHub(queue_lines=50)
    with ControlServer(str(tmp_path / "c.sock"), FakeDaemon(), hub, lambda *a, **k: None) as srv:
        hub.publish(line(0))
        stream = control.events(srv.path, backlog=1)
        assert next(stream)["n"] == 0   # following from here on
        total = 3000
        t0 = time.monotonic()
        for n in range(1, total):
            hub.publish(line(n, pad=1000))   # megabytes: far more than the socket buffers hold
        assert time.monotonic() - t0 < 1.0
        seen, dropped, last = 1, 0, 0
        while seen + dropped < total:
            event = next(stream)
            if event["event"] == "events-dropped":
                dropped += event["count"]
            else:
                assert event["n"] > last
                seen, last = seen + 1, event["n"]
        assert dropped > 0
        stream.close()


def test_the_log_handler_publishes_what_the_log_formats():
    hub = EventHub()
    logger = logging.getLogger("twinpath-test-control")
    logger.propagate = False
    handler = hub.handler(logging.Formatter('{"event": "%(message)s"}'))
    logger.addHandler(handler)
    try:
        logger.warning("attached")
    finally:
        logger.removeHandler(handler)
    assert hub.recent(1) == ['{"event": "attached"}']


# -- the CLI ------------------------------------------------------------------------
def run_ctl(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="twinpath")
    ctl.add_commands(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_ctl_status(gw, capsys):
    assert run_ctl(["status", "--socket", gw.path]) == 0
    assert capsys.readouterr().out == statusview.render(STATUS) + "\n"
    assert run_ctl(["status", "--json", "--socket", gw.path]) == 0
    assert json.loads(capsys.readouterr().out) == STATUS


@pytest.mark.parametrize("argv", [["force", "orders", "B"], ["release", "orders"], ["drain", "A"],
                                  ["undrain", "A"], ["reload"]])
def test_ctl_changes(gw, capsys, argv):
    assert run_ctl([*argv, "--socket", gw.path]) == 0
    assert capsys.readouterr().out == f"{argv[0]} done\n"
    assert gw.daemon.calls[-1][0] == argv[0]


def test_ctl_exit_codes(gw, capsys, tmp_path):
    assert run_ctl(["drain", "Z", "--socket", gw.path]) == 1
    assert capsys.readouterr().err == "twinpath drain: refused: unknown link Z\n"
    missing = str(tmp_path / "none.sock")
    assert run_ctl(["status", "--socket", missing]) == 2
    assert f"no twinpath daemon is listening at {missing}" in capsys.readouterr().err
    assert run_ctl(["events", "--socket", missing]) == 2
    assert f"no twinpath daemon is listening at {missing}" in capsys.readouterr().err


def test_ctl_events_prints_the_backlog(gw, capsys):
    for n in range(3):
        gw.hub.publish(line(n))
    assert run_ctl(["events", "--socket", gw.path]) == 0
    assert [json.loads(s)["n"] for s in capsys.readouterr().out.splitlines()] == [0, 1, 2]
    assert run_ctl(["events", "--backlog", "1", "--socket", gw.path]) == 0
    assert [json.loads(s)["n"] for s in capsys.readouterr().out.splitlines()] == [2]


def test_ctl_events_follow_ends_with_the_daemon(tmp_path, capsys):
    srv = ControlServer(str(tmp_path / "c.sock"), FakeDaemon(), EventHub(), lambda *a, **k: None).start()
    srv.hub.publish(line(0))
    result = []
    follower = threading.Thread(target=lambda: result.append(
        run_ctl(["events", "--follow", "--backlog", "1", "--socket", srv.path])))
    follower.start()
    deadline = time.monotonic() + 5
    while '"n": 0' not in capsys.readouterr().out and time.monotonic() < deadline:
        time.sleep(0.05)
    srv.stop()
    follower.join(5)
    assert result == [2]
    assert "ended the event stream (it stopped or restarted)" in capsys.readouterr().err


def test_ctl_help_names_the_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        run_ctl(["force", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "CLASS" in out and "LINK" in out and "--socket PATH" in out
