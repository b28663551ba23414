"""Packet fixtures for ebpf/arbitrate.c: scapy builds MoldUDP64 and MDP3
frames, BPF_PROG_TEST_RUN runs the line's program, the test checks the
verdict, the bytes that would leave, the counters and the ring-buffer events."""
import ctypes
import multiprocessing
import os
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether

from appliance import layout
from lab import feedproto
from lab.libbpf import prog_test_run
from tests.kernel.conftest import FEED_ADDR, FEED_PORTS, HB_DEDUP_NS, TRADER, XDP_DROP, XDP_PASS, XDP_REDIRECT

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


def end_of_session(next_seq: int, session: str = SESSION) -> bytes:
    return frame(feedproto.mold_end_of_session(session, next_seq))


def session_of(arbiter) -> str:
    return layout.session_name(arbiter.arb.state(0).session).decode().rstrip()


def seqs(words) -> list[int]:
    return [layout.arb_seq(w) for w in words]


def kinds(arbiter, *wanted):
    return [e for e in arbiter.events if e[0] in wanted]


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


def test_new_session_is_believed_once_both_lines_carry_it_and_old_stragglers_are_dropped(arbiter):
    # Was: the first packet of SESSION002 switched the feed. A session change
    # now needs evidence; here, the new session on both lines.
    verdicts(arbiter, ("A", mold(1, 5)))
    assert arbiter.run("A", mold(1, 2, session="SESSION002"))[0] == XDP_DROP  # a candidate, one line
    assert arbiter.stats("A").unconfirmed == 1
    assert arbiter.run("B", mold(1, 2, session="SESSION002"))[0] == XDP_REDIRECT  # both lines: switched
    assert arbiter.events[-1] == ("session", 0, "B", 1, 1)
    assert session_of(arbiter) == "SESSION002"
    assert verdicts(arbiter, ("A", mold(1, 2, session="SESSION002")), ("B", mold(6, 1))) == [XDP_DROP, XDP_DROP]
    assert arbiter.stats("A").lost == 1
    assert arbiter.stats("B").unconfirmed == 1  # a straggler of SESSION001 is now just another candidate


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


def _live_index(arbiter) -> layout.FeedIndex:
    tables = arbiter.arb.bpf["tp_feed_index"]
    return layout.FeedIndex.from_buffer_copy(tables[ctypes.c_uint32(tables[ctypes.c_uint32(0)].live)])


def _index_key(dst: str, port: int) -> int:
    import ipaddress
    return layout.feed_index_key(arbiter_key(ipaddress.IPv4Address(dst), port))


def arbiter_key(addr, port):
    from appliance.edge.arbitration import Arbiter
    return Arbiter.feed_key(addr, port)


def test_every_configured_feed_is_found_and_a_destination_sharing_its_slot_is_not(arbiter):
    """tp_feed_index (lib/layout.h) with as many feeds as the map holds: each
    is arbitrated; a destination the hash puts in a feed's slot passes."""
    import ipaddress
    feeds = [(f"198.18.{1 + i % 3}.{10 + i}", 30000 + 7 * i) for i in range(layout.ARB_FEEDS)]
    arbiter.arb.bpf["tp_feeds"].clear()
    for feed_id, (dst, port) in enumerate(feeds):
        arbiter.arb.write_feed(feed_id, MOLD, ipaddress.IPv4Address(dst), port,
                               TRADER["ifindex"], TRADER["src"], TRADER["dst"])
    index = _live_index(arbiter)
    slots = {layout.feed_index_slot(_index_key(d, p), index.mult) for d, p in feeds}
    assert len(slots) == len(feeds) and sum(1 for s in index.slots if s.key) == len(feeds)
    for dst, port in feeds:
        payload = feedproto.mold_packet(SESSION, 1, [feedproto.lab_message(MOLD, 1, 16)])
        assert arbiter.run("A", frame(payload, port=port, dst=dst))[0] == XDP_REDIRECT, (dst, port)
    taken = {layout.feed_index_slot(_index_key(d, p), index.mult): (d, p) for d, p in feeds}
    strangers = [(f"198.18.9.{h}", port) for h in range(1, 255) for port in (30000, 30007, 31000)
                 if layout.feed_index_slot(_index_key(f"198.18.9.{h}", port), index.mult) in taken][:5]
    assert strangers
    for dst, port in strangers:
        packet = frame(feedproto.mold_packet(SESSION, 1, [b"x"]), port=port, dst=dst)
        verdict, out = arbiter.run("B", packet)
        assert verdict == XDP_PASS and out[:len(packet)] == packet
    assert arbiter.arb.global_stats()["B"]["not_feed"] == len(strangers)


def test_a_pruned_feed_is_not_arbitrated_and_an_empty_slot_matches_nothing(arbiter):
    import ipaddress
    assert arbiter.arb.prune_feeds([(ipaddress.IPv4Address(FEED_ADDR), FEED_PORTS[MDP3])]) == \
        [f"{FEED_ADDR}:{FEED_PORTS[MOLD]}"]
    packet = mold(1, 1)
    verdict, out = arbiter.run("A", packet)
    assert verdict == XDP_PASS and out[:len(packet)] == packet
    assert arbiter.run("A", mdp3(1, time.time_ns()))[0] == XDP_REDIRECT
    # An empty slot's key is 0: the destination 0.0.0.0:0 must not match it.
    assert _live_index(arbiter).slots[layout.feed_index_slot(0, _live_index(arbiter).mult)].key == 0
    zero = frame(feedproto.mold_packet(SESSION, 1, [b"x"]), port=0, dst="0.0.0.0")
    assert arbiter.run("A", zero)[0] == XDP_PASS
    assert arbiter.arb.global_stats()["A"]["not_feed"] == 2


def test_ip_options_pass_to_the_stack_and_claim_nothing(arbiter):
    """The one rule of lib/parse.h: options are never fast-pathed."""
    from scapy.layers.inet import IPOption_NOP
    with_options = frame(feedproto.mold_packet(SESSION, 1, [b"x"]), options=[IPOption_NOP()] * 4)
    assert Ether(with_options)[IP].ihl == 6
    verdict, out = arbiter.run("A", with_options)
    assert verdict == XDP_PASS and out[:len(with_options)] == with_options
    assert arbiter.arb.global_stats()["A"]["ip_options"] == 1
    assert arbiter.run("B", mold(1, 1))[0] == XDP_REDIRECT


def _with_ip_bytes(raw: bytes, offset: int, value: bytes) -> bytes:
    out = bytearray(raw)
    out[14 + offset:14 + offset + len(value)] = value
    return bytes(out)


@pytest.mark.parametrize("how", ["bad_checksum", "total_length_past_the_frame", "version_5"])
def test_a_header_the_trader_would_drop_claims_nothing(arbiter, how):
    """A forged copy that the trader's kernel would drop used to win the
    race and make the genuine copies duplicates: the sequence was lost."""
    genuine = mold(1, 1)
    if how == "bad_checksum":
        forged = _with_ip_bytes(genuine, 10, b"\xde\xad")
    elif how == "total_length_past_the_frame":
        forged = _with_ip_bytes(genuine, 2, (len(genuine) - 14 + 40).to_bytes(2, "big"))
    else:
        forged = _with_ip_bytes(genuine, 0, b"\x55")
    verdict, out = arbiter.run("A", forged)
    assert verdict == XDP_PASS and out[:len(forged)] == forged
    assert arbiter.arb.global_stats()["A"]["truncated"] == 1
    assert verdicts(arbiter, ("A", genuine), ("B", genuine)) == [XDP_REDIRECT, XDP_DROP]


def test_claim_window_recycles_and_too_old_is_stale(arbiter):
    window = layout.ARB_SLOTS * 32
    assert verdicts(arbiter, ("A", mold(1, 1)), ("A", mold(1 + window, 1))) == [XDP_REDIRECT, XDP_REDIRECT]
    assert arbiter.run("B", mold(1, 1))[0] == XDP_DROP  # its word now holds a newer block
    assert arbiter.stats("B").stale == 1


# -- sessions need evidence ---------------------------------------------------
FORGED = "FORGED0001"
FORGERIES = {
    "data": lambda: mold(6, 1, session=FORGED),
    "heartbeat": lambda: heartbeat(6, session=FORGED),
    "end": lambda: end_of_session(6, session=FORGED),
}


@pytest.mark.parametrize("kind", sorted(FORGERIES))
@pytest.mark.parametrize("line", ["A", "B"])
def test_one_packet_of_another_session_on_one_line_stops_nothing(arbiter, line, kind):
    assert arbiter.run("A", mold(1, 5))[0] == XDP_REDIRECT
    assert arbiter.run(line, FORGERIES[kind]())[0] == XDP_DROP
    assert arbiter.stats(line).unconfirmed == 1
    # the genuine session goes on, on both lines, with nothing taken for a straggler
    assert verdicts(arbiter, ("B", mold(6, 2)), ("A", mold(6, 2)), ("A", mold(8, 1)), ("B", mold(8, 1))) == \
        [XDP_REDIRECT, XDP_DROP, XDP_REDIRECT, XDP_DROP]
    assert session_of(arbiter) == SESSION
    assert [e[0] for e in arbiter.events if e[0] == "session"] == ["session"]  # the first one only
    assert kinds(arbiter, "session-candidate") == [("session-candidate", 0, line, 6, 6)]
    assert arbiter.stats("A").stale == arbiter.stats("B").stale == 0


def test_a_candidate_seen_again_on_the_same_line_is_still_unconfirmed(arbiter):
    verdicts(arbiter, ("A", mold(1, 5)))
    forged = [("A", mold(6 + i, 1, session=FORGED)) for i in range(5)]
    assert verdicts(arbiter, *forged) == [XDP_DROP] * 5
    assert verdicts(arbiter, ("B", mold(6, 1)), ("A", mold(7, 1))) == [XDP_REDIRECT, XDP_REDIRECT]
    assert session_of(arbiter) == SESSION


def test_a_line_that_goes_back_to_the_current_session_withdraws_its_evidence(arbiter):
    verdicts(arbiter, ("A", mold(1, 5)))
    assert verdicts(arbiter, ("A", mold(1, 1, session=FORGED)), ("A", mold(6, 1)),
                    ("B", mold(2, 1, session=FORGED))) == [XDP_DROP, XDP_REDIRECT, XDP_DROP]
    assert session_of(arbiter) == SESSION


def test_new_session_on_one_line_only_is_believed_after_n_packets(arbiter):
    """Line B is dead: a real new session on A alone switches after
    TP_ARB_CONFIRM packets; those dropped before are reported as a gap."""
    n = layout.ARB_CONFIRM
    verdicts(arbiter, ("A", mold(1, 5)))
    got = verdicts(arbiter, *[("A", mold(s, 1, session="SESSION002")) for s in range(1, n + 1)])
    assert got == [XDP_DROP] * (n - 1) + [XDP_REDIRECT]
    assert session_of(arbiter) == "SESSION002"
    assert kinds(arbiter, "session", "gap")[-2:] == [("session", 0, "A", n, n), ("gap", 0, "A", 1, n - 1)]
    assert arbiter.stats("A").unconfirmed == n - 1


def prev_session_of(arbiter) -> bytes | None:
    words = arbiter.arb.state(0).prev_session
    return layout.session_name(words) if words[1] & layout.C["TP_PREV_SESSION"] else None


def test_a_line_lagging_behind_a_session_change_never_takes_the_feed_back(arbiter):
    """Line B moves to SESSION002 on its own (A lags): A's packets of the
    session left, however many in a row, are dropped as unconfirmed and
    deliver nothing. Was: A's 16th switched the feed back to SESSION001 at
    sequence 1 and delivered it a second time, then B flipped it forward."""
    n = layout.ARB_CONFIRM
    verdicts(arbiter, ("A", mold(1, 5)), ("B", mold(1, 5)))
    assert prev_session_of(arbiter) is None  # the feed's first session left none
    got = verdicts(arbiter, *[("B", mold(s, 1, session="SESSION002")) for s in range(1, n + 1)])
    assert got[-1] == XDP_REDIRECT and session_of(arbiter) == "SESSION002"
    assert prev_session_of(arbiter) == SESSION.encode()
    assert verdicts(arbiter, *[("A", mold(s, 1)) for s in range(6, 46)]) == [XDP_DROP] * 40
    assert session_of(arbiter) == "SESSION002"
    a = arbiter.stats("A")
    assert (a.won, a.unconfirmed, a.stale) == (1, 40, 0)
    assert len(kinds(arbiter, "session")) == 2
    # A catches up: what B delivered is lost on A, what is new is A's
    assert verdicts(arbiter, ("A", mold(n, 1, session="SESSION002")),
                    ("A", mold(n + 1, 1, session="SESSION002"))) == [XDP_DROP, XDP_REDIRECT]


def test_a_session_forged_on_one_line_is_taken_back_by_both_lines(arbiter):
    """TP_ARB_CONFIRM forged packets in a row on A switch the feed; the
    genuine session on both lines takes it back, and the forger, its session
    now the one left, cannot take it again from one line."""
    n = layout.ARB_CONFIRM
    verdicts(arbiter, ("A", mold(1, 5)), ("B", mold(1, 5)))
    assert verdicts(arbiter, *[("A", mold(6 + i, 1, session=FORGED)) for i in range(n)])[-1] == XDP_REDIRECT
    assert session_of(arbiter) == FORGED
    assert verdicts(arbiter, ("A", mold(6, 1)), ("B", mold(6, 1))) == [XDP_DROP, XDP_REDIRECT]
    assert session_of(arbiter) == SESSION and prev_session_of(arbiter) == FORGED.encode()
    assert kinds(arbiter, "session")[-1] == ("session", 0, "B", 6, 6)
    forged = verdicts(arbiter, *[("A", mold(100 + i, 1, session=FORGED)) for i in range(2 * n)])
    assert forged == [XDP_DROP] * (2 * n) and session_of(arbiter) == SESSION
    assert verdicts(arbiter, ("A", mold(7, 1)), ("B", mold(7, 1))) == [XDP_REDIRECT, XDP_DROP]


def test_the_count_still_switches_to_a_session_not_the_one_left(arbiter):
    """Only the session left is barred from the count: after SESSION001 ->
    SESSION002, SESSION003 on one line switches after TP_ARB_CONFIRM packets."""
    n = layout.ARB_CONFIRM
    verdicts(arbiter, ("A", mold(1, 5)), ("A", mold(1, 1, session="SESSION002")),
             ("B", mold(1, 1, session="SESSION002")))
    assert session_of(arbiter) == "SESSION002" and prev_session_of(arbiter) == SESSION.encode()
    got = verdicts(arbiter, *[("A", mold(s, 1, session="SESSION003")) for s in range(1, n + 1)])
    assert got == [XDP_DROP] * (n - 1) + [XDP_REDIRECT]
    assert session_of(arbiter) == "SESSION003" and prev_session_of(arbiter) == b"SESSION002"


def test_an_all_zero_session_after_a_resync_is_not_taken_for_one_left(arbiter):
    """A resync bumps the generation but leaves no session behind: an
    all-zero name (possible on the wire) still switches by the count."""
    n, far = layout.ARB_CONFIRM, 2**27  # a resync past TP_ARB_NEWGEN: gen 2 -> 4
    verdicts(arbiter, ("A", mold(1, 5)), ("A", mold(far, 1)), ("B", mold(far, 1)))
    assert arbiter.arb.state(0).gen == 4 and prev_session_of(arbiter) is None
    got = verdicts(arbiter, *[("A", mold(s, 1, session=bytes(10))) for s in range(1, n + 1)])
    assert got == [XDP_DROP] * (n - 1) + [XDP_REDIRECT]
    assert layout.session_name(arbiter.arb.state(0).session) == bytes(10)


def test_a_packet_of_the_current_session_restarts_the_count(arbiter):
    n = layout.ARB_CONFIRM
    verdicts(arbiter, ("A", mold(1, 5)))
    first = verdicts(arbiter, *[("A", mold(s, 1, session="SESSION002")) for s in range(1, n)])
    assert arbiter.run("B", mold(6, 1))[0] == XDP_REDIRECT
    second = verdicts(arbiter, *[("A", mold(s, 1, session="SESSION002")) for s in range(n, 2 * n - 1)])
    assert first + second == [XDP_DROP] * (2 * n - 2)
    assert session_of(arbiter) == SESSION


def test_end_of_session_on_both_lines_lets_the_next_session_start_at_once(arbiter):
    verdicts(arbiter, ("A", mold(1, 3)))
    # The end on one line is not enough: a single forged end must not open the door.
    assert verdicts(arbiter, ("A", end_of_session(4)), ("A", mold(1, 2, session="SESSION002"))) == \
        [XDP_REDIRECT, XDP_DROP]
    assert verdicts(arbiter, ("B", end_of_session(4)), ("B", mold(3, 2, session="SESSION002"))) == \
        [XDP_DROP, XDP_REDIRECT]
    assert session_of(arbiter) == "SESSION002"


def test_end_of_session_on_both_lines_then_first_packet_switches(arbiter):
    verdicts(arbiter, ("A", mold(1, 3)), ("A", end_of_session(4)), ("B", end_of_session(4)))
    assert verdicts(arbiter, ("B", mold(1, 2, session="SESSION002")), ("A", mold(1, 2, session="SESSION002"))) == \
        [XDP_REDIRECT, XDP_DROP]
    assert kinds(arbiter, "session")[-1] == ("session", 0, "B", 1, 1)


@pytest.mark.parametrize("old,new", [("ASESSION01", "BSESSION01"), ("S2", "S3"), ("20261201A1", "30261201A1")])
def test_sessions_are_compared_in_all_ten_bytes(arbiter, old, new):
    assert verdicts(arbiter, ("A", mold(1, 5, session=old)), ("A", mold(1, 2, session=new)),
                    ("B", mold(1, 2, session=new)), ("A", mold(3, 1, session=new))) == \
        [XDP_REDIRECT, XDP_DROP, XDP_REDIRECT, XDP_REDIRECT]
    assert session_of(arbiter) == new
    assert kinds(arbiter, "session")[-1] == ("session", 0, "B", 1, 1)


def test_first_packet_of_a_new_session_reports_the_gap_from_sequence_1(arbiter):
    """A new session starts at 1: its first heartbeat announcing 11 reveals
    1..10, and a loss of 1..10 on both lines is reported."""
    verdicts(arbiter, ("A", mold(1, 3)))
    assert verdicts(arbiter, ("A", heartbeat(11, session="SESSION002")), ("B", heartbeat(11, session="SESSION002"))) \
        == [XDP_DROP, XDP_REDIRECT]
    assert kinds(arbiter, "session", "gap")[-2:] == [("session", 0, "B", 11, 11), ("gap", 0, "B", 1, 10)]
    assert arbiter.run("A", mold(5, 2, session="SESSION002"))[0] == XDP_REDIRECT
    assert arbiter.events[-1] == ("fill", 0, "A", 5, 6)


def test_a_heartbeat_does_not_set_the_first_sessions_baseline(arbiter):
    """The daemon's first session may be joined mid-way: its first data packet
    sets where gaps are counted from; a heartbeat only announces."""
    assert verdicts(arbiter, ("A", heartbeat(11)), ("A", mold(1, 3)), ("A", mold(6, 1))) == [XDP_REDIRECT] * 3
    assert kinds(arbiter, "gap", "fill") == [("gap", 0, "A", 4, 5)]


# -- far-ahead sequences ---------------------------------------------------------
FAR = 10**12
FAR_PACKETS = {
    "data": lambda seq=FAR: mold(seq, 1),
    "heartbeat": lambda seq=FAR: heartbeat(seq),
    "end": lambda seq=FAR: end_of_session(seq),
}


@pytest.mark.parametrize("kind", sorted(FAR_PACKETS))
@pytest.mark.parametrize("line", ["A", "B"])
def test_one_far_ahead_packet_hides_no_gap_and_moves_nothing(arbiter, line, kind):
    verdicts(arbiter, ("A", mold(1, 3)))
    assert arbiter.run(line, FAR_PACKETS[kind]())[0] == XDP_DROP
    assert arbiter.stats(line).far_ahead == 1
    assert kinds(arbiter, "far-ahead") == [("far-ahead", 0, line, FAR, 4)]
    # 6..7 are lost on both lines: still reported as a gap, not taken for a fill
    assert verdicts(arbiter, ("A", mold(4, 2)), ("B", mold(4, 2)), ("B", mold(8, 1))) == \
        [XDP_REDIRECT, XDP_DROP, XDP_REDIRECT]
    assert kinds(arbiter, "gap", "fill") == [("gap", 0, "B", 6, 7)]
    st = arbiter.arb.state(0)
    assert layout.arb_seq(st.next_seq) == 9 and seqs(st.line_next_seq) == [6, 9]  # nobody "behind" by 10^12


def test_far_ahead_on_both_lines_is_believed_as_a_resync(arbiter):
    verdicts(arbiter, ("A", mold(1, 3)))
    assert verdicts(arbiter, ("A", mold(100_000, 2)), ("B", mold(100_000, 2)), ("A", mold(100_002, 1))) == \
        [XDP_DROP, XDP_REDIRECT, XDP_REDIRECT]
    assert kinds(arbiter, "resync", "gap") == [("resync", 0, "B", 4, 100_000), ("gap", 0, "B", 4, 99_999)]
    # what was delivered before the resync is not delivered again
    assert verdicts(arbiter, ("B", mold(2, 1)), ("A", mold(100_000, 2))) == [XDP_DROP, XDP_DROP]


def test_far_ahead_on_one_line_is_believed_after_n_consistent_packets(arbiter):
    """Line B is dead and the feed really jumped: A alone resyncs after
    TP_ARB_CONFIRM consistent far-ahead packets; the ones dropped before lie in
    the reported gap, so the other line could still fill them."""
    n = layout.ARB_CONFIRM
    verdicts(arbiter, ("A", mold(1, 3)))
    got = verdicts(arbiter, *[("A", mold(100_000 + i, 1)) for i in range(n)])
    assert got == [XDP_DROP] * (n - 1) + [XDP_REDIRECT]
    assert kinds(arbiter, "gap")[-1] == ("gap", 0, "A", 4, 100_000 + n - 2)
    assert arbiter.run("B", mold(100_000, 1))[0] == XDP_REDIRECT
    assert arbiter.events[-1] == ("fill", 0, "B", 100_000, 100_000)


def test_in_range_packets_veto_far_ahead_packets_of_one_line(arbiter):
    n = layout.ARB_CONFIRM
    verdicts(arbiter, ("A", mold(1, 3)))
    runs = []
    for i in range(3 * n):
        runs.append(("A", mold(100_000 + i, 1)))
        if i % (n // 2) == 0:
            runs.append(("B", mold(4 + i, 1)))
    got = verdicts(arbiter, *runs)
    assert [v for (line, _), v in zip(runs, got) if line == "A"] == [XDP_DROP] * (3 * n)
    assert [v for (line, _), v in zip(runs, got) if line == "B"] == [XDP_REDIRECT] * 6
    assert kinds(arbiter, "resync") == []


def test_inconsistent_far_ahead_packets_are_not_believed(arbiter):
    n = layout.ARB_CONFIRM
    verdicts(arbiter, ("A", mold(1, 3)))
    got = verdicts(arbiter, *[("A", mold(100_000 + i * 1_000_000, 1)) for i in range(2 * n)])
    assert got == [XDP_DROP] * (2 * n)


def test_far_ahead_sequences_on_the_two_lines_must_agree(arbiter):
    verdicts(arbiter, ("A", mold(1, 3)))
    assert verdicts(arbiter, ("A", mold(100_000, 1)), ("B", mold(10**9, 1))) == [XDP_DROP, XDP_DROP]


def test_a_baseline_set_far_ahead_by_one_packet_is_corrected_when_both_lines_agree(arbiter):
    """The daemon's first data packet sets the baseline. If that one was
    forged (or corrupt) far ahead, the genuine sequences are far behind: on
    both lines they are believed (a resync down, in a new generation)."""
    assert arbiter.run("A", mold(FAR, 1))[0] == XDP_REDIRECT
    assert verdicts(arbiter, ("A", mold(1, 3)), ("B", mold(1, 3)), ("A", mold(4, 1)), ("B", mold(4, 1))) == \
        [XDP_DROP, XDP_REDIRECT, XDP_REDIRECT, XDP_DROP]
    assert kinds(arbiter, "far-behind", "resync") == [
        ("far-behind", 0, "A", 1, FAR + 1), ("far-behind", 0, "B", 1, FAR + 1), ("resync", 0, "B", FAR + 1, 1)]
    st = arbiter.arb.state(0)
    assert layout.arb_seq(st.next_seq) == 5 and seqs(st.line_next_seq) == [5, 5]


def test_far_behind_on_one_line_is_stale(arbiter):
    base = 2**25
    assert arbiter.run("A", mold(base, 1))[0] == XDP_REDIRECT
    runs = [run for i in range(layout.ARB_CONFIRM + 1) for run in (("B", mold(5 + i, 1)), ("A", mold(base + 1 + i, 1)))]
    assert verdicts(arbiter, *runs) == [XDP_DROP, XDP_REDIRECT] * (layout.ARB_CONFIRM + 1)
    assert arbiter.stats("B").stale == layout.ARB_CONFIRM + 1 and kinds(arbiter, "resync") == []


def test_a_forgery_repeated_among_genuine_packets_is_reported_once_per_line(arbiter):
    """Genuine packets restart the evidence, not the reporting: a forger
    cannot turn each packet into a log line."""
    verdicts(arbiter, ("A", mold(1, 3)))
    for i in range(10):
        assert verdicts(arbiter, ("A", mold(100 + i, 1, session=FORGED)), ("A", mold(100_000 + i, 1)),
                        ("B", mold(4 + i, 1))) == [XDP_DROP, XDP_DROP, XDP_REDIRECT]
    assert [e[0] for e in kinds(arbiter, "session-candidate", "far-ahead")] == ["session-candidate", "far-ahead"]
    assert (arbiter.stats("A").unconfirmed, arbiter.stats("A").far_ahead) == (10, 10)


# -- claim tags and generations --------------------------------------------------
def test_a_sequence_2_to_the_29_ahead_is_not_taken_for_one_delivered(arbiter):
    far = 5 + 2**29  # the same claim slot, and a block tag equal modulo 2^24
    assert verdicts(arbiter, ("A", mold(5, 1)), ("A", mold(far, 1)), ("B", mold(far, 1)), ("A", mold(far + 1, 1))) \
        == [XDP_REDIRECT, XDP_DROP, XDP_REDIRECT, XDP_REDIRECT]


def test_a_sequence_delivered_long_ago_is_never_delivered_again(arbiter):
    """Two resyncs 2^27 and 2^28 + 2^15 ahead move the claim word of block 0
    through blocks whose 24-bit tags wrap; a replay of sequence 1 must still
    be refused (it is far behind, explicitly stale)."""
    steps = [1 + 2**27, 1 + 2**28 + 2**15]
    runs = [("A", mold(1, 1))]
    for seq in steps:
        runs += [("A", mold(seq, 1)), ("B", mold(seq, 1))]
    assert verdicts(arbiter, *runs) == [XDP_REDIRECT] + [XDP_DROP, XDP_REDIRECT] * len(steps)
    assert arbiter.run("B", mold(1, 1))[0] == XDP_DROP
    assert arbiter.stats("B").stale == 1


def test_the_claim_generation_does_not_wrap_into_old_claims(arbiter):
    """Sequence 40 of the first session stays claimed in its word while 256
    later sessions touch only sequence 1; the 257th session's sequence 40 is
    new and must be delivered."""
    assert arbiter.run("A", mold(40, 1, session="GEN0000000"))[0] == XDP_REDIRECT
    for i in range(1, 257):
        name = f"GEN{i:07d}"
        assert verdicts(arbiter, ("A", mold(1, 1, session=name)), ("B", mold(1, 1, session=name)))[1] == XDP_REDIRECT
    assert arbiter.run("A", mold(40, 1, session="GEN0000256"))[0] == XDP_REDIRECT


def test_claim_words_that_fell_far_behind_are_swept(arbiter):
    """Once next_seq has moved TP_ARB_SWEEP on, words more than TP_ARB_BEHIND
    behind are emptied, so every word in use holds a block close enough for
    the 24-bit tags to compare exactly; nothing is delivered twice meanwhile."""
    sweep = layout.C["TP_ARB_SWEEP"]
    far = 2 + sweep + 100  # a resync below TP_ARB_NEWGEN: same generation
    assert verdicts(arbiter, ("A", mold(1, 1)), ("A", mold(far, 1)), ("B", mold(far, 1))) == \
        [XDP_REDIRECT, XDP_DROP, XDP_REDIRECT]
    claims = arbiter.arb.bpf["tp_feed_claims"][ctypes.c_uint32(0)].claims
    assert claims[0] == 0  # block 0 (sequence 1) swept
    assert claims[(far >> 5) % layout.ARB_SLOTS] != 0
    assert layout.arb_seq(arbiter.arb.state(0).swept_seq) == far
    assert verdicts(arbiter, ("A", mold(far, 1)), ("B", mold(1, 1)), ("A", mold(far + 1, 1))) == \
        [XDP_DROP, XDP_DROP, XDP_REDIRECT]
    assert arbiter.stats("B").stale == 1
    a, b = arbiter.stats("A"), arbiter.stats("B")
    assert (a.packets, b.packets) == (4, 2)  # a packet run again is counted once


def test_mdp3_has_no_session_to_switch(arbiter):
    sent_ns = time.time_ns()
    assert verdicts(arbiter, ("A", mdp3(7, sent_ns)), ("B", mdp3(8, sent_ns))) == [XDP_REDIRECT, XDP_REDIRECT]
    assert [e for e in arbiter.events if e[1] == 1] == []  # no session event, no gap
    assert arbiter.stats("A", MDP3).packets == 1 and sum(arbiter.stats("A", MDP3).owd_hist) == 1


# -- end of session and heartbeats -----------------------------------------------
def test_end_of_session_is_never_taken_for_a_heartbeats_copy(arbiter):
    assert verdicts(arbiter, ("A", mold(1, 3)), ("A", heartbeat(4)), ("B", end_of_session(4)), ("A", end_of_session(4))) \
        == [XDP_REDIRECT, XDP_REDIRECT, XDP_REDIRECT, XDP_DROP]
    a, b = arbiter.stats("A"), arbiter.stats("B")
    assert (a.heartbeats, a.heartbeats_forwarded, b.heartbeats, b.heartbeats_forwarded) == (2, 1, 1, 1)


def test_one_heartbeat_per_dedup_window_whatever_it_announces(arbiter):
    """After a loss on A, A's copy of a heartbeat names a higher next sequence
    than B's: still one heartbeat, not two (the lab checker counts a second
    as delivered twice), while the gap accounting sees both."""
    assert verdicts(arbiter, ("B", mold(1, 3)), ("A", heartbeat(6)), ("B", heartbeat(4)), ("B", mold(4, 2)),
                    ("A", heartbeat(6)), ("B", heartbeat(6))) == \
        [XDP_REDIRECT, XDP_REDIRECT, XDP_DROP, XDP_REDIRECT, XDP_DROP, XDP_DROP]
    a, b = arbiter.stats("A"), arbiter.stats("B")
    assert (a.heartbeats_forwarded, b.heartbeats_forwarded) == (1, 0)
    assert (a.heartbeats, b.heartbeats) == (2, 2)


def test_a_heartbeat_behind_the_feed_is_dropped_even_past_the_window(arbiter):
    """Lines that drift apart by more than the dedup window while data flows:
    the lagging line's copy of a heartbeat comes after the window, naming a
    sequence the feed has passed. Dropped: the trader has heard more. A
    heartbeat of an idle feed after the window is the next one, forwarded."""
    assert verdicts(arbiter, ("A", mold(1, 3)), ("A", heartbeat(4)), ("A", mold(4, 2))) == [XDP_REDIRECT] * 3
    time.sleep(HB_DEDUP_NS * 1.5 / 1e9)
    assert verdicts(arbiter, ("B", mold(1, 3)), ("B", heartbeat(4)), ("A", heartbeat(6))) == \
        [XDP_DROP, XDP_DROP, XDP_REDIRECT]
    time.sleep(HB_DEDUP_NS * 1.5 / 1e9)
    assert verdicts(arbiter, ("B", mold(4, 2)), ("B", heartbeat(6))) == [XDP_DROP, XDP_REDIRECT]
    a, b = arbiter.stats("A"), arbiter.stats("B")
    assert (a.heartbeats_forwarded, b.heartbeats_forwarded) == (2, 1)


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


def _race(arbiter, packets, period_ns=25_000):
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        pytest.fail("needs two CPUs to race the lines")
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
    arbiter.arb.poll(0)
    return a, b


def test_lines_racing_through_session_changes_never_deliver_twice(arbiter):
    """Both lines switch session together, on two CPUs, three times: the
    switch (seqlock, candidate record, claim clearing, packet run again)
    never lets a sequence through twice. A first packet of a session may be
    dropped on both lines when the two copies race for the candidate record;
    it is then reported as a gap."""
    n = 2000
    packets = [mold(s, 1, session=f"RACE{k:06d}") for k in range(4) for s in range(1, n + 1)]
    a, b = _race(arbiter, packets)
    assert not any(x == y == XDP_REDIRECT for x, y in zip(a, b))
    won = arbiter.stats("A").won + arbiter.stats("B").won
    assert 4 * n - 3 * 2 <= won == sum(XDP_REDIRECT in (x, y) for x, y in zip(a, b))
    assert session_of(arbiter) == "RACE000003"
    missed = [i for i, (x, y) in enumerate(zip(a, b)) if XDP_REDIRECT not in (x, y)]
    gaps = kinds(arbiter, "gap")
    assert all(any(g[3] <= i % n + 1 <= g[4] for g in gaps) for i in missed)
    assert arbiter.stats("A").events_lost + arbiter.stats("B").events_lost == 0


def test_lines_racing_on_two_cpus_deliver_each_sequence_exactly_once(arbiter):
    """Both lines carry 1..N, run in lockstep on different CPUs: each
    sequence is forwarded by exactly one of them. (With the claim's CAS
    replaced by a plain store, this fails: both copies go through.)"""
    n = 20_000
    a, b = _race(arbiter, [mold(s, 1) for s in range(1, n + 1)])
    assert all({x, y} == {XDP_REDIRECT, XDP_DROP} for x, y in zip(a, b))
    assert arbiter.stats("A").won + arbiter.stats("B").won == n


@pytest.mark.parametrize("count", [2, 100])
def test_lines_racing_with_packets_across_claim_words_forward_one_copy(arbiter, count):
    """Packets whose sequences span two or more claim words (32 each), both
    lines in lockstep on two CPUs: one copy of each packet is forwarded. The
    claim takes its words one CAS at a time, so without the copy record a
    copy could win the first word while the other won the next one, and the
    trader would get the same packet twice."""
    n = 10_000 if count == 2 else 2_000
    first = 31 if count == 2 else 1  # [31, 32] straddles words 0 and 1, and so on each 32
    packets = [mold(first + (32 if count == 2 else count) * i, count) for i in range(n)]
    a, b = _race(arbiter, packets)
    twice = sum(x == y == XDP_REDIRECT for x, y in zip(a, b))
    assert twice == 0
    assert all(XDP_REDIRECT in (x, y) for x, y in zip(a, b))
