"""Packet fixtures for the heartbeat programs: egress stamps the probe with the
kernel clock and signs it (keeping the ICMP checksum valid); ingress turns
a genuine echo into an RTT sample and link freshness, and refuses every reply
an attacker on a carrier can make: forged, replayed, misaddressed, corrupt."""
import ctypes

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether

from appliance import layout
from appliance.edge.dataplane import PROBE_IDENT
from lab.siphash import probe_mac
from tests.kernel.conftest import ADDR, FIXTURE_KEYS, now_ns

TC_ACT_OK, TC_ACT_SHOT = 0, 2
A, B = 0, 1
PAYLOAD = slice(8, 8 + ctypes.sizeof(layout.Probe))
SIGNER_ID, SIGNER_KEY = FIXTURE_KEYS[0]


def mac_for(link: int, key: bytes, key_id: int, seq: int, tx_ns: int) -> int:
    name = "AB"[link]
    return probe_mac(key, ADDR[f"{name}.local"], ADDR[f"{name}.target"], link, key_id, seq, tx_ns)


def probe_packet(link=A, echo_type=8, ident=PROBE_IDENT, tx_ns=0, seq=7, magic=None, key_id=0, mac=0,
                 src=None, dst=None, ttl=64, extra=b""):
    """An echo as the wire carries it. Requests go local -> target, replies
    target -> local; a reply is validly signed only if mac is given."""
    name = "AB"[link]
    local, target = ADDR[f"{name}.local"], ADDR[f"{name}.target"]
    if echo_type == 8:
        src, dst = src or local, dst or target
    else:
        src, dst = src or target, dst or local
    icmp = bytearray(layout.probe_template(link, ident))
    icmp[0] = echo_type
    probe = layout.Probe.from_buffer(icmp, PAYLOAD.start)
    probe.tx_ns, probe.seq, probe.key_id, probe.mac = tx_ns, seq, key_id, mac
    if magic is not None:
        probe.magic = magic
    msg = ICMP(bytes(icmp) + extra)
    del msg.chksum
    return Ether() / IP(src=src, dst=dst, ttl=ttl) / ICMP(bytes(msg))


def reply(link=A, seq=7, age_ns=50_000, key=(SIGNER_ID, SIGNER_KEY), tx_ns=None, **kw):
    """A genuine reply to a probe sent age_ns ago, signed with key."""
    tx = now_ns() - age_ns if tx_ns is None else tx_ns
    return probe_packet(link=link, echo_type=0, tx_ns=tx, seq=seq, key_id=key[0],
                        mac=mac_for(link, key[1], key[0], seq, tx), **kw)


def probe_of(out: bytes) -> layout.Probe:
    return layout.Probe.from_buffer_copy(bytes(Ether(out)[ICMP])[PAYLOAD])


def assert_icmp_checksum_valid(out: bytes):
    icmp = Ether(out)[ICMP]
    sent = icmp.chksum
    del icmp.chksum
    assert sent == ICMP(bytes(icmp)).chksum


def run_in(gateway, pkt):
    return gateway.run(gateway.gw.hb_ingress, bytes(pkt))[0]


def test_egress_stamps_kernel_time_signs_and_keeps_checksum_valid(gateway):
    unanswered = gateway.gw.health()[A].unanswered
    before = now_ns()
    verdict, out = gateway.run(gateway.gw.hb_egress, bytes(probe_packet(echo_type=8, seq=1234)))
    after = now_ns()
    assert verdict == TC_ACT_OK
    probe = probe_of(out)
    assert before <= probe.tx_ns <= after
    assert probe.key_id == SIGNER_ID
    # The kernel's SipHash-2-4 equals the reference over the documented message.
    assert probe.mac == mac_for(A, SIGNER_KEY, SIGNER_ID, 1234, probe.tx_ns)
    assert_icmp_checksum_valid(out)
    assert gateway.gw.health()[A].probes == 1
    assert gateway.gw.health()[A].unanswered == unanswered + 1
    assert gateway.gw.health()[A].stamped_seq == 1234
    rounds = gateway.gw.bpf["tp_probe_round"][ctypes.c_uint32(0)]
    assert rounds.seq == 1234
    assert rounds.started_ns == probe.tx_ns    # no sender had stamped a round: this one starts


def test_only_a_new_senders_first_round_is_its_start(gateway):
    rounds, zero = gateway.gw.bpf["tp_probe_round"], ctypes.c_uint32(0)
    dead_ns = gateway.gw.cfg.heartbeat.dead_ns
    # A running sender's round, even after a stall past the dead interval, is not a start.
    started = now_ns() - 10 * dead_ns
    rounds[zero] = layout.Round(seq=10, started_ns=started)
    gateway.run(gateway.gw.hb_egress, bytes(probe_packet(echo_type=8, seq=11)))
    assert (rounds[zero].seq, rounds[zero].started_ns) == (11, started)
    # The daemon zeroes started_ns before it starts a sender: its first round is.
    gateway.gw.reset_probe_rounds(20)
    assert (rounds[zero].seq, rounds[zero].started_ns) == (20, 0)
    tx = probe_of(gateway.run(gateway.gw.hb_egress, bytes(probe_packet(echo_type=8, seq=21)))[1]).tx_ns
    assert (rounds[zero].seq, rounds[zero].started_ns) == (21, tx)
    # The next link's probe of that round, and the next round, change no start.
    gateway.run(gateway.gw.hb_egress, bytes(probe_packet(echo_type=8, seq=21)))
    gateway.run(gateway.gw.hb_egress, bytes(probe_packet(echo_type=8, seq=22)))
    assert (rounds[zero].seq, rounds[zero].started_ns) == (22, tx)


@pytest.mark.parametrize("pkt", [
    probe_packet(ident=PROBE_IDENT + 1),            # someone else's ping
    probe_packet(magic=0xDEADBEEF),                 # our identifier, not our payload
    probe_packet(echo_type=0),                      # a reply leaving: not ours to stamp
    probe_packet(extra=b"x" * 8),                   # longer than a probe
])
def test_egress_leaves_other_icmp_untouched(gateway, pkt):
    raw = bytes(pkt)
    assert gateway.run(gateway.gw.hb_egress, raw) == (TC_ACT_OK, raw)
    assert gateway.gw.global_stats()["probe_stamped"] == 0


@pytest.mark.parametrize("where", ["other_interface", "other_source", "other_target"])
def test_egress_signs_only_on_the_links_own_interface_and_addresses(gateway, where):
    """A probe-shaped packet anywhere else (another link's id on this
    device, a spoofed source) stays unsigned: no reply can vouch for it."""
    pkt = probe_packet(echo_type=8)
    if where == "other_interface":
        gateway.set_link(A, ifindex=999)
    elif where == "other_source":
        pkt = probe_packet(echo_type=8, src="198.18.10.77")
    else:
        pkt = probe_packet(echo_type=8, dst="198.18.10.77")
    raw = bytes(pkt)
    assert gateway.run(gateway.gw.hb_egress, raw) == (TC_ACT_OK, raw)
    stats = gateway.gw.global_stats()
    assert (stats["probe_stamped"], stats["probe_foreign"]) == (0, 1)
    assert gateway.gw.health()[A].probes == 0


def test_egress_output_is_accepted_by_ingress_once(gateway):
    """The round trip: what egress signs, echoed by the target, is accepted;
    the same echo again is a replay."""
    gateway.set_fresh(A, age_ns=None, unanswered=0)
    _, out = gateway.run(gateway.gw.hb_egress, bytes(probe_packet(echo_type=8, seq=99)))
    assert gateway.gw.health()[A].unanswered == 1
    echo = Ether(out)
    echo[IP].src, echo[IP].dst = echo[IP].dst, echo[IP].src
    echo[ICMP].type = 0
    del echo[IP].chksum, echo[ICMP].chksum
    assert run_in(gateway, echo) == TC_ACT_SHOT
    assert (gateway.gw.health()[A].replies, gateway.gw.health()[A].unanswered) == (1, 0)
    assert run_in(gateway, echo) == TC_ACT_SHOT
    stats = gateway.gw.global_stats()
    assert (stats["reply_ok"], stats["reply_replayed"]) == (1, 1)


def test_ingress_reply_records_rtt_and_freshness(gateway):
    gateway.set_fresh(A, age_ns=None)                # never heard from
    tx = now_ns() - 50_000                           # sent 50 us ago
    verdict = run_in(gateway, reply(seq=42, tx_ns=tx))
    after = now_ns()
    assert verdict == TC_ACT_SHOT                    # consumed: results live in maps
    h = gateway.gw.health()[A]
    assert h.replies == 1 and h.seq_top == 42
    assert tx < h.last_reply_ns <= after
    assert h.fresh_since_ns == h.last_reply_ns       # a new run of replies starts
    assert 50_000 <= h.rtt_last_ns == h.rtt_ewma_ns < 50_000 + (after - tx)
    hist = gateway.gw.rtt_histogram(A)
    (bucket,) = [b for b, n in enumerate(hist) if n]
    low, high = layout.hist_bucket_bounds_us(bucket)
    assert low <= h.rtt_last_ns / 1000 < high
    assert gateway.gw.global_stats()["reply_ok"] == 1
    ring = gateway.gw.rtt_rings()[A]
    slot = 42 % layout.RTT_RING
    assert (ring.seq[slot], ring.rtt_ns[slot]) == (42, h.rtt_last_ns)
    assert sum(1 for s in ring.seq if s) == 1


def test_ingress_keeps_fresh_since_while_replies_keep_coming(gateway):
    gateway.set_fresh(A, age_ns=100_000_000, fresh_for_ns=5_000_000_000)
    since = gateway.gw.health()[A].fresh_since_ns
    run_in(gateway, reply(age_ns=10_000))
    assert gateway.gw.health()[A].fresh_since_ns == since


def test_ingress_accepts_the_second_key_slot_for_rotation(gateway):
    gateway.set_fresh(A, age_ns=None)
    assert run_in(gateway, reply(key=FIXTURE_KEYS[1])) == TC_ACT_SHOT
    assert gateway.gw.health()[A].replies == 1


def test_ttl_security_requires_255_only_where_configured(gateway):
    gateway.set_fresh(A, age_ns=None)
    run_in(gateway, reply(seq=1, ttl=1))             # GTSM off: any TTL
    gateway.set_link(A, ttl_security=True)
    run_in(gateway, reply(seq=2, ttl=254))            # one hop away: refused
    run_in(gateway, reply(seq=3, ttl=255))
    stats = gateway.gw.global_stats()
    assert (stats["reply_ok"], stats["reply_bad"]) == (2, 1)


def _corrupt(pkt, field):
    raw = bytearray(bytes(pkt))
    if field == "icmp_checksum":
        raw[14 + 20 + 2] ^= 0xFF
    elif field == "ip_checksum":
        raw[14 + 10] ^= 0xFF
    elif field == "ip_version":
        raw[14] = 0x65
    return bytes(raw)


def _future(gw):
    return reply(tx_ns=now_ns() + 10**9)


REJECTED = {
    # name: (reply builder, counter); each one kept link A fresh before the fix
    "forged_mac": (lambda gw: probe_packet(echo_type=0, tx_ns=now_ns() - 10_000, seq=5, key_id=SIGNER_ID,
                                           mac=0x1234), "reply_forged"),
    "unknown_key": (lambda gw: reply(key=(42, SIGNER_KEY)), "reply_forged"),
    "forged_with_tx_1": (lambda gw: probe_packet(echo_type=0, tx_ns=1, seq=5), "reply_forged"),
    "signed_for_link_b": (lambda gw: probe_packet(echo_type=0, tx_ns=(t := now_ns() - 10_000), seq=5,
                                                  key_id=SIGNER_ID, mac=mac_for(B, SIGNER_KEY, SIGNER_ID, 5, t)),
                          "reply_forged"),
    "older_than_dead_interval": (lambda gw: reply(age_ns=400_000_000), "reply_replayed"),
    "stamp_in_future": (_future, "reply_replayed"),
    "never_stamped": (lambda gw: reply(tx_ns=0), "reply_replayed"),
    "wrong_source": (lambda gw: reply(src="198.19.0.66"), "reply_bad"),
    "wrong_destination": (lambda gw: reply(dst="198.18.10.99"), "reply_bad"),
    "bad_icmp_checksum": (lambda gw: _corrupt(reply(), "icmp_checksum"), "reply_bad"),
    "bad_ip_checksum": (lambda gw: _corrupt(reply(), "ip_checksum"), "reply_bad"),
    "ip_version_6_in_ipv4": (lambda gw: _corrupt(reply(), "ip_version"), "reply_bad"),
    "longer_than_a_probe": (lambda gw: reply(extra=b"\0" * 8), "reply_bad"),
}


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_ingress_refuses_replies_that_must_not_make_a_link_fresh(gateway, name):
    build, counter = REJECTED[name]
    gateway.set_fresh(A, age_ns=None)
    pkt = build(gateway)
    assert run_in(gateway, pkt) == TC_ACT_SHOT
    h = gateway.gw.health()[A]
    assert (h.last_reply_ns, h.replies, h.rtt_ewma_ns) == (0, 0, 0)
    assert gateway.gw.global_stats()[counter] == 1
    assert sum(gateway.gw.rtt_histogram(A)) == 0


def test_ingress_refuses_a_reply_on_the_wrong_interface(gateway):
    gateway.set_fresh(A, age_ns=None)
    gateway.set_link(A, ifindex=999)
    assert run_in(gateway, reply()) == TC_ACT_SHOT
    assert gateway.gw.health()[A].replies == 0
    assert gateway.gw.global_stats()["reply_bad"] == 1


def test_anti_replay_window(gateway):
    """Each sequence once; late ones inside the window still count; older
    than the window or seen before, never."""
    gateway.set_fresh(A, age_ns=None)
    top = 1000
    verdicts = [run_in(gateway, reply(seq=s)) for s in (top, top, top - 5, top - 5, top - 64, top + 1)]
    assert verdicts == [TC_ACT_SHOT] * 6
    stats = gateway.gw.global_stats()
    assert (stats["reply_ok"], stats["reply_replayed"]) == (3, 3)
    assert gateway.gw.health()[A].seq_top == top + 1


def test_forged_replies_do_not_move_the_rtt(gateway):
    """2% forged replies used to drag the RTT EWMA to seconds."""
    gateway.set_fresh(A, age_ns=None)
    run_in(gateway, reply(seq=1, age_ns=7_000))
    before = gateway.gw.health()[A].rtt_ewma_ns
    for s in range(2, 50):
        run_in(gateway, probe_packet(echo_type=0, tx_ns=1, seq=s))
    assert gateway.gw.health()[A].rtt_ewma_ns == before < 100_000_000  # the genuine sample only


def test_ingress_passes_everything_else(gateway):
    for pkt in (probe_packet(echo_type=0, ident=1), probe_packet(echo_type=8),
                Ether() / IP(dst="198.18.1.1") / ICMP(type=0) / (b"\0" * 40)):
        raw = bytes(pkt)
        assert gateway.run(gateway.gw.hb_ingress, raw) == (TC_ACT_OK, raw)
    assert gateway.gw.health()[A].replies == 0


# -- waking the daemon while it reads calmly (ebpf/lib/wake.h) ---------------
# A fixture reply's RTT is its age plus the few ms Python takes to sign and
# run it: ages and bounds are tens of ms apart (the fixture's dead interval is 300 ms).
MS = 1_000_000
WAKE = (A, A, layout.CAUSE_WAKE)
NORMAL, LATE = 0, 100 * MS


def arm(gateway, rtt_above_ns=50 * MS, rtt_below_ns=0, change_ns=30 * MS, jitter_ns=0):
    gateway.gw.arm_wake([(rtt_above_ns, rtt_below_ns, change_ns, jitter_ns), (10**9, 0, 10**9, 0)])


def wake_state(gateway) -> tuple[int, int]:
    """(armed, replies beyond a bound among the last TP_WAKE_HISTORY)."""
    w = gateway.gw.bpf["tp_wake"][ctypes.c_uint32(A)]
    return w.armed, bin(w.beyond).count("1")


def wakes(gateway):
    return [ev[1:4] for ev in gateway.events if ev[3] == layout.CAUSE_WAKE]


def replies(gateway, first_seq, ages):
    for seq, age in enumerate(ages, start=first_seq):
        run_in(gateway, reply(seq=seq, age_ns=age))


def test_no_wake_unless_armed(gateway):
    gateway.set_fresh(A, age_ns=None)
    replies(gateway, 10, [NORMAL, LATE, LATE, LATE, LATE, LATE, LATE])
    run_in(gateway, reply(seq=30, age_ns=NORMAL))
    assert wakes(gateway) == []


def test_a_majority_of_recent_replies_beyond_a_bound_wakes_once(gateway):
    """Lone late replies (this VM's spikes) move no median: no wake, however
    far off, and one falls out of the history after TP_WAKE_HISTORY replies.
    The TP_WAKE_MAJORITY-th of the last TP_WAKE_HISTORY does, once: the wake
    disarms. Only the RTT bound here: the change bound is far off."""
    assert (layout.C["TP_WAKE_HISTORY"], layout.C["TP_WAKE_MAJORITY"]) == (8, 5)
    gateway.set_fresh(A, age_ns=None)
    run_in(gateway, reply(seq=1, age_ns=NORMAL))
    arm(gateway, change_ns=10**9)
    replies(gateway, 2, [2 * LATE] + [NORMAL] * 8)
    assert wakes(gateway) == [] and wake_state(gateway) == (1, 0)
    replies(gateway, 11, [LATE, NORMAL, LATE, NORMAL, LATE, LATE])
    assert wakes(gateway) == [] and wake_state(gateway) == (1, 4)
    replies(gateway, 17, [LATE])
    assert wakes(gateway) == [WAKE] and wake_state(gateway)[0] == 0
    replies(gateway, 18, [LATE] * 8)
    assert wakes(gateway) == [WAKE]


def test_a_majority_below_a_lowest_latency_bound_wakes(gateway):
    gateway.set_fresh(A, age_ns=None)
    run_in(gateway, reply(seq=1, age_ns=60 * MS))
    arm(gateway, rtt_below_ns=40 * MS, rtt_above_ns=200 * MS, change_ns=10**9)
    replies(gateway, 2, [NORMAL] * 4)
    assert wakes(gateway) == [] and wake_state(gateway) == (1, 4)
    replies(gateway, 6, [NORMAL])
    assert wakes(gateway) == [WAKE]


def test_the_smoothed_rtt_change_wakes_a_spike_alone_does_not(gateway):
    """RTTs that keep jumping wake the daemon at the smoothed change's bound
    (gain 1/8, each change capped at twice the bound: 60 ms here); a lone
    spike, however large, adds at most two capped changes."""
    gateway.set_fresh(A, age_ns=None)
    run_in(gateway, reply(seq=1, age_ns=NORMAL))
    arm(gateway, rtt_above_ns=10**9)
    replies(gateway, 2, [2 * LATE, NORMAL, NORMAL])            # 7.5 ms, 14.1, then about 12.5
    assert wakes(gateway) == []
    replies(gateway, 5, [LATE, NORMAL, LATE])                  # 18.3, 23.5, 28.1: under 30
    assert wakes(gateway) == [] and wake_state(gateway) == (1, 0)
    replies(gateway, 8, [NORMAL])                              # 32.0
    assert wakes(gateway) == [WAKE]


def test_the_daemon_seeds_the_smoothed_change(gateway):
    gateway.set_fresh(A, age_ns=None)
    run_in(gateway, reply(seq=1, age_ns=NORMAL))
    arm(gateway, rtt_above_ns=10**9, jitter_ns=29 * MS)
    replies(gateway, 2, [NORMAL])                              # a small change brings it down
    assert wakes(gateway) == []
    arm(gateway, rtt_above_ns=10**9, jitter_ns=29 * MS)
    replies(gateway, 3, [LATE])                                # 29 + (60 - 29) / 8 > 30
    assert wakes(gateway) == [WAKE]


def test_two_lost_probes_wake_at_once_one_counts_as_beyond(gateway):
    gateway.set_fresh(A, age_ns=None)
    run_in(gateway, reply(seq=10, age_ns=NORMAL))
    arm(gateway)
    run_in(gateway, reply(seq=12, age_ns=NORMAL))   # 11 lost
    assert wakes(gateway) == [] and wake_state(gateway) == (1, 1)
    run_in(gateway, reply(seq=15, age_ns=NORMAL))   # 13 and 14 lost: a loss run starts
    assert wakes(gateway) == [WAKE]


def test_forged_or_replayed_replies_wake_nobody(gateway):
    gateway.set_fresh(A, age_ns=None)
    run_in(gateway, reply(seq=10, age_ns=NORMAL))
    arm(gateway)
    for seq in (1000, 2000, 3000):   # far ahead and late, but not signed by us
        run_in(gateway, probe_packet(echo_type=0, tx_ns=now_ns() - LATE, seq=seq, key_id=SIGNER_ID, mac=1))
    for _ in range(3):
        run_in(gateway, reply(seq=10, age_ns=LATE))   # replays of an accepted sequence
    assert wakes(gateway) == [] and wake_state(gateway) == (1, 0)
    assert gateway.gw.health()[A].seq_top == 10
