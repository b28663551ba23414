"""The lab's kernel reflector / sink (lab/ebpf/reflect.c): packet fixtures through
BPF_PROG_TEST_RUN, then ping-pong and sink runs through a lab with the daemon."""
import subprocess

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from appliance.edge.bpfsource import assemble
from bench.latency import MODES, PORTS, RAW_KEY, latency, max_pps
from lab import labbpf, layout, libbpf, reflect, topology
from lab.processes import DaemonProcess
from tests.kernel.test_layout import assert_map_matches

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
CAR_MAC, HANDOFF_MAC = "02:00:00:00:14:01", "02:00:00:00:14:02"
TRADER, EXCH = topology.TRADER_ADDR, topology.EXCHANGE_ADDR
REFLECTED, SUNK, PASSED = 9050, 9300, 9400
REPLY_PORT = 29050
PAYLOAD = bytes(range(48))


class Reflector:
    """reflect.c compiled once; maps emptied and the fixture ports set per test
    through reflect.write_port, the code that set_port runs on pinned maps."""

    def __init__(self):
        from bcc import BPF
        self.bpf = BPF(text=assemble(["reflect.c"], roots=labbpf.BPF_ROOTS).encode())
        self.prog = self.bpf.load_func(b"reflect", BPF.SCHED_CLS)

    def reset(self):
        for name in layout.REFLECT_MAPS:
            self.bpf[name].clear()
        self.set(REFLECTED, "reflect", REPLY_PORT)
        self.set(SUNK, "sink")
        self.set(PASSED, "pass")

    def set(self, port, action, reply_port=None):
        reflect.write_port(self.bpf["reflect_cfg"].map_fd, self.bpf["reflect_stats"].map_fd,
                           port, action, reply_port)

    def count(self, port):
        return reflect.read_count(self.bpf["reflect_stats"].map_fd, port)

    def run(self, frame: bytes):
        verdict, out, _ = libbpf.prog_test_run(self.prog.fd, frame)
        return verdict, out


@pytest.fixture(scope="module")
def compiled_reflector():
    r = Reflector()
    yield r
    r.bpf.cleanup()


@pytest.fixture
def reflector(compiled_reflector):
    compiled_reflector.reset()
    return compiled_reflector


def request(l4=None, payload=PAYLOAD, **ip):
    """What reaches exch's handoff from the carrier: trader -> exchange."""
    l4 = UDP(sport=40000, dport=REFLECTED) if l4 is None else l4
    return Ether(src=CAR_MAC, dst=HANDOFF_MAC) / IP(src=TRADER, dst=EXCH, ttl=62, id=4242, tos=0x10, **ip) / l4 / payload


def reply(payload=PAYLOAD, **udp):
    """What the reflector must send back: everything the same but MACs and
    addresses swapped, from the port asked to the reply port."""
    return (Ether(src=HANDOFF_MAC, dst=CAR_MAC) / IP(src=EXCH, dst=TRADER, ttl=62, id=4242, tos=0x10)
            / UDP(sport=REFLECTED, dport=REPLY_PORT, **udp) / payload)


def test_reflect_rewrites_exactly_the_expected_bytes(reflector):
    sent = request()
    verdict, out = reflector.run(bytes(sent))
    assert verdict == TC_ACT_REDIRECT
    assert out == bytes(reply()), "addresses, ports and a valid UDP checksum; nothing else changed"
    assert Ether(out)[IP].chksum == Ether(bytes(sent))[IP].chksum, "a swap keeps the IP checksum"
    assert reflector.count(REFLECTED) == 1


def test_reflect_keeps_an_absent_udp_checksum_absent(reflector):
    verdict, out = reflector.run(bytes(request(l4=UDP(sport=40000, dport=REFLECTED, chksum=0))))
    assert verdict == TC_ACT_REDIRECT
    assert out == bytes(reply(chksum=0))


def test_reflect_sends_a_checksum_that_folds_to_zero_as_ffff(reflector):
    # A payload word chosen so that the reply's checksum computes to 0,
    # which UDP must send as 0xffff (0 would mean "no checksum").
    probe = reply(payload=b"\x00\x00" + PAYLOAD)
    word = Ether(bytes(probe))[UDP].chksum
    payload = word.to_bytes(2, "big") + PAYLOAD
    assert Ether(bytes(reply(payload=payload)))[UDP].chksum == 0xFFFF  # the case is what it claims
    verdict, out = reflector.run(bytes(request(payload=payload)))
    assert verdict == TC_ACT_REDIRECT
    assert out == bytes(reply(payload=payload))


def test_sink_drops_and_counts(reflector):
    for sport in (40000, 40001, 40002):
        verdict, _ = reflector.run(bytes(request(l4=UDP(sport=sport, dport=SUNK))))
        assert verdict == TC_ACT_SHOT
    assert reflector.count(SUNK) == 3
    assert reflector.count(REFLECTED) == 0


def test_a_port_keeps_its_count_when_its_rule_changes(reflector):
    reflector.run(bytes(request()))
    reflector.set(REFLECTED, "sink")
    assert reflector.run(bytes(request()))[0] == TC_ACT_SHOT
    reflector.set(REFLECTED, "pass")
    assert reflector.run(bytes(request()))[0] == TC_ACT_OK
    assert reflector.count(REFLECTED) == 2


@pytest.mark.parametrize("frame", [
    request(l4=UDP(dport=9999)),                               # no rule for the port
    request(l4=UDP(dport=PASSED)),                             # rule says pass
    request(l4=UDP(sport=REFLECTED, dport=40000)),             # only the destination port matters
    request(l4=TCP(dport=REFLECTED, flags="S")),               # not UDP
    request(l4=ICMP()),
    request(flags="MF"),                                       # first fragment
    request(frag=100, proto=17),                               # later fragment: no UDP header here
    request(options=[b"\x01" * 4]),                            # IP options
    Ether(src=CAR_MAC, dst=HANDOFF_MAC) / IPv6(dst="2001:2::10") / UDP(dport=REFLECTED) / PAYLOAD,
    Ether(src=CAR_MAC) / ARP(pdst=EXCH),
], ids=["other-port", "pass", "source-port", "tcp", "icmp", "first-fragment", "later-fragment",
        "ip-options", "ipv6", "arp"])
def test_everything_else_passes_untouched_and_uncounted(reflector, frame):
    raw = bytes(frame)
    assert reflector.run(raw) == (TC_ACT_OK, raw)
    assert [reflector.count(p) for p in (REFLECTED, SUNK, PASSED)] == [0, 0, 0]


@pytest.mark.parametrize("cut", [34, 37, 41])  # IP header only, then into the UDP header
def test_truncated_udp_header_passes_untouched(reflector, cut):
    raw = bytes(request())[:cut]
    assert reflector.run(raw) == (TC_ACT_OK, raw)
    assert reflector.count(REFLECTED) == 0


@pytest.mark.parametrize("port,action,reply_port", [
    (9000, "echo", None), (9000, "reflect", None), (9000, "sink", 9001), (70000, "sink", None),
    (9000, "reflect", -1),
])
def test_write_port_refuses_bad_rules(reflector, port, action, reply_port):
    with pytest.raises(ValueError):
        reflector.set(port, action, reply_port)


@pytest.mark.parametrize("name", sorted(layout.REFLECT_MAPS))
def test_map_types_match_compiled(compiled_reflector, name):
    assert_map_matches(compiled_reflector.bpf[name], *layout.REFLECT_MAPS[name])


# -- in the lab ---------------------------------------------------------------

@pytest.fixture(scope="module")
def daemon(lab):
    reflect.attach(lab)
    d = DaemonProcess(lab, topology.write_config(lab), lab.dir / "daemon-reflect.jsonl")
    try:
        d.wait_for("ready", 30)
        yield d
    finally:
        d.stop()


def test_ping_pong_gets_every_reply_and_only_the_fast_path_port_is_steered(lab, daemon, tmp_path):
    result = latency(lab, rate_pps=2000, seconds_per_block=1.0, blocks=1, workdir=tmp_path)
    for mode in MODES:
        r = result[mode]
        assert (r["issued"], r["reflected"], r["samples"], r["lost"]) == (2000, 2000, 2000, 0), r
        samples = result[RAW_KEY][mode]
        assert len(samples) == 2000
        assert 0 < samples.min() and samples.max() < 1_000_000_000
    # The steer program redirected every fast-path request and no kernel one.
    assert (result["fastpath"]["steered"], result["fastpath"]["kernel_routed"]) == (2000, 0)
    assert (result["kernel"]["steered"], result["kernel"]["kernel_routed"]) == (0, 2000)
    # Both took link A, so both came in (and went back) on exch's handoff A.
    assert [reflect.counts(lab, PORTS[m], "B") for m in MODES] == [0, 0]
    assert [e for e in daemon.events() if e.get("event") == "failover"] == []


def test_sink_counts_every_datagram_of_a_slow_step(lab, daemon):
    result = max_pps(lab, "both", [2000], 0.5)
    for mode in MODES:
        (step,) = result[mode]["steps"]
        assert step["passed"], step
        assert step["issued"] == step["sunk"] == 1000
        assert result[mode]["max_pps"] == 2000 and result[mode]["limit"] is None
    assert result["fastpath"]["steps"][0]["steered"] == 1000
    assert result["kernel"]["steps"][0]["steered"] == 0


def test_lab_down_removes_the_reflector():
    lab = topology.up()
    pins = [pin(lab, link) for link in topology.LINKS for pin in (reflect.cfg_pin, reflect.stats_pin)]
    try:
        reflect.attach(lab)
        reflect.set_port(lab, REFLECTED, "sink")
        assert all(p.exists() for p in pins)
    finally:
        topology.down(lab.name)
    assert not any(p.exists() for p in pins)
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert lab.name not in namespaces
    with pytest.raises(topology.LabError):
        reflect.counts(lab, REFLECTED)


# -- sink_xdp: the same sink at XDP, for the capacity bench ------------------
XDP_DROP, XDP_PASS = 1, 2


@pytest.fixture(scope="module")
def xdp_sink():
    from bcc import BPF
    bpf = BPF(text=assemble(["reflect.c"], roots=labbpf.BPF_ROOTS).encode())
    prog = bpf.load_func(b"sink_xdp", BPF.XDP)
    for port, action in ((SUNK, "sink"), (REFLECTED, "reflect"), (PASSED, "pass")):
        reflect.write_port(bpf["reflect_cfg"].map_fd, bpf["reflect_stats"].map_fd, port, action,
                           REPLY_PORT if action == "reflect" else None)

    def run(frame) -> int:
        return libbpf.prog_test_run(prog.fd, bytes(frame))[0]

    def count(port) -> int:
        return reflect.read_count(bpf["reflect_stats"].map_fd, port)

    yield run, count
    bpf.cleanup()


def test_xdp_sink_drops_and_counts_only_its_ports(xdp_sink):
    run, count = xdp_sink
    before = {p: count(p) for p in (SUNK, REFLECTED, PASSED)}
    assert run(request(l4=UDP(sport=40000, dport=SUNK))) == XDP_DROP
    assert run(request(l4=UDP(sport=40000, dport=SUNK), payload=b"")) == XDP_DROP
    # reflect is a TC action: at XDP it passes, uncounted, like every other port
    for frame in (request(l4=UDP(sport=40000, dport=REFLECTED)), request(l4=UDP(sport=40000, dport=PASSED)),
                  request(l4=UDP(sport=40000, dport=9999)), request(l4=TCP(sport=40000, dport=SUNK)),
                  request(l4=UDP(sport=40000, dport=SUNK), flags="MF"),
                  Ether() / IPv6() / UDP(dport=SUNK), Ether() / ARP()):
        assert run(frame) == XDP_PASS, frame.summary()
    truncated = bytes(request(l4=UDP(sport=40000, dport=SUNK)))[:14 + 20 + 4]
    assert run(truncated) == XDP_PASS
    assert {p: count(p) - before[p] for p in before} == {SUNK: 2, REFLECTED: 0, PASSED: 0}
