"""An exception in one of the daemon's event handlers is logged loudly and
the daemon goes on (BCC would swallow it; a dead netlink thread would stop
carrier updates)."""
from types import SimpleNamespace

from appliance.core import config
from appliance.daemon import Daemon
from lab.topology import render_config


class ListLog:
    def __init__(self):
        self.events = []

    def emit(self, event, **fields):
        self.events.append((event, fields))


def test_a_failing_handler_is_logged_as_an_error_and_counted():
    log = ListLog()
    daemon = Daemon(config.parse(render_config(), "lab"), log)

    def broken(ev):
        raise TypeError(f"cannot handle {ev}")

    guarded = daemon._guarded("reflex", broken)
    guarded("ev1")
    guarded("ev2")
    assert log.events == [("error", {"where": "reflex", "error": "TypeError: cannot handle ev1", "errors": 1}),
                          ("error", {"where": "reflex", "error": "TypeError: cannot handle ev2", "errors": 2})]


def test_a_working_handler_gets_its_arguments_and_logs_nothing():
    log = ListLog()
    seen = []
    Daemon(config.parse(render_config(), "lab"), log)._guarded("netlink", lambda *a: seen.append(a))(1, "x")
    assert seen == [(1, "x")] and log.events == []


class DyingSender:
    """A probe sender whose every child has exited with SIGKILL's status."""
    def __init__(self):
        self.pid = 100
        self.stats = SimpleNamespace(last_seq=41)

    def exit_status(self):
        return -9


def test_a_sender_that_keeps_dying_is_restarted_once_a_second_and_each_exit_logged_once(monkeypatch):
    import appliance.daemon as daemon_module
    clock = [1000.0]
    monkeypatch.setattr(daemon_module.time, "monotonic", lambda: clock[0])
    log = ListLog()
    daemon = Daemon(config.parse(render_config(), "lab"), log)
    starts = []

    def start(sender, previous):
        starts.append(sender.pid)
        sender.pid += 1
    daemon._start_sender = start
    sender = DyingSender()
    for _ in range(3):              # three ticks at one instant: one restart
        daemon._keep_sender(sender)
    clock[0] += 0.5
    daemon._keep_sender(sender)     # the new one died too: logged, not restarted yet
    clock[0] += 0.6
    daemon._keep_sender(sender)
    assert starts == [100, 101] and daemon.sender_restarts == 2
    assert log.events[1] == ("sender-restarted", {"previous_pid": 100, "status": -9, "pid": 101, "first_seq": 42,
                                                  "restarts": 1})
    assert [(e, f.get("pid"), f.get("where")) for e, f in log.events] == [
        ("error", None, "sender"), ("sender-restarted", 101, None), ("error", None, "sender"),
        ("sender-restarted", 102, None)]
