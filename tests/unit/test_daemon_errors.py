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


def test_a_sender_that_keeps_dying_is_restarted_once_a_second_and_each_exit_logged_once():
    log = ListLog()
    daemon = Daemon(config.parse(render_config(), "lab"), log)
    starts = []

    def start(sender, previous):
        starts.append(sender.pid)
        sender.pid += 1
    daemon._start_sender = start
    sender = DyingSender()
    for _ in range(3):                      # three checks at one instant: one restart
        daemon._keep_sender(sender, 1000.0)
    daemon._keep_sender(sender, 1000.5)     # the new one died too: logged, not restarted yet
    daemon._keep_sender(sender, 1001.1)
    assert starts == [100, 101] and daemon.sender_restarts == 2
    assert log.events[1] == ("sender-restarted", {"previous_pid": 100, "status": -9, "cause": "exited", "pid": 101,
                                                  "first_seq": 42, "restarts": 1})
    assert [(e, f.get("pid"), f.get("where")) for e, f in log.events] == [
        ("error", None, "sender"), ("sender-restarted", 101, None), ("error", None, "sender"),
        ("sender-restarted", 102, None)]


class StuckSender:
    """A probe sender that runs (or is stopped) but whose round stands still
    until kill(); then it has exited with SIGKILL's status."""
    def __init__(self):
        self.pid = 200
        self.stats = SimpleNamespace(last_seq=7)
        self.status = None

    def exit_status(self):
        return self.status

    def state(self):
        return "T"

    def kill(self):
        self.status = -9


def checks(daemon, sender, start_s, every_s, count):
    for i in range(count):
        daemon._keep_sender(sender, start_s + i * every_s)


def test_a_sender_that_sends_nothing_for_a_second_is_killed_once_and_restarted():
    log = ListLog()
    daemon = Daemon(config.parse(render_config(interval_us=1000), "lab"), log)
    starts = []

    def start(sender, previous):
        starts.append(sender.pid)
        sender.pid, sender.status = sender.pid + 1, None
        sender.stats.last_seq += 1
    daemon._start_sender = start
    sender = StuckSender()
    checks(daemon, sender, 1000.0, 0.1, 10)          # 0.9 s standing still: not yet
    assert log.events == [] and sender.status is None
    daemon._keep_sender(sender, 1001.0)              # 1.0 s: killed
    assert sender.status == -9 and starts == []
    [(event, error)] = log.events
    assert event == "error" and error["where"] == "sender" and "pid 200, state T" in error["error"]
    daemon._keep_sender(sender, 1001.1)              # reaped and restarted; its exit is that one error
    assert starts == [200]
    assert [e for e, _ in log.events] == ["error", "sender-restarted"]
    assert log.events[1][1]["cause"] == "stalled" and log.events[1][1]["status"] == -9
    checks(daemon, sender, 1001.2, 0.1, 12)          # the new one advanced once, then stood still: killed again
    assert [e for e, _ in log.events] == ["error", "sender-restarted", "error", "sender-restarted"]
    assert starts == [200, 201]


def test_a_killed_sender_that_does_not_exit_yet_is_killed_and_logged_once():
    """SIGKILL takes effect when a process blocked in the kernel returns."""
    log = ListLog()
    daemon = Daemon(config.parse(render_config(interval_us=1000), "lab"), log)
    sender = StuckSender()
    kills = []
    sender.kill = lambda: kills.append(sender.pid)
    checks(daemon, sender, 1000.0, 0.1, 50)
    assert kills == [200] and [e for e, _ in log.events] == ["error"]


def test_a_sender_is_not_killed_when_the_daemon_itself_was_held_off():
    """Checks that come late (the whole host stalled, or the daemon alone)
    say nothing about the sender: the count starts again."""
    log = ListLog()
    daemon = Daemon(config.parse(render_config(interval_us=1000), "lab"), log)
    sender = StuckSender()
    checks(daemon, sender, 1000.0, 0.5, 20)          # 10 s of checks, each 0.5 s late
    checks(daemon, sender, 1010.0, 0.1, 9)           # then on schedule, 0.8 s
    assert log.events == [] and sender.status is None


def test_a_sender_with_a_long_interval_gets_ten_of_its_periods():
    log = ListLog()
    daemon = Daemon(config.parse(render_config(interval_us=500_000), "lab"), log)
    sender = StuckSender()
    checks(daemon, sender, 1000.0, 0.1, 50)          # 4.9 s: under 10 periods of 0.5 s
    assert sender.status is None
    daemon._keep_sender(sender, 1005.0)              # 5 s
    assert sender.status == -9
