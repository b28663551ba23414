"""SipHash-2-4 (lab/siphash.py) against the reference vectors, and
the fuzz harness's pure parts (lab/fuzz.py, fuzzref.py): frame
builders and checksums against scapy, the fast classifier against
appliance.core.classify.lookup, the references on hand-made frames, and
repeatable generation. No kernel: the kernel comparison is
tests/kernel/test_fuzz.py."""
import ipaddress
import os
import random
import struct

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether

from appliance import layout
from appliance.core import config
from appliance.core.classify import compile_rules, lookup
from lab import fuzz
from lab import fuzzref as ref
from lab.siphash import key_words, siphash24, siphash24_32, siphash24_words

# SipHash-2-4, key 00..0f, message 00..(n-1): the paper's vectors.h, n = 0..15,
# as the little-endian bytes of the output.
VECTORS = [
    "310e0edd47db6f72", "fd67dc93c539f874", "5a4fa9d909806c0d", "2d7efbd796666785",
    "b7877127e09427cf", "8da699cd64557618", "cee3fe586e46c9cb", "37d1018bf50002ab",
    "6224939a79f5f593", "b0e4a90bdf82009e", "f3b9dd94c5bb5d7a", "a7ad6b22462fb3f4",
    "fbe50e86bc8f1e75", "903d84c02756ea14", "eef27a8e90ca23f7", "e545be4961ca29a1",
]
KEY = bytes(range(16))


def test_reference_vectors_quoted_in_the_spec():
    assert siphash24(KEY, bytes(range(15))) == 0xA129CA6149BE45E5
    assert siphash24(KEY, b"") == 0x726FDB47DD0E0E31


@pytest.mark.parametrize("n", range(16))
def test_reference_vectors(n):
    assert siphash24(KEY, bytes(range(n))).to_bytes(8, "little").hex() == VECTORS[n]


def test_32_byte_form_equals_the_general_one():
    r = random.Random(1)
    for _ in range(300):
        key, msg = r.randbytes(16), r.randbytes(32)
        k0, k1 = key_words(key)
        expect = siphash24(key, msg)
        assert siphash24_32(k0, k1, msg) == expect
        assert siphash24_words(k0, k1, *struct.unpack("<4Q", msg)) == expect


def test_key_words_are_the_little_endian_halves():
    assert key_words(KEY) == (0x0706050403020100, 0x0F0E0D0C0B0A0908)
    with pytest.raises(ValueError):
        key_words(b"short")


# -- fuzz engine: frames and checksums ---------------------------------------
def test_ipv4_builder_makes_what_scapy_calls_valid():
    r = random.Random(2)
    for _ in range(50):
        opts = r.randbytes(4 * r.randrange(0, 4))
        frame = fuzz.eth(fuzz.ipv4(r.randbytes(4), r.randbytes(4), 17, fuzz.udp(1, 2, r.randbytes(r.randrange(40))),
                                   ttl=r.randrange(256), options=opts))
        pkt = Ether(frame)
        sent = pkt[IP].chksum
        del pkt[IP].chksum
        assert Ether(bytes(pkt))[IP].chksum == sent
        assert ref.ipv4_status(frame, len(frame)) == (ref.IP_OPTIONS if opts else ref.IP_OK)


def test_icmp_echo_checksum_even_and_odd():
    for n in (0, 1, 40, 41):
        msg = fuzz.icmp_echo(8, 0x7470, 3, bytes(range(n)))
        icmp = ICMP(msg)
        sent = icmp.chksum
        del icmp.chksum
        assert ICMP(bytes(icmp)).chksum == sent


@pytest.mark.parametrize("mutate,status", [
    (lambda f: f, ref.IP_OK),
    (lambda f: f.__setitem__(24, f[24] ^ 1), ref.IP_MALFORMED),              # checksum
    (lambda f: (f.__setitem__(14, 0x65), fuzz.fix_ip_csum(f)), ref.IP_MALFORMED),   # version 6
    (lambda f: (f.__setitem__(14, 0x44), fuzz.fix_ip_csum(f)), ref.IP_MALFORMED),   # ihl 4
    (lambda f: (struct.pack_into(">H", f, 16, 19), fuzz.fix_ip_csum(f)), ref.IP_MALFORMED),
    (lambda f: (struct.pack_into(">H", f, 16, len(f) - 13), fuzz.fix_ip_csum(f)), ref.IP_MALFORMED),
    (lambda f: (struct.pack_into(">H", f, 16, 20), fuzz.fix_ip_csum(f)), ref.IP_OK),   # padding after tot_len
    (lambda f: f.__setitem__(slice(12, 14), b"\x86\xdd"), ref.IP_NOT_IPV4),
])
def test_ipv4_status(mutate, status):
    f = bytearray(fuzz.eth(fuzz.ipv4(bytes(4), bytes(4), 17, fuzz.udp(1, 9000, b"x" * 10))))
    mutate(f)
    assert ref.ipv4_status(f, len(f)) == status


def test_test_run_refusals_as_measured():
    assert ref.test_run_refuses("tc", bytes(13)) and ref.test_run_refuses("xdp", bytes(13))
    assert ref.test_run_refuses("tc", bytes(12) + b"\x08\x00" + bytes(19))
    assert not ref.test_run_refuses("xdp", bytes(12) + b"\x08\x00" + bytes(19))
    assert ref.test_run_refuses("tc", bytes(12) + b"\x86\xdd" + bytes(39))
    assert not ref.test_run_refuses("tc", bytes(12) + b"\x08\x06" + bytes(1))


# -- the fast classifier is classify.lookup ----------------------------------
def test_fast_classifier_agrees_with_classify_lookup():
    cfg = config.parse(fuzz.FUZZ_CONFIG, "fuzz")
    table = compile_rules(cfg)
    fast = ref.FastClassifier(table)
    r = random.Random(3)
    for _ in range(5000):
        dst = r.choice(fuzz.DST_POOL) if r.random() < 0.6 else r.randbytes(4)
        proto = r.choice(fuzz.PROTO_POOL)
        dport = r.choice(fuzz.PORT_POOL) if r.random() < 0.7 else r.randrange(65536)
        assert fast.lookup(int.from_bytes(dst, "big"), proto, dport) == \
            lookup(table, ipaddress.IPv4Address(dst), proto, dport)


# -- references on hand-made frames ------------------------------------------
class FakeFixture:
    """What the harnesses read of a GatewayFixture, without the kernel."""

    def __init__(self, seed=0):
        self.cfg = config.parse(fuzz.FUZZ_CONFIG, "fuzz")
        self.links = fuzz.FUZZ_LINKS
        self.keys = [ref.KeyModel(7, bytes(range(16))), ref.KeyModel(9, bytes(range(100, 116)))]
        self.ident = 0x7470
        self.dead_ns = self.cfg.heartbeat.dead_ns
        self.interval_ns = self.cfg.heartbeat.interval_us * 1000

    def reset(self):
        pass

    def write_health(self, now):
        pass


def steer_ref():
    fx = FakeFixture()
    classes = [[fx.cfg.link_index(n) for n in c.links] for c in fx.cfg.classes]
    sr = ref.SteerRef(compile_rules(fx.cfg), fx.links, classes, [c[0] for c in classes], fx.dead_ns, fx.interval_ns)
    sr.last_reply = [10**12] * layout.MAX_LINKS
    return sr


def test_steer_reference_forwards_like_a_router():
    sr = steer_ref()
    frame = fuzz.eth(fuzz.ipv4(ref.addr("198.18.1.1"), ref.addr("198.19.0.10"), 17, fuzz.udp(4000, 9000, b"x" * 32)))
    frame += b"\xaa" * 6                                   # padding after tot_len rides along
    e = sr.expect(frame, 10**12 + 5, 10**12 + 6)
    assert e.verdict == ref.TC_ACT_REDIRECT
    pkt = Ether(e.out[:-6])
    assert (pkt.dst, pkt.src) == ("02:00:00:00:0a:02", "02:00:00:00:0a:01")
    assert pkt[IP].ttl == 63
    sent = pkt[IP].chksum
    del pkt[IP].chksum
    assert Ether(bytes(pkt))[IP].chksum == sent
    assert e.out[-6:] == b"\xaa" * 6 and e.out[34:] == frame[34:]
    assert sr.steer_stats[(0, 0)] == [1, len(frame), 1, 0]


def test_steer_reference_side_exits():
    sr = steer_ref()
    t = 10**12 + 5

    def exit_of(frame):
        e = sr.expect(frame, t, t)
        assert e.verdict == ref.TC_ACT_OK and e.out is None
        return e.stat
    udp = lambda dst, dport, **kw: fuzz.eth(fuzz.ipv4(ref.addr("198.18.1.1"), ref.addr(dst), 17,
                                                      fuzz.udp(1, dport, b"x"), **kw))
    assert exit_of(udp("198.19.0.1", 8999)) == "no_rule"
    assert exit_of(udp("198.19.0.1", 9000, ttl=1)) == "ttl_expired"
    assert exit_of(udp("198.19.0.1", 9000, frag=0x2000)) == "unparsed"
    assert exit_of(udp("198.19.0.1", 9000, options=b"\x01" * 4)) == "unparsed"
    with_options = bytearray(udp("198.19.0.1", 9000, options=b"\x01" * 4))
    with_options[24] ^= 1                                 # options: checksum left to the stack
    assert exit_of(bytes(with_options)) == "unparsed"
    assert exit_of(fuzz.eth(bytes(28), 0x0806)) == "not_ipv4"
    bad = bytearray(udp("198.19.0.1", 9000))
    bad[24] ^= 0xFF
    assert exit_of(bytes(bad)) == "malformed"
    short = bytearray(udp("198.19.0.1", 9000))
    struct.pack_into(">H", short, 16, 22)                 # ports past tot_len
    fuzz.fix_ip_csum(short)
    assert exit_of(bytes(short)) == "unparsed"
    # bulk (link C, no next hop): kernel routing, and the reflex found no fresher standby
    assert exit_of(fuzz.eth(fuzz.ipv4(bytes(4), ref.addr("198.19.0.70"), 6, fuzz.tcp(1, 5, b"")))) == "no_nexthop"
    assert sr.stats["all_stale"] == 1


def reply(fx, link=0, seq=5, tx=None, key=None, ttl=255, now=10**12):
    h = fuzz.HbIngressHarness.__new__(fuzz.HbIngressHarness)
    fuzz._HeartbeatHarness.__init__(h, fx)
    key = key or fx.keys[0]
    f = h.probe_frame(random.Random(0), 0, link, seq, now - 50_000 if tx is None else tx, key.id, ttl=ttl)
    h.sign(f, key)
    return bytearray(f)


def ingress_ref(fx):
    return ref.HbIngressRef(fx.links, fx.keys, fx.ident, 1, dead_ns=fx.dead_ns)


def test_ingress_reference_accepts_once_and_keeps_the_window():
    fx = FakeFixture()
    ir = ingress_ref(fx)
    now = 10**12
    stat = lambda f: ir.expect(bytes(f), now, now + 1000).stat
    assert stat(reply(fx, seq=100)) == "reply_ok"
    assert stat(reply(fx, seq=100)) == "reply_replayed"             # the same again
    assert stat(reply(fx, seq=37)) == "reply_ok"                     # 63 below the top: inside
    assert stat(reply(fx, seq=36)) == "reply_replayed"               # 64 below: outside
    assert stat(reply(fx, seq=200)) == "reply_ok"                    # slides the window by 100
    assert stat(reply(fx, seq=100)) == "reply_replayed"
    h = ir.health[0]
    assert (h.seq_top, h.seq_seen, h.replies) == (200, 1, 3)


def test_ingress_reference_knows_which_bytes_matter():
    fx = FakeFixture()
    ir = ingress_ref(fx)
    now = 10**12
    stat = lambda f: ir.expect(bytes(f), now, now + 1000).stat
    f = reply(fx, seq=1)
    f[40:42] = b"\x12\x34"                                           # echo sequence: ignored...
    fuzz.fix_icmp_csum(f)                                            # ...once the checksum holds
    assert stat(f) == "reply_ok"
    f = reply(fx, seq=2)
    f[ref.OFF_PAD:ref.OFF_PAD + 7] = b"\xff" * 7
    assert stat(f) == "reply_bad"                                    # checksum now wrong
    fuzz.fix_icmp_csum(f)
    assert stat(f) == "reply_ok"
    assert stat(reply(fx, seq=3, ttl=64)) == "reply_ok"              # A has no GTSM
    assert stat(reply(fx, link=1, seq=3, ttl=64)) == "reply_bad"     # B has
    assert stat(reply(fx, seq=4) + b"\0" * 4) == "reply_ok"          # padding after tot_len
    f = reply(fx, seq=5)
    f[ref.OFF_KEY_ID] = 0
    fuzz.fix_icmp_csum(f)
    assert stat(f) == "reply_forged"
    assert stat(reply(fx, seq=6, key=ref.KeyModel(7, bytes(16)))) == "reply_forged"
    assert stat(reply(fx, seq=7, key=fx.keys[1])) == "reply_ok"      # the verify-only slot
    assert stat(reply(fx, seq=8, tx=0)) == "reply_replayed"
    assert stat(reply(fx, seq=9, tx=now + 10**6)) == "reply_replayed"
    assert stat(reply(fx, seq=10, tx=now - fx.dead_ns - 10**6)) == "reply_replayed"
    assert stat(reply(fx, link=3, seq=1)) == "reply_bad"             # link on another device
    e = ir.expect(bytes(reply(fx, seq=11, tx=now - fx.dead_ns + 500)), now, now + 1000)
    assert e.ambiguous is not None and e.stat is None                # `now` decides: the harness asks


def test_egress_reference_checks_the_stamp():
    fx = FakeFixture()
    er = ref.HbEgressRef(fx.links, fx.keys, fx.ident, 1)
    h = fuzz.HbEgressHarness.__new__(fuzz.HbEgressHarness)
    fuzz._HeartbeatHarness.__init__(h, fx)
    frame = bytes(h.probe_frame(random.Random(0), 8, 0, 42))
    e = er.expect(frame, 1000, 2000)
    assert e.stat == "probe_stamped" and er.health[0].probes == 1
    out = bytearray(frame)
    struct.pack_into("<Q", out, ref.OFF_TX, 1500)
    out[ref.OFF_KEY_ID] = 7
    h.sign(out, fx.keys[0])                                           # what the program must do
    assert e.out_check(bytes(out)) is None
    wrong = bytearray(out)
    wrong[ref.OFF_MAC] ^= 1
    assert e.out_check(bytes(wrong)) is not None
    late = bytearray(out)
    struct.pack_into("<Q", late, ref.OFF_TX, 2001)
    h.sign(late, fx.keys[0])
    assert "outside" in e.out_check(bytes(late))
    assert er.expect(frame[:81], 0, 1).stat is None                   # not a probe: untouched
    foreign = bytes(h.probe_frame(random.Random(0), 8, 3, 42))        # link D: another device
    assert er.expect(foreign, 0, 1).stat == "probe_foreign"


# -- generation --------------------------------------------------------------
def _frames(harness_cls, seed, n=300):
    h = harness_cls(FakeFixture())
    if harness_cls is fuzz.SteerHarness:
        h.ref = steer_ref()
    else:
        h.ref = ref.HbEgressRef(h.links, h.keys, h.ident, 1)
        h.seq = 0
    r = random.Random(seed)
    return [h.generate(r) for _ in range(n)]


@pytest.mark.parametrize("cls", [fuzz.SteerHarness, fuzz.HbEgressHarness])
def test_generation_is_repeatable_and_always_runnable(cls, monkeypatch):
    monkeypatch.setattr(fuzz.time, "monotonic_ns", lambda: 10**12)   # tx_ns mutations read the clock
    a, b = _frames(cls, 11), _frames(cls, 11)
    assert a == b
    assert a != _frames(cls, 12)
    for frame, labels in a:
        assert not ref.test_run_refuses("tc", frame) and len(frame) <= fuzz.MAX_FRAME + 100
        assert labels


@pytest.mark.parametrize("mutation", [m for m, _ in fuzz.IP_MUTATIONS + fuzz.PROBE_MUTATIONS],
                         ids=lambda m: m.__name__)
def test_every_mutation_copes_with_any_frame(mutation):
    h = fuzz.HbEgressHarness(FakeFixture())
    r = random.Random(mutation.__name__)
    for n in (14, 15, 20, 34, 40, 60, 82, 90):
        for _ in range(20):
            f = bytearray(os.urandom(n))
            label = mutation(f, r, h)
            assert isinstance(label, str) and len(f) >= 14


# -- the arbitration reference against the rules' own examples ---------------
# (tests/kernel/test_arbitrate.py checks the same sequences on the kernel)
SESSION = b"SESSION001"


class ArbModel:
    def __init__(self):
        self.ref = ref.ArbRef(fuzz.FUZZ_FEEDS, 50_000_000)
        self.t = 10**12
        self.events = []

    def run(self, line, frame):
        self.t += 1000
        e = self.ref.expect("AB".index(line), bytes(frame), self.t, self.t + 10)
        self.events += [(layout.ARB_EVENTS[k], "AB"[ln], a, b) for k, ln, a, b, _ in e.extra[2]]
        return e.verdict

    def runs(self, *pairs):
        return [self.run(line, f) for line, f in pairs]

    def stats(self, line, feed=0):
        return self.ref.line_stats[(feed, "AB".index(line))]


def mold(seq, count, session=SESSION, line=0):
    return fuzz.feed_frame(fuzz.FUZZ_FEEDS[0], line, fuzz.mold_payload(session, seq, count, [b"m" * 16] * count))


def hb(seq, session=SESSION, end=False):
    return fuzz.feed_frame(fuzz.FUZZ_FEEDS[0], 0, fuzz.mold_payload(session, seq, 0xFFFF if end else 0))


R, D, P = ref.XDP_REDIRECT, ref.XDP_DROP, ref.XDP_PASS


def test_arb_first_copy_wins_and_is_rewritten():
    m = ArbModel()
    assert m.runs(("A", mold(1, 3)), ("B", mold(1, 3)), ("B", mold(4, 1)), ("A", mold(4, 1))) == [R, D, R, D]
    assert m.events == [("session", "A", 1, 1)]
    out = ref.arb_forward(bytes(mold(1, 3)), fuzz.FUZZ_FEEDS[0])
    pkt = Ether(out)
    assert (pkt.dst, pkt.src, pkt[IP].ttl) == ("02:00:00:00:01:01", "02:00:00:00:01:fe", 63)
    sent = pkt[IP].chksum
    del pkt[IP].chksum
    assert Ether(bytes(pkt))[IP].chksum == sent


def test_arb_gaps_fills_and_heartbeats():
    m = ArbModel()
    assert m.runs(("A", mold(1, 2)), ("A", mold(6, 2)), ("B", mold(3, 3))) == [R, R, R]
    assert m.events[-2:] == [("gap", "A", 3, 5), ("fill", "B", 3, 5)]
    assert m.runs(("A", hb(10)), ("B", hb(10))) == [R, D]                  # the copy
    assert m.events[-1] == ("gap", "A", 8, 9)
    assert m.runs(("A", hb(10, end=True)), ("B", hb(10, end=True))) == [R, D]   # not a heartbeat's copy
    assert m.run("B", hb(12)) == D                  # one heartbeat per window, whatever it announces
    m.t += 60_000_000
    assert m.run("B", hb(12)) == R                  # the window has passed


def test_arb_sessions_need_evidence():
    m = ArbModel()
    m.run("A", mold(1, 5))
    assert m.run("A", mold(1, 2, b"SESSION002")) == D
    assert m.stats("A")["unconfirmed"] == 1
    assert m.run("B", mold(1, 2, b"SESSION002")) == R                      # both lines: switched
    assert [e for e in m.events if e[0] == "session"][-1] == ("session", "B", 1, 1)
    n = layout.ARB_CONFIRM
    got = m.runs(*[("A", mold(s, 1, b"SESSION003")) for s in range(1, n + 1)])
    assert got == [D] * (n - 1) + [R]                                       # one line: after 16
    assert m.events[-2:] == [("session", "A", n, n), ("gap", "A", 1, n - 1)]


def test_arb_far_ahead_needs_both_lines_or_a_run():
    m = ArbModel()
    m.run("A", mold(1, 3))
    assert m.runs(("A", mold(100_000, 2)), ("B", mold(100_000, 2)), ("A", mold(100_002, 1))) == [D, R, R]
    assert [e for e in m.events if e[0] in ("resync", "gap")] == [("resync", "B", 4, 100_000),
                                                                 ("gap", "B", 4, 99_999)]
    assert m.runs(("B", mold(2, 1))) == [D]


def test_arb_baseline_set_far_ahead_is_corrected():
    m = ArbModel()
    far = 10**12
    assert m.run("A", mold(far, 1)) == R
    assert m.runs(("A", mold(1, 3)), ("B", mold(1, 3)), ("A", mold(4, 1)), ("B", mold(4, 1))) == [D, R, R, D]
    st = m.ref.state[0]
    assert st.next_seq & ref.ARB_SEQ_MASK == 5 and [s & ref.ARB_SEQ_MASK for s in st.line_next_seq] == [5, 5]


def test_arb_claim_generation_does_not_wrap_into_old_claims():
    m = ArbModel()
    assert m.run("A", mold(40, 1, b"GEN0000000")) == R
    for i in range(1, 257):
        name = b"GEN%07d" % i
        assert m.runs(("A", mold(1, 1, name)), ("B", mold(1, 1, name)))[1] == R
    assert m.run("A", mold(40, 1, b"GEN0000256")) == R


def test_arb_sweep_empties_words_far_behind():
    m = ArbModel()
    far = 2 + ref.ARB_SWEEP + 100
    assert m.runs(("A", mold(1, 1)), ("A", mold(far, 1)), ("B", mold(far, 1))) == [R, D, R]
    st = m.ref.state[0]
    assert st.claims[0] == 0 and st.claims[(far >> 5) % layout.ARB_SLOTS] != 0
    assert st.swept_seq & ref.ARB_SEQ_MASK == far
    assert (m.stats("A")["packets"], m.stats("B")["packets"]) == (2, 1)


@pytest.mark.parametrize("mutate,stat", [
    (lambda f: f.__setitem__(24, f[24] ^ 0x40), "truncated"),                     # header checksum
    (lambda f: (f.__setitem__(14, 0x55), fuzz.fix_ip_csum(f)), "truncated"),     # version 5
    (lambda f: (struct.pack_into(">H", f, 16, len(f) - 13), fuzz.fix_ip_csum(f)), "truncated"),
    (lambda f: fuzz.m_options(f, random.Random(1), None), "ip_options"),
    (lambda f: f.__delitem__(slice(36, None)), "truncated"),                     # UDP header cut
])
def test_arb_feed_packet_with_a_header_the_kernel_rejects_passes(mutate, stat):
    """It must never claim a sequence: the trader's kernel would drop it and
    the genuine copies would be dropped here as duplicates."""
    m = ArbModel()
    bad = bytearray(mold(1, 1))
    mutate(bad)
    assert m.run("A", bad) == P
    assert m.ref.gstats[0][stat] == 1
    assert m.run("B", mold(1, 1)) == R
