"""The probe sender as a process of its own, over datagram socketpairs:
its counters are the daemon's to read, it outlives the object that started
it, and the next daemon stops exactly the sender the registry names."""
import os
import signal
import socket
import sys
import time

import pytest

from appliance import layout
from appliance.edge import probesender
from appliance.edge.dataplane import PROBE_IDENT

INTERVAL_NS = 1_000_000


class Registry(dict):
    """PinDir's registry calls, in memory."""

    def put(self, key, value):
        self[key] = value

    def delete(self, key):
        self.pop(key, None)


@pytest.fixture
def pairs():
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2)]
    for tx, rx in pairs:
        tx.setblocking(False)
        rx.settimeout(5)
    yield pairs
    for tx, rx in pairs:
        tx.close()
        rx.close()


def start(pairs) -> probesender.SenderProcess:
    templates = [layout.probe_template(i, PROBE_IDENT) for i in range(len(pairs))]
    sender = probesender.SenderProcess([tx for tx, _ in pairs], templates, layout.PROBE_SEQ_OFFSET, INTERVAL_NS,
                                       priority=0)
    sender.start()
    return sender


def seq_of(message: bytes) -> int:
    return int.from_bytes(message[layout.PROBE_SEQ_OFFSET:layout.PROBE_SEQ_OFFSET + 8], sys.byteorder)


def test_the_child_sends_from_the_sequence_the_daemon_set_and_shares_its_counters(pairs):
    sender = start(pairs)
    first_seq = sender.stats.last_seq
    try:
        got = [seq_of(rx.recv(256)) for _, rx in pairs]
        assert got == [first_seq + 1, first_seq + 1]
        deadline = time.monotonic() + 5
        while sender.stats.periods < 5 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert sender.stats.periods >= 5 and min(sender.stats.sent) >= 5
        assert sender.stats.last_seq >= first_seq + 5
    finally:
        sender.stop()
        sender.close()


def test_a_sender_outlives_its_starter_until_the_next_one_stops_it(pairs):
    registry = Registry()
    sender = start(pairs)
    sender.record(registry)
    pid = sender.pid
    sender.close()                       # the daemon that started it is gone
    pairs[0][1].recv(256)
    assert os.waitpid(pid, os.WNOHANG) == (0, 0), "still running"
    assert probesender.stop_recorded(registry) == pid
    assert "sender" not in registry
    assert os.waitpid(pid, 0)[1] == signal.SIGTERM


def test_a_recorded_pid_now_used_by_another_process_is_left_alone(pairs):
    registry = Registry(sender=f"{os.getpid()} 1")   # our own pid, another start time
    assert probesender.stop_recorded(registry) is None
    assert "sender" not in registry
