"""fastpath.heartbeat's Cython against fastpath.reference, no privileges needed."""
import random
import socket
import sys
import threading
import time

import pytest

from appliance import layout
from appliance.edge.dataplane import PROBE_IDENT
from fastpath import heartbeat, reference

INTERVAL_NS = 1_000_000


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x01\x02", b"\x01\x02\x03", b"\xff" * 63, b"\xff" * 64, bytes(128)])
def test_inet_csum_matches_rfc1071(data):
    assert heartbeat.inet_csum(data) == reference.inet_csum(data)


def test_inet_csum_matches_rfc1071_on_random_bytes():
    rng = random.Random(1)
    for _ in range(2_000):
        data = rng.randbytes(rng.randrange(129))
        assert heartbeat.inet_csum(data) == reference.inet_csum(data)


def test_a_message_carrying_its_checksum_sums_to_all_ones():
    rng = random.Random(2)
    for _ in range(2_000):
        msg = bytearray(rng.randbytes(rng.randrange(4, 129)))
        msg[2:4] = bytes(2)
        msg[2:4] = heartbeat.inet_csum(bytes(msg)).to_bytes(2, "big")
        assert heartbeat.inet_csum(bytes(msg)) == 0    # the ones' complement sum is 0xFFFF


@pytest.mark.parametrize("link", [0, layout.MAX_LINKS - 1])
@pytest.mark.parametrize("seq", [0, 1, 2**16 - 1, 2**16, 2**32 + 7, 2**63, 2**64 - 1])
def test_probe_bytes_matches_reference(link, seq):
    template = layout.probe_template(link, PROBE_IDENT)
    probe = heartbeat.probe_bytes(template, layout.PROBE_SEQ_OFFSET, seq)
    assert probe == reference.probe_bytes(template, layout.PROBE_SEQ_OFFSET, seq)
    assert int.from_bytes(probe[6:8], "big") == seq & 0xFFFF
    assert layout.Probe.from_buffer_copy(probe[8:]).seq == seq
    assert reference.inet_csum(probe) == 0


def test_probe_bytes_refuses_a_sequence_outside_the_template():
    template = layout.probe_template(0, PROBE_IDENT)
    for seq_offset in (4, len(template) - 7):
        with pytest.raises(ValueError):
            heartbeat.probe_bytes(template, seq_offset, 1)


@pytest.mark.parametrize("deadline, now, expected", [
    (1_000, 1_000, (1_100, 0, 0)),          # sent at once: sleep a period
    (1_000, 1_100, (1_100, 0, 0)),          # exactly on the next deadline
    (1_000, 1_130, (1_100, 30, 0)),         # late within a period: send at once, keep the cadence
    (1_000, 1_200, (1_100, 100, 0)),        # late by exactly one period: still kept
    (1_000, 1_201, (1_201, 101, 1)),        # stalled past a whole period: restart from now
    (1_000, 1_570, (1_570, 470, 4)),        # stalled for several periods
])
def test_next_period(deadline, now, expected):
    assert heartbeat.next_period(deadline, now, 100) == expected
    assert reference.next_period(deadline, now, 100) == expected


def test_next_period_matches_reference_on_random_clocks():
    rng = random.Random(1)
    for _ in range(10_000):
        interval = rng.randrange(10_000, 10_000_000)
        deadline = rng.randrange(2**62)
        now = deadline + rng.randrange(-interval, 20 * interval)
        assert heartbeat.next_period(deadline, now, interval) == reference.next_period(deadline, now, interval)


def test_sender_refuses_more_links_than_the_layout_has():
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(layout.MAX_LINKS + 1)]
    templates = [layout.probe_template(i, PROBE_IDENT) for i in range(len(sockets))]
    try:
        with pytest.raises(ValueError, match="TP_MAX_LINKS"):
            heartbeat.Sender(sockets, templates, layout.PROBE_SEQ_OFFSET, INTERVAL_NS)
        heartbeat.Sender(sockets[:-1], templates[:-1], layout.PROBE_SEQ_OFFSET, INTERVAL_NS)
    finally:
        for s in sockets:
            s.close()


def test_sender_sends_the_reference_probe_on_every_link():
    """The loop itself, over datagram socketpairs instead of raw ICMP sockets:
    each period every link gets the same sequence, in its own template."""
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2)]
    for tx, rx in pairs:
        tx.setblocking(False)  # a full queue counts as an error instead of blocking the loop
        rx.settimeout(5)
    templates = [layout.probe_template(i, PROBE_IDENT) for i in range(len(pairs))]
    before_us = time.monotonic_ns() // 1000
    sender = heartbeat.Sender([tx for tx, _ in pairs], templates, layout.PROBE_SEQ_OFFSET, INTERVAL_NS)
    after_us = time.monotonic_ns() // 1000
    thread = threading.Thread(target=sender.run)
    thread.start()
    try:
        first = [[rx.recv(256) for _ in range(3)] for _, rx in pairs]
    finally:
        sender.stop()
        thread.join(5)
        for tx, rx in pairs:
            tx.close()
            rx.close()
    assert not thread.is_alive()
    seqs = [int.from_bytes(m[layout.PROBE_SEQ_OFFSET:layout.PROBE_SEQ_OFFSET + 8], sys.byteorder) for m in first[0]]
    assert seqs[1:] == [seqs[0] + 1, seqs[0] + 2]
    assert before_us < seqs[0] <= after_us + 1    # microseconds since boot: never reused by a restart
    for template, messages in zip(templates, first):
        assert messages == [reference.probe_bytes(template, layout.PROBE_SEQ_OFFSET, s) for s in seqs]
    assert sender.stats.periods >= 3 and min(sender.stats.sent) >= 3
