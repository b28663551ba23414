"""Packet fixtures for ebpf/arbitrate.c: scapy builds MoldUDP64 and MDP3
frames, BPF_PROG_TEST_RUN runs the line's program, the test checks the
verdict, the bytes that would leave, the counters and the ring-buffer events."""
import multiprocessing
import os
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether

from appliance import feedproto, layout
from appliance.bpfsys import prog_test_run
from tests.kernel.conftest import (FEED_ADDR, FEED_PORTS, TRADER, XDP_DROP, XDP_PASS, XDP_REDIRECT)

MOLD, MDP3 = "moldudp64", "mdp3"
SESSION = "SESSION001"


def frame(payload: bytes, port: int = FEED_PORTS[MOLD], dst: str = FEED_ADDR, **ip) -> bytes:
    return feedproto.line_frame(payload, dst, port, src="198.18.30.1", **ip)


def mold(seq: int, count: int, session: str = SESSION) -> bytes:
    return frame(feedproto.mold_packet(session, seq, [feedproto.lab_message(MOLD, s, 16)
                                                      for s in range(seq, seq + count)]))


def heartbeat(next_seq: int, session: str = SESSION) -> bytes:
    return frame(feedproto.mold_heartbeat(session, next_seq))


def mdp3(seq: int, sending_time_ns: int) -> bytes:
    return frame(feedproto.mdp3_packet(seq, sending_time_ns, feedproto.lab_message(MDP3, seq, 16)),
                 port=FEED_PORTS[MDP3])


def verdicts(arbiter, *runs):
    return [arbiter.run(line, f)[0] for line, f in runs]


def test_first_copy_is_redirected_with_l2_rewrite_and_ttl(arbiter):
    sent = mold(1, 3)
    verdict, out = arbiter.run("A", sent)
    assert verdict == XDP_REDIRECT
    pkt = Ether(out)
    assert (pkt.dst, pkt.src) == (TRADER["dst"], TRADER["src"])
    assert pkt[IP].ttl == 63
    checksum = pkt[IP].chksum
    del pkt[IP].chksum
    assert Ether(bytes(pkt))[IP].chksum == checksum  # incremental fix == full recompute
    assert bytes(pkt[UDP]) == bytes(Ether(sent)[UDP])  # payload untouched


def test_duplicate_on_the_other_line_is_dropped_and_counted(arbiter):
    assert verdicts(arbiter, ("A", mold(1, 3)), ("B", mold(1, 3)), ("B", mold(4, 1)), ("A", mold(4, 1))) == \
        [XDP_REDIRECT, XDP_DROP, XDP_REDIRECT, XDP_DROP]
    a, b = arbiter.stats("A"), arbiter.stats("B")
    assert (a.packets, a.won, a.lost, b.packets, b.won, b.lost) == (2, 1, 1, 2, 1, 1)
    assert arbiter.events == [("session", 0, "A", 1, 1)]  # the feed's first session; no gap


def test_same_line_repeat_is_dropped_too(arbiter):
    assert verdicts(arbiter, ("A", mold(1, 1)), ("A", mold(1, 1))) == [XDP_REDIRECT, XDP_DROP]


def test_partial_overlap_is_forwarded_whole_so_no_message_is_lost(arbiter):
    # A batches 1-4 then 5-8; B carries 1-8 in one packet.
    assert verdicts(arbiter, ("A", mold(1, 4)), ("B", mold(1, 8)), ("A", mold(5, 4))) == \
        [XDP_REDIRECT, XDP_REDIRECT, XDP_DROP]
    assert arbiter.stats("B").overlap == 1 and arbiter.stats("A").overlap == 0


def test_overlap_across_claim_words(arbiter):
    # 30-33 spans two 32-sequence claim words; 28-35 overlaps it on both sides.
    assert verdicts(arbiter, ("A", mold(30, 4)), ("B", mold(28, 8)), ("A", mold(28, 8))) == \
        [XDP_REDIRECT, XDP_REDIRECT, XDP_DROP]


def test_gap_is_reported_with_its_exact_range_and_a_late_copy_fills_it(arbiter):
    assert verdicts(arbiter, ("A", mold(1, 2)), ("A", mold(6, 2))) == [XDP_REDIRECT, XDP_REDIRECT]
    assert arbiter.events[-1] == ("gap", 0, "A", 3, 5)
    assert verdicts(arbiter, ("B", mold(3, 3)), ("B", mold(6, 2))) == [XDP_REDIRECT, XDP_DROP]
    assert arbiter.events[-1] == ("fill", 0, "B", 3, 5)
    assert arbiter.stats("B").fills == 1


def test_partial_fill_reports_only_the_new_part(arbiter):
    verdicts(arbiter, ("A", mold(1, 2)), ("A", mold(10, 1)))  # gap 3-9
    assert arbiter.run("B", mold(5, 2))[0] == XDP_REDIRECT
    assert arbiter.events[-1] == ("fill", 0, "B", 5, 6)


def test_heartbeat_reveals_a_gap_but_delivers_nothing(arbiter):
    assert verdicts(arbiter, ("A", mold(1, 3)), ("A", heartbeat(6))) == [XDP_REDIRECT, XDP_REDIRECT]
    assert arbiter.events[-1] == ("gap", 0, "A", 4, 5)
    # B's copy of the heartbeat is a duplicate; B's data for 4-5 still goes through.
    assert verdicts(arbiter, ("B", heartbeat(6)), ("B", mold(4, 2)), ("A", mold(4, 2))) == \
        [XDP_DROP, XDP_REDIRECT, XDP_DROP]
    a, b = arbiter.stats("A"), arbiter.stats("B")
    assert (a.heartbeats, a.heartbeats_forwarded, b.heartbeats, b.heartbeats_forwarded) == (1, 1, 1, 0)


def test_heartbeat_not_ahead_reports_no_gap(arbiter):
    verdicts(arbiter, ("A", mold(1, 3)), ("A", heartbeat(4)))
    assert [e[0] for e in arbiter.events] == ["session"]


def test_end_of_session_is_forwarded_once(arbiter):
    end = frame(feedproto.mold_end_of_session(SESSION, 4))
    assert verdicts(arbiter, ("A", mold(1, 3)), ("B", end), ("A", end)) == [XDP_REDIRECT, XDP_REDIRECT, XDP_DROP]


def test_new_session_restarts_sequences_and_old_stragglers_are_dropped(arbiter):
    verdicts(arbiter, ("A", mold(1, 5)))
    assert arbiter.run("A", mold(1, 2, session="SESSION002"))[0] == XDP_REDIRECT
    assert arbiter.events[-1] == ("session", 0, "A", 1, 1)
    assert verdicts(arbiter, ("B", mold(1, 2, session="SESSION002")), ("B", mold(6, 1))) == [XDP_DROP, XDP_DROP]
    assert arbiter.stats("B").stale == 1


def test_mdp3_first_copy_duplicate_and_one_way_latency(arbiter):
    sent_ns = time.time_ns() - 5_000_000  # 5 ms ago
    assert verdicts(arbiter, ("A", mdp3(7, sent_ns)), ("B", mdp3(7, sent_ns))) == [XDP_REDIRECT, XDP_DROP]
    owd = arbiter.stats("A", MDP3).owd_hist
    (bucket,) = [b for b, n in enumerate(owd) if n]
    low, high = layout.hist_bucket_bounds_us(bucket)
    assert 5000 <= high and low <= 5000 + 200_000  # 5 ms plus at most this test's own delay


def test_loser_lag_is_recorded_in_its_histogram(arbiter):
    arbiter.run("A", mold(1, 1))
    time.sleep(0.002)
    arbiter.run("B", mold(1, 1))
    lag = list(arbiter.stats("B").lag_hist)
    assert sum(lag) == 1 and sum(arbiter.stats("A").lag_hist) == 0
    (bucket,) = [b for b, n in enumerate(lag) if n]
    assert layout.hist_bucket_bounds_us(bucket)[1] > 2000


@pytest.mark.parametrize("payload,why", [
    (feedproto.mold_packet(SESSION, 1, [b"x" * 16] * 3)[:-20], "last block cut short"),
    (feedproto.mold_packet(SESSION, 1, [b"x" * 16])[:19], "header cut short"),
    (feedproto.mold_packet(SESSION, 1, [b"x"] * 129), "more blocks than the program walks"),
    (feedproto.mold_packet(SESSION, 0, [b"x"]), "sequence 0"),
    (feedproto.mold_packet(SESSION, 2**64 - 1, [b"x", b"y"]), "sequence wraps"),
])
def test_malformed_mold_is_dropped_counted_and_claims_nothing(arbiter, payload, why):
    assert arbiter.run("A", frame(payload))[0] == XDP_DROP, why
    assert arbiter.stats("A").malformed == 1 and arbiter.stats("A").packets == 0
    assert arbiter.run("B", mold(1, 3))[0] == XDP_REDIRECT  # the good copy still wins


def test_malformed_mdp3_and_bad_udp_length_are_dropped(arbiter):
    short = frame(b"\x01\x00\x00\x00", port=FEED_PORTS[MDP3])
    assert arbiter.run("A", short)[0] == XDP_DROP
    lying = bytearray(mold(1, 1))
    lying[14 + 20 + 4:14 + 20 + 6] = (2000).to_bytes(2, "big")  # UDP length past the frame
    assert arbiter.run("A", bytes(lying))[0] == XDP_DROP
    assert arbiter.stats("A", MDP3).malformed == 1 and arbiter.stats("A").malformed == 1


@pytest.mark.parametrize("packet,stat", [
    (frame(b"x" * 20, port=9100), "not_feed"),
    (frame(b"x" * 20, dst="198.18.1.2"), "not_feed"),
    (bytes(Ether() / IP(dst=FEED_ADDR, proto=6) / (b"\x00" * 40)), "not_feed"),
    (bytes(Ether() / ARP(pdst=FEED_ADDR)), "not_ipv4"),
    (frame(feedproto.mold_packet(SESSION, 1, [b"x"]), flags="MF"), "fragment"),
    (frame(feedproto.mold_packet(SESSION, 1, [b"x"]), ttl=1), "ttl_expired"),
])
def test_everything_else_passes_untouched_and_is_counted(arbiter, packet, stat):
    verdict, out = arbiter.run("B", packet)
    assert verdict == XDP_PASS and out[:len(packet)] == packet
    assert arbiter.arb.global_stats()["B"][stat] == 1


def test_feed_without_receiver_mac_passes_to_kernel_routing(arbiter):
    import ipaddress
    arbiter.arb.write_feed(0, MOLD, ipaddress.IPv4Address(FEED_ADDR), FEED_PORTS[MOLD])
    assert verdicts(arbiter, ("A", mold(1, 1)), ("B", mold(1, 1))) == [XDP_PASS, XDP_PASS]
    assert arbiter.arb.global_stats()["A"]["no_output"] == 1


def test_ip_options_are_parsed(arbiter):
    from scapy.layers.inet import IPOption_NOP
    with_options = frame(feedproto.mold_packet(SESSION, 1, [b"x"]), options=[IPOption_NOP()] * 4)
    assert Ether(with_options)[IP].ihl == 6
    assert verdicts(arbiter, ("A", with_options), ("B", mold(1, 1))) == [XDP_REDIRECT, XDP_DROP]


def test_claim_window_recycles_and_too_old_is_stale(arbiter):
    window = layout.ARB_SLOTS * 32
    assert verdicts(arbiter, ("A", mold(1, 1)), ("A", mold(1 + window, 1))) == [XDP_REDIRECT, XDP_REDIRECT]
    assert arbiter.run("B", mold(1, 1))[0] == XDP_DROP  # its word now holds a newer block
    assert arbiter.stats("B").stale == 1


def _run_line_on_cpu(fd, cpu, packets, start_ns, period_ns, conn):
    """Child process: run packet i at start_ns + i * period_ns, so both lines
    hit the same sequence within about a microsecond of each other."""
    os.sched_setaffinity(0, {cpu})
    out = bytearray(len(packets))
    for i, p in enumerate(packets):
        due = start_ns + i * period_ns
        while time.monotonic_ns() < due:
            pass
        out[i] = prog_test_run(fd, p)[0]
    conn.send_bytes(bytes(out))


def test_lines_racing_on_two_cpus_deliver_each_sequence_exactly_once(arbiter):
    """Both lines carry 1..N, run in lockstep on different CPUs: each
    sequence is forwarded by exactly one of them. (With the claim's CAS
    replaced by a plain store, this fails: both copies go through.)"""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        pytest.fail("needs two CPUs to race the lines")
    n, period_ns = 20_000, 25_000
    packets = [mold(s, 1) for s in range(1, n + 1)]
    ctx = multiprocessing.get_context("fork")  # children inherit the program fds
    start_ns = time.monotonic_ns() + 300_000_000
    procs, pipes = [], []
    for line, cpu in zip("AB", cpus):
        parent, child = ctx.Pipe(duplex=False)
        fd = arbiter.arb.lines["AB".index(line)].fd
        procs.append(ctx.Process(target=_run_line_on_cpu, args=(fd, cpu, packets, start_ns, period_ns, child)))
        pipes.append(parent)
    for p in procs:
        p.start()
    a, b = (pipe.recv_bytes() for pipe in pipes)
    for p in procs:
        p.join(timeout=30)
    assert all({x, y} == {XDP_REDIRECT, XDP_DROP} for x, y in zip(a, b))
    assert arbiter.stats("A").won + arbiter.stats("B").won == n
