"""Packet fixtures for the heartbeat programs: egress stamps the probe with the
kernel clock (and keeps the ICMP checksum valid), ingress turns the echo into
an RTT sample and link freshness."""
import ctypes

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether

from appliance import layout
from appliance.dataplane import PROBE_IDENT
from tests.kernel.conftest import now_ns

TC_ACT_OK, TC_ACT_SHOT = 0, 2
A, B = 0, 1
PAYLOAD = slice(8, 8 + ctypes.sizeof(layout.Probe))


def probe_packet(link=A, echo_type=8, ident=PROBE_IDENT, tx_ns=0, seq=7, magic=None):
    icmp = bytearray(layout.probe_template(link, ident))
    icmp[0] = echo_type
    probe = layout.Probe.from_buffer(icmp, PAYLOAD.start)
    probe.tx_ns, probe.seq = tx_ns, seq
    if magic is not None:
        probe.magic = magic
    msg = ICMP(bytes(icmp))
    del msg.chksum
    return Ether() / IP(src="198.18.10.2", dst="198.18.10.1") / ICMP(bytes(msg))


def probe_of(out: bytes) -> layout.Probe:
    return layout.Probe.from_buffer_copy(bytes(Ether(out)[ICMP])[PAYLOAD])


def assert_icmp_checksum_valid(out: bytes):
    icmp = Ether(out)[ICMP]
    sent = icmp.chksum
    del icmp.chksum
    assert sent == ICMP(bytes(icmp)).chksum


def test_egress_stamps_kernel_time_and_keeps_checksum_valid(gateway):
    before = now_ns()
    verdict, out = gateway.run(gateway.gw.hb_egress, bytes(probe_packet(echo_type=8)))
    after = now_ns()
    assert verdict == TC_ACT_OK
    assert before <= probe_of(out).tx_ns <= after
    assert_icmp_checksum_valid(out)
    assert gateway.gw.health()[A].probes == 1


@pytest.mark.parametrize("pkt", [
    probe_packet(ident=PROBE_IDENT + 1),            # someone else's ping
    probe_packet(magic=0xDEADBEEF),                 # our identifier, not our payload
    probe_packet(echo_type=0),                      # a reply leaving: not ours to stamp
])
def test_egress_leaves_other_icmp_untouched(gateway, pkt):
    raw = bytes(pkt)
    assert gateway.run(gateway.gw.hb_egress, raw) == (TC_ACT_OK, raw)
    assert gateway.gw.global_stats()["probe_stamped"] == 0


def test_ingress_reply_records_rtt_and_freshness(gateway):
    gateway.set_fresh(A, age_ns=None)                # never heard from
    tx = now_ns() - 50_000                           # sent 50 us ago
    verdict, _ = gateway.run(gateway.gw.hb_ingress, bytes(probe_packet(echo_type=0, tx_ns=tx, seq=42)))
    after = now_ns()
    assert verdict == TC_ACT_SHOT                    # consumed: results live in maps
    h = gateway.gw.health()[A]
    assert h.replies == 1 and h.last_seq == 42
    assert tx < h.last_reply_ns <= after
    assert h.fresh_since_ns == h.last_reply_ns       # a new run of replies starts
    assert 50_000 <= h.rtt_last_ns == h.rtt_ewma_ns < 50_000 + (after - tx)
    hist = gateway.gw.rtt_histogram(A)
    (bucket,) = [b for b, n in enumerate(hist) if n]
    low, high = layout.hist_bucket_bounds_us(bucket)
    assert low <= h.rtt_last_ns / 1000 < high


def test_ingress_keeps_fresh_since_while_replies_keep_coming(gateway):
    gateway.set_fresh(A, age_ns=100_000_000, fresh_for_ns=5_000_000_000)
    since = gateway.gw.health()[A].fresh_since_ns
    gateway.run(gateway.gw.hb_ingress, bytes(probe_packet(echo_type=0, tx_ns=now_ns() - 10_000)))
    assert gateway.gw.health()[A].fresh_since_ns == since


@pytest.mark.parametrize("problem", ["wrong_interface", "stamp_in_future", "never_stamped"])
def test_ingress_rejects_replies_that_must_not_make_a_link_fresh(gateway, problem):
    gateway.set_fresh(A, age_ns=None)
    tx = now_ns() - 10_000
    if problem == "wrong_interface":
        gateway.set_link(A, ifindex=999)
    elif problem == "stamp_in_future":
        tx = now_ns() + 10**9
    else:
        tx = 0
    verdict, _ = gateway.run(gateway.gw.hb_ingress, bytes(probe_packet(echo_type=0, tx_ns=tx)))
    assert verdict == TC_ACT_SHOT
    assert gateway.gw.health()[A].last_reply_ns == 0
    assert gateway.gw.global_stats()["reply_bad"] == 1


def test_ingress_passes_everything_else(gateway):
    for pkt in (probe_packet(echo_type=0, ident=1), probe_packet(echo_type=8),
                Ether() / IP(dst="198.18.1.1") / ICMP(type=0) / (b"\0" * 40)):
        raw = bytes(pkt)
        assert gateway.run(gateway.gw.hb_ingress, raw) == (TC_ACT_OK, raw)
    assert gateway.gw.health()[A].replies == 0
