"""An exception in one of the daemon's event handlers is logged loudly and
the daemon goes on (BCC would swallow it; a dead netlink thread would stop
carrier updates)."""
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
