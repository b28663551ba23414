"""Packet fixtures for tp_steer: scapy builds the packet, BPF_PROG_TEST_RUN
runs the program, the test checks the verdict and the bytes it left."""
import ctypes

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from appliance import layout
from tests.kernel.conftest import MAC, now_ns

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
XDP_PASS, XDP_REDIRECT = 2, 4
ORDERS, MARKETDATA = 0, 1
A, B = 0, 1
TRADER_MAC, GW_INT_MAC = "02:00:00:00:01:01", "02:00:00:00:01:fe"


def packet(dst="198.19.0.10", l4=None, ttl=64, **ip):
    l4 = UDP(sport=40000, dport=9000) if l4 is None else l4
    return Ether(src=TRADER_MAC, dst=GW_INT_MAC) / IP(src="198.18.1.1", dst=dst, ttl=ttl, **ip) / l4 / (b"x" * 32)


def _side_effects(gateway):
    gw = gateway.gw
    return (gw.global_stats(), [gw.counters(c, l) for c in (ORDERS, MARKETDATA) for l in (A, B)], gw.pair().fenced)


@pytest.fixture(params=["tc", "xdp"])
def steer(request, gateway):
    """Runs a frame through steering as the kernel does on the ingress: the
    TC program alone, or ("xdp") the XDP program first and TC on what it
    passes. Either way it returns the TC verdict the packet ends with
    (XDP's redirect as TC_ACT_REDIRECT) and the bytes. The fixture links
    take XDP redirects, so in "xdp" mode every forward must be XDP's own,
    and what XDP passes it passes untouched and uncounted."""
    def run(raw: bytes):
        if request.param == "xdp":
            before = _side_effects(gateway)
            verdict, out = gateway.run(gateway.gw.steer_xdp, raw)
            if verdict == XDP_REDIRECT:
                assert gateway.gw.global_stats()["xdp_forwarded"] == before[0]["xdp_forwarded"] + 1
                return TC_ACT_REDIRECT, out
            assert (verdict, out) == (XDP_PASS, raw)
            assert _side_effects(gateway) == before, "XDP counted a packet it left to TC"
            verdict, out = gateway.run(gateway.gw.steer, raw)
            assert verdict != TC_ACT_REDIRECT, "TC forwarded what XDP could have"
            return verdict, out
        return gateway.run(gateway.gw.steer, raw)
    return run


def assert_forwarded(out: bytes, sent, link: str):
    got, want = Ether(out), sent.copy()
    assert (got.dst, got.src) == (MAC[f"{link}.nh"], MAC[f"{link}.src"])
    assert got[IP].ttl == want[IP].ttl - 1
    check = got[IP].chksum
    del got[IP].chksum
    assert check == IP(bytes(got[IP])).chksum, "IP checksum not updated correctly"
    assert bytes(got[IP].payload) == bytes(want[IP].payload), "steering must not touch L4"


@pytest.mark.parametrize("l4,link", [
    (UDP(sport=40000, dport=9000), "A"),           # orders, udp, low end of range
    (TCP(sport=40000, dport=9099, flags="S"), "A"),  # orders, any proto, high end
    (UDP(sport=40000, dport=9150), "B"),           # marketdata prefers B
])
def test_classified_packet_goes_to_its_class_link(gateway, l4, link, steer):
    pkt = packet(l4=l4)
    verdict, out = steer(bytes(pkt))
    assert verdict == TC_ACT_REDIRECT
    assert_forwarded(out, pkt, link)
    cls = ORDERS if link == "A" or l4.dport < 9100 else MARKETDATA
    counters = gateway.gw.counters(cls, "AB".index(link))
    assert counters == {"packets": 1, "bytes": len(pkt), "redirects": 1, "failovers": 0}


def with_header_checksum(checksum: int):
    """An order whose IP header checksum is `checksum`, by choice of its IP id."""
    base = IP(bytes(packet(l4=UDP(sport=40000, dport=9000), id=0)[IP]))
    rest = (~base.chksum) & 0xFFFF                 # the header's ones-complement sum without an id
    ident = (~checksum & 0xFFFF) + (~rest & 0xFFFF)  # want rest + id = ~checksum: add ~rest
    ident = (ident & 0xFFFF) + (ident >> 16)
    pkt = packet(l4=UDP(sport=40000, dport=9000), id=ident & 0xFFFF)
    assert IP(bytes(pkt[IP])).chksum == checksum
    return pkt


# The TTL step adds 0x0100 to the checksum (network order) with the end-around
# carry: these are the values where it carries or wraps.
@pytest.mark.parametrize("checksum", [0xFEFF, 0xFF00, 0xFFFE, 0xFEFE, 0x00FF, 0x0000, 0x0100, 0x1234])
def test_forwarded_header_checksum_is_right_where_the_ttl_step_carries(checksum, steer):
    pkt = with_header_checksum(checksum)
    verdict, out = steer(bytes(pkt))
    assert verdict == TC_ACT_REDIRECT
    assert_forwarded(out, pkt, "A")


@pytest.mark.parametrize("pkt,stat", [
    (packet(l4=UDP(dport=8999)), "no_rule"),                        # port outside every rule
    (packet(l4=TCP(dport=9150)), "no_rule"),                        # marketdata is udp-only
    (packet(dst="198.18.1.254"), "no_rule"),                        # to the gateway itself
    (packet(l4=ICMP()), "no_rule"),                                 # no ports: not in 9000-9099
    (packet(ttl=1), "ttl_expired"),                                 # stack sends time-exceeded
    (packet(options=[b"\x01" * 4]), "unparsed"),                    # IP options
    (packet(flags="MF"), "unparsed"),                               # a fragment
    (Ether(src=TRADER_MAC) / ARP(pdst="198.18.1.254"), "not_ipv4"),
    (Ether(src=TRADER_MAC) / IPv6(dst="2001:2::10") / UDP(dport=9000), "not_ipv4"),
])
def test_everything_else_takes_kernel_routing_untouched(gateway, pkt, stat, steer):
    raw = bytes(pkt)
    verdict, out = steer(raw)
    assert verdict == TC_ACT_OK
    assert out == raw
    assert gateway.gw.global_stats()[stat] == 1


# BPF_PROG_TEST_RUN itself refuses an IPv4 frame shorter than Ethernet + IP
# (EINVAL), so truncation is exercised from there into the L4 header.
@pytest.mark.parametrize("cut", [34, 37, 41])
def test_truncated_packets_pass_untouched(gateway, cut, steer):
    raw = bytes(packet())[:cut]
    verdict, out = steer(raw)
    assert (verdict, out) == (TC_ACT_OK, raw)


def _rewrite(pkt, offset: int, value: bytes, fix_checksum: bool = True) -> bytes:
    """The frame with bytes at IP-header offset replaced (checksum recomputed
    over the new header unless told not to)."""
    raw = bytearray(bytes(pkt))
    raw[14 + offset:14 + offset + len(value)] = value
    if fix_checksum:
        ihl = (raw[14] & 0x0F) * 4
        raw[24:26] = b"\0\0"
        header = bytes(raw[14:14 + ihl])
        s = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, len(header), 2))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        raw[24:26] = (~s & 0xFFFF).to_bytes(2, "big")
    return bytes(raw)


MALFORMED = {
    # what ip_rcv() drops; steering used to forward every one of these
    "bad_header_checksum": lambda p: _rewrite(p, 10, b"\x12\x34", fix_checksum=False),
    "total_length_past_the_frame": lambda p: _rewrite(p, 2, (len(p) - 14 + 1).to_bytes(2, "big")),
    "total_length_shorter_than_header": lambda p: _rewrite(p, 2, (19).to_bytes(2, "big")),
    "version_6_in_an_ipv4_frame": lambda p: _rewrite(p, 0, b"\x65"),
    "header_length_below_5": lambda p: _rewrite(p, 0, b"\x44"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_headers_the_kernel_rejects_pass_to_the_stack_untouched(gateway, name, steer):
    """Passed, not dropped: the stack then drops and counts them exactly as
    it would without twinpath; steering never forwards what it would not."""
    raw = MALFORMED[name](packet())
    verdict, out = steer(raw)
    assert (verdict, out) == (TC_ACT_OK, raw)
    stats = gateway.gw.global_stats()
    assert stats["malformed"] == 1
    assert gateway.gw.counters(ORDERS, A)["redirects"] == 0


def test_ports_past_the_ip_packet_are_never_matched(gateway, steer):
    """A UDP packet whose IP total length ends before its ports: the bytes
    after it are Ethernet padding, not ports."""
    raw = _rewrite(packet(), 2, (20 + 2).to_bytes(2, "big"))
    verdict, out = steer(raw)
    assert (verdict, out) == (TC_ACT_OK, raw)
    assert gateway.gw.global_stats()["unparsed"] == 1


def test_ethernet_padding_after_the_ip_packet_is_forwarded_untouched(gateway, steer):
    pkt = packet()
    raw = bytes(pkt) + b"\xAA" * 6
    verdict, out = steer(raw)
    assert verdict == TC_ACT_REDIRECT
    assert out[-6:] == b"\xAA" * 6
    assert_forwarded(out[:-6], pkt, "A")


def test_stale_link_with_fresh_standby_switches_at_once(gateway, steer):
    gateway.set_fresh(A, age_ns=1_000_000_000)   # 1 s silent > 300 ms dead interval
    pkt = packet()
    verdict, out = steer(bytes(pkt))
    assert verdict == TC_ACT_REDIRECT
    assert_forwarded(out, pkt, "B")
    assert gateway.gw.active()[ORDERS] == B
    assert len(gateway.events) == 1
    cls, frm, to, cause, silence = gateway.events[0]
    assert (cls, frm, to, layout.CAUSES[cause]) == (ORDERS, A, B, "heartbeat")
    assert 1_000_000_000 <= silence < 10_000_000_000
    assert gateway.gw.counters(ORDERS, A)["failovers"] == 1
    # Later packets follow without another event.
    verdict, out = steer(bytes(pkt))
    assert_forwarded(out, pkt, "B")
    assert len(gateway.events) == 1


def test_link_just_inside_dead_interval_does_not_switch(gateway, steer):
    gateway.set_fresh(A, age_ns=200_000_000)    # 200 ms < 300 ms
    verdict, out = steer(bytes(packet()))
    assert Ether(out).dst == MAC["A.nh"]
    assert gateway.events == []


def test_carrier_loss_switches_with_carrier_cause(gateway, steer):
    gateway.set_link(A, carrier=False)
    verdict, out = steer(bytes(packet()))
    assert Ether(out).dst == MAC["B.nh"]
    assert layout.CAUSES[gateway.events[0][3]] == "carrier"


def test_all_links_stale_stays_put(gateway, steer):
    gateway.set_fresh(A, age_ns=1_000_000_000)
    gateway.set_fresh(B, age_ns=1_000_000_000)
    verdict, out = steer(bytes(packet()))
    assert verdict == TC_ACT_REDIRECT
    assert Ether(out).dst == MAC["A.nh"]
    assert gateway.gw.active()[ORDERS] == A
    assert gateway.events == []
    assert gateway.gw.global_stats()["all_stale"] == 1


@pytest.mark.parametrize("standby_problem", ["no_nexthop", "no_carrier", "never_replied"])
def test_unusable_standby_is_never_chosen(gateway, standby_problem, steer):
    gateway.set_fresh(A, age_ns=1_000_000_000)
    if standby_problem == "no_nexthop":
        gateway.set_link(B, nexthop=False)
    elif standby_problem == "no_carrier":
        gateway.set_link(B, carrier=False)
    else:
        gateway.set_fresh(B, age_ns=None)
    verdict, out = steer(bytes(packet()))
    assert Ether(out).dst == MAC["A.nh"]
    assert gateway.events == []


def test_current_link_without_nexthop_falls_back_to_kernel_routing(gateway, steer):
    gateway.set_link(A, nexthop=False)
    gateway.set_link(B, carrier=False)
    raw = bytes(packet())
    verdict, out = steer(raw)
    assert (verdict, out) == (TC_ACT_OK, raw)
    assert gateway.gw.global_stats()["no_nexthop"] == 1


def test_sender_stall_ages_links_together_and_nothing_switches(gateway, steer):
    # A stalled probe sender: both links' last replies come from one period.
    # A has crossed the dead interval; B, answered 80 ms (< one interval)
    # later, is still within it, but is no evidence that A failed.
    gateway.set_fresh(A, age_ns=330_000_000)
    gateway.set_fresh(B, age_ns=250_000_000)
    verdict, out = steer(bytes(packet()))
    assert Ether(out).dst == MAC["A.nh"]
    assert gateway.events == []
    assert gateway.gw.global_stats()["all_stale"] == 1


def test_sender_preempted_mid_round_switches_nothing(gateway, steer):
    # The sender sent B's probe, then was preempted before A's: A's last
    # answer is one round older than B's, so A looks silent a round early.
    # One round newer is no evidence; the rule asks for (multiplier - 1) = 2
    # intervals.
    gateway.set_fresh(A, age_ns=320_000_000)
    gateway.set_fresh(B, age_ns=200_000_000)   # 120 ms newer: a bit over one round
    verdict, out = steer(bytes(packet()))
    assert Ether(out).dst == MAC["A.nh"]
    assert gateway.events == []


@pytest.mark.parametrize("unanswered", [0, 1])
def test_sender_resuming_after_a_stall_switches_nothing(gateway, unanswered, steer):
    # The sender was held off the CPU for longer than the dead interval and
    # has just resumed: B answered its first probe of the round, A's is in
    # flight (or not sent yet). Silence without unanswered probes is the
    # host's, not the link's.
    gateway.set_fresh(A, age_ns=1_000_000_000, unanswered=unanswered)
    gateway.set_fresh(B, age_ns=0)
    verdict, out = steer(bytes(packet()))
    assert Ether(out).dst == MAC["A.nh"]
    assert gateway.events == []
    assert gateway.gw.global_stats()["all_stale"] == 0


def test_link_is_dead_once_multiplier_minus_one_probes_went_unanswered(gateway, steer):
    gateway.set_fresh(A, age_ns=1_000_000_000, unanswered=2)   # multiplier 3
    gateway.set_fresh(B, age_ns=0)
    verdict, out = steer(bytes(packet()))
    assert Ether(out).dst == MAC["B.nh"]
    assert len(gateway.events) == 1


def test_rounds_whose_probe_never_reached_egress_count_as_missed(gateway, steer):
    # Carrier loss flushes the link's neighbour: its probes wait for ARP and
    # are dropped before the egress program, with no error to the sender.
    # Other links' probes of those rounds were stamped: the rounds are missed.
    gateway.set_fresh(A, age_ns=1_000_000_000, unanswered=0, stamped_seq=100)
    gateway.set_fresh(B, age_ns=0, stamped_seq=102)
    gateway.gw.bpf["tp_probe_round"][ctypes.c_uint32(0)] = layout.Round(seq=101)
    verdict, out = steer(bytes(packet()))
    assert Ether(out).dst == MAC["A.nh"]            # one round: a sender preempted mid-round looks the same
    gateway.gw.bpf["tp_probe_round"][ctypes.c_uint32(0)] = layout.Round(seq=102)
    verdict, out = steer(bytes(packet()))
    assert Ether(out).dst == MAC["B.nh"]
    assert len(gateway.events) == 1


def test_silence_counts_from_a_new_senders_first_round(gateway, steer):
    # A restarted sender (daemon restart, upgrade) finds every link's last
    # reply older than the dead interval: its start-up was the gap. The
    # current link's probes of the new sender missed, but it has not been
    # silent for the dead interval of probing: it stays.
    dead_ns = gateway.gw.cfg.heartbeat.dead_ns
    rounds, zero = gateway.gw.bpf["tp_probe_round"], ctypes.c_uint32(0)
    gateway.set_fresh(A, age_ns=10 * dead_ns, unanswered=2)
    gateway.set_fresh(B, age_ns=0)
    rounds[zero] = layout.Round(started_ns=now_ns() - dead_ns // 3)
    verdict, out = steer(bytes(packet()))
    assert Ether(out).dst == MAC["A.nh"]
    assert gateway.events == []
    # Silent for the dead interval of the new sender's rounds, while the standby answered later ones: dead.
    rounds[zero] = layout.Round(started_ns=now_ns() - dead_ns - dead_ns // 3)
    verdict, out = steer(bytes(packet()))
    assert Ether(out).dst == MAC["B.nh"]
    (_, frm, to, _, silence), = gateway.events
    assert (frm, to) == (A, B)
    assert dead_ns < silence < 2 * dead_ns     # counted from the sender's start, not from the last reply (10x)


def test_after_a_sender_restart_a_standby_must_answer_later_rounds(gateway, steer):
    dead_ns, interval_ns = gateway.gw.cfg.heartbeat.dead_ns, gateway.gw.cfg.heartbeat.interval_us * 1000
    gateway.gw.bpf["tp_probe_round"][ctypes.c_uint32(0)] = layout.Round(started_ns=now_ns() - dead_ns - interval_ns)
    gateway.set_fresh(A, age_ns=10 * dead_ns, unanswered=2)
    gateway.set_fresh(B, age_ns=dead_ns - interval_ns // 2)   # answered only the new sender's first round
    verdict, out = steer(bytes(packet()))
    assert Ether(out).dst == MAC["A.nh"]
    assert gateway.events == []
    assert gateway.gw.global_stats()["all_stale"] == 1


def test_standby_answering_later_rounds_wins(gateway, steer):
    gateway.set_fresh(A, age_ns=350_000_000)
    gateway.set_fresh(B, age_ns=100_000_000)   # 250 ms newer: later rounds got through
    verdict, out = steer(bytes(packet()))
    assert Ether(out).dst == MAC["B.nh"]
    assert len(gateway.events) == 1


def test_carrier_loss_needs_only_a_fresh_standby(gateway, steer):
    gateway.set_link(A, carrier=False)
    gateway.set_fresh(B, age_ns=100_000)      # same period as A's last reply
    verdict, out = steer(bytes(packet()))
    assert Ether(out).dst == MAC["B.nh"]



@pytest.mark.parametrize("mode,forwards", [(layout.PAIR_NONE, True), (layout.PAIR_ACTIVE, True),
                                           (layout.PAIR_STANDBY, False)])
def test_the_pair_gate_drops_class_traffic_only_on_a_standby(gateway, mode, forwards, steer):
    """A standby never forwards an order the trader still sends it (a stale
    neighbour entry): the HA pair's fence in the data path. What no rule
    matches (the pair's own heartbeats, ARP, ...) takes kernel routing on
    either."""
    gateway.gw.write_pair(mode, 7)
    order = packet()
    verdict, out = steer(bytes(order))
    assert verdict == (TC_ACT_REDIRECT if forwards else TC_ACT_SHOT)
    if forwards:
        assert_forwarded(out, order, "A")
    other = bytes(packet(l4=ICMP()))
    assert steer(other) == (TC_ACT_OK, other)
    gate = gateway.gw.pair()
    assert (gate.mode, gate.token, gate.fenced) == (mode, 7, 0 if forwards else 1)
    assert gateway.gw.counters(ORDERS, A)["packets"] == (1 if forwards else 0)


# -- where the rules live: the small table, or the trie for a larger rule set --
def _prefix_table_live(gateway) -> int:
    return gateway.gw.bpf["tp_prefix_table"][ctypes.c_uint32(0)].live


def _assert_lab_rules_hold(steer):
    for dport, link in ((9000, "A"), (9150, "B")):
        pkt = packet(l4=UDP(sport=40000, dport=dport))
        verdict, out = steer(bytes(pkt))
        assert verdict == TC_ACT_REDIRECT
        assert_forwarded(out, pkt, link)
    assert steer(bytes(packet(l4=UDP(sport=40000, dport=9300))))[0] == TC_ACT_OK


def test_steer_matches_from_the_live_small_table_not_the_trie(gateway, steer):
    tables = gateway.gw.bpf["tp_prefix_table"]
    live = ctypes.c_uint32(_prefix_table_live(gateway))
    emptied = tables[live]
    emptied.n = 0
    tables[live] = emptied  # the trie still holds every rule
    assert steer(bytes(packet()))[0] == TC_ACT_OK


def test_a_rewrite_of_the_small_table_fills_the_spare_and_flips(gateway, steer):
    live = _prefix_table_live(gateway)
    assert live in (1, 2)
    gateway.gw.write_rules()
    assert _prefix_table_live(gateway) == 3 - live
    _assert_lab_rules_hold(steer)


def test_a_rule_set_larger_than_the_small_table_matches_through_the_trie(gateway, fixture_config, steer):
    from appliance.core import config
    from lab.topology import render_config
    from tests.kernel.conftest import FIXTURE_INTERVAL_NS
    extra = "".join(f'\n[[rules]]\nclass = "quotes"\ndst = "198.18.{200 + i}.0/24"\nproto = "udp"\n'
                    f'ports = "1-65535"\n' for i in range(layout.SMALL_PREFIXES))
    big = config.parse(render_config(interval_us=FIXTURE_INTERVAL_NS // 1000) + extra, "fixture-big")
    gw = gateway.gw
    try:
        gw.cfg = big
        gw.write_rules()
        assert _prefix_table_live(gateway) == 0
        _assert_lab_rules_hold(steer)
        assert steer(bytes(packet(dst="198.18.207.9", l4=UDP(sport=1, dport=5))))[0] == \
            TC_ACT_REDIRECT
        assert steer(bytes(packet(dst="198.18.199.9", l4=UDP(sport=1, dport=5))))[0] == TC_ACT_OK
    finally:
        gw.cfg = fixture_config
        gw.write_rules()
    assert _prefix_table_live(gateway) in (1, 2)
    _assert_lab_rules_hold(steer)


# -- XDP in front of TC: forwards only to a link that takes XDP redirects ----
def test_xdp_leaves_a_link_without_xdp_redirects_to_tc(gateway):
    """The kernel drops an XDP frame redirected to a device that does not
    take them: XDP passes the packet, untouched and uncounted, and TC
    forwards it as before."""
    gateway.set_link(A, xdp_target=False)
    pkt = packet()
    raw = bytes(pkt)
    assert gateway.run(gateway.gw.steer_xdp, raw) == (XDP_PASS, raw)
    assert gateway.gw.counters(ORDERS, A) == {"packets": 0, "bytes": 0, "redirects": 0, "failovers": 0}
    verdict, out = gateway.run(gateway.gw.steer, raw)
    assert verdict == TC_ACT_REDIRECT
    assert_forwarded(out, pkt, "A")
    assert gateway.gw.counters(ORDERS, A) == {"packets": 1, "bytes": len(pkt), "redirects": 1, "failovers": 0}
    assert gateway.gw.global_stats()["xdp_forwarded"] == 0
    # Marketdata's link B still takes XDP redirects.
    md = packet(l4=UDP(sport=40000, dport=9150))
    verdict, out = gateway.run(gateway.gw.steer_xdp, bytes(md))
    assert verdict == XDP_REDIRECT
    assert_forwarded(out, md, "B")
    assert gateway.gw.global_stats()["xdp_forwarded"] == 1


def test_a_reflex_move_made_at_xdp_stands_when_tc_forwards(gateway):
    """XDP finds A dead and moves orders to B, which takes no XDP redirects:
    one move, one event, and TC forwards on B without moving again."""
    gateway.set_fresh(A, age_ns=1_000_000_000)
    gateway.set_link(B, xdp_target=False)
    pkt = packet()
    raw = bytes(pkt)
    assert gateway.run(gateway.gw.steer_xdp, raw) == (XDP_PASS, raw)
    assert gateway.gw.active()[ORDERS] == B
    verdict, out = gateway.run(gateway.gw.steer, raw)
    assert verdict == TC_ACT_REDIRECT
    assert_forwarded(out, pkt, "B")
    assert len(gateway.events) == 1
    assert gateway.gw.counters(ORDERS, A)["failovers"] == 1
    assert gateway.gw.counters(ORDERS, B) == {"packets": 1, "bytes": len(pkt), "redirects": 1, "failovers": 0}


def test_all_stale_is_counted_once_when_xdp_passes(gateway):
    gateway.set_fresh(A, age_ns=1_000_000_000)
    gateway.set_fresh(B, age_ns=1_000_000_000)
    gateway.set_link(A, xdp_target=False)
    raw = bytes(packet())
    assert gateway.run(gateway.gw.steer_xdp, raw) == (XDP_PASS, raw)
    assert gateway.run(gateway.gw.steer, raw)[0] == TC_ACT_REDIRECT
    assert gateway.gw.global_stats()["all_stale"] == 1
