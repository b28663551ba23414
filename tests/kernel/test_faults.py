"""The lab's fault injector, as packet fixtures: each mode drops exactly the
direction it names (fault_from_gw sits on a carrier's ingress from the
gateway, fault_to_gw on its egress towards it) and counts what it did; the
delay line's rules; and the gray faults (delay, jitter, flap,
creep-then-blackhole) in a lab, seen as gw's pings to the link's target."""
import ctypes
import json
import random
import re
import statistics
import struct
import time
from pathlib import Path

import pytest
from bcc import BPF
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from appliance.edge.bpfsource import assemble
from appliance.edge.bpfsys import check
from lab import delayline, faults, labbpf, layout, libbpf
from lab.colo import EXCHANGE_ADDR, LINKS, Lab
from lab.libbpf import prog_test_run

pytestmark = pytest.mark.kernel

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
DELAY_IFINDEX = 42  # BPF_PROG_TEST_RUN does not follow a redirect; any ifindex will do
FRAME = bytes(Ether() / IP(src="198.18.10.1", dst="198.19.0.10") / UDP(dport=9000) / b"order")
# (mode, dropped from the gateway, dropped towards it)
EXPECTED = [("pass", False, False), ("blackhole", True, True), ("blackhole-tx", True, False),
            ("blackhole-rx", False, True)]


@pytest.fixture(scope="module")
def injector():
    bpf = BPF(text=assemble(["fault.c"], roots=labbpf.BPF_ROOTS).encode())
    yield bpf, {name: bpf.load_func(name.encode(), BPF.SCHED_CLS) for name in ("fault_from_gw", "fault_to_gw")}
    bpf.cleanup()


@pytest.mark.parametrize("mode,from_gw_dropped,to_gw_dropped", EXPECTED)
def test_each_mode_drops_the_direction_it_names(injector, mode, from_gw_dropped, to_gw_dropped):
    bpf, progs = injector
    code = faults.MODE_PASS if mode == "pass" else faults.BLACKHOLES[mode]
    bpf[b"fault_cfg"][ctypes.c_uint32(0)] = layout.FaultConfig(code, 0)
    bpf[b"fault_stats"].clear()
    verdicts = {name: prog_test_run(prog.fd, FRAME)[0] for name, prog in progs.items()}
    assert verdicts == {"fault_from_gw": TC_ACT_SHOT if from_gw_dropped else TC_ACT_OK,
                        "fault_to_gw": TC_ACT_SHOT if to_gw_dropped else TC_ACT_OK}
    stats = bpf[b"fault_stats"][ctypes.c_uint32(0)]
    assert sum(c.dropped for c in stats) == from_gw_dropped + to_gw_dropped
    assert sum(c.passed for c in stats) == 2 - from_gw_dropped - to_gw_dropped


def test_every_blackhole_mode_is_a_lab_fault():
    assert set(faults.BLACKHOLES) <= set(faults.FAULTS)
    assert len(set(faults.BLACKHOLES.values()) | {faults.MODE_PASS, faults.MODE_LOSS}) == len(faults.BLACKHOLES) + 2


# ---------------------------------------------------------------- gray faults: packet fixtures

def run_with_mark(prog, frame: bytes, mark: int) -> int:
    """BPF_PROG_TEST_RUN with skb->mark set (a struct __sk_buff prefix: len, pkt_type, mark)."""
    data = ctypes.create_string_buffer(frame, len(frame))
    ctx = ctypes.create_string_buffer(struct.pack("=III", 0, 0, mark))
    opts = libbpf.TestRunOpts(sz=ctypes.sizeof(libbpf.TestRunOpts), data_in=ctypes.addressof(data),
                              data_size_in=len(frame), ctx_in=ctypes.addressof(ctx), ctx_size_in=len(ctx.raw),
                              repeat=1)
    check(libbpf.LIBBPF.bpf_prog_test_run_opts(prog.fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return opts.retval


def test_delay_hands_what_goes_to_the_gateway_to_the_delay_line(injector):
    bpf, progs = injector
    bpf[b"fault_cfg"][ctypes.c_uint32(0)] = layout.FaultConfig(faults.MODE_DELAY, redirect_ifindex=DELAY_IFINDEX)
    bpf[b"fault_stats"].clear()
    assert prog_test_run(progs["fault_to_gw"].fd, FRAME)[0] == TC_ACT_REDIRECT
    assert run_with_mark(progs["fault_to_gw"], FRAME, faults.DELAY_MARK) == TC_ACT_OK, "the line's own frames pass"
    assert run_with_mark(progs["fault_to_gw"], FRAME, faults.DELAY_MARK + 1) == TC_ACT_REDIRECT
    assert prog_test_run(progs["fault_from_gw"].fd, FRAME)[0] == TC_ACT_OK, "what gw sends is not delayed"
    stats = bpf[b"fault_stats"][ctypes.c_uint32(0)]
    assert (sum(c.delayed for c in stats), sum(c.passed for c in stats), sum(c.dropped for c in stats)) == (2, 2, 0)


def test_the_delay_mark_does_not_pass_a_blackhole(injector):
    bpf, progs = injector
    bpf[b"fault_cfg"][ctypes.c_uint32(0)] = layout.FaultConfig(faults.MODE_BLACKHOLE)
    assert run_with_mark(progs["fault_to_gw"], FRAME, faults.DELAY_MARK) == TC_ACT_SHOT


def test_a_loss_burst_drops_consecutive_frames_of_its_direction(injector):
    bpf, progs = injector
    cfg = bpf[b"fault_cfg"]
    cfg[ctypes.c_uint32(0)] = layout.FaultConfig(faults.MODE_LOSS, 2**32 - 1, 3)
    assert prog_test_run(progs["fault_to_gw"].fd, FRAME)[0] == TC_ACT_SHOT
    assert list(cfg[ctypes.c_uint32(0)].burst_left) == [0, 2], "the drop started a burst towards gw only"
    # Probability 0 from here: only the burst under way drops.
    burst = layout.FaultConfig(faults.MODE_LOSS, 0, 3)
    burst.burst_left[1] = 2
    cfg[ctypes.c_uint32(0)] = burst
    verdicts = [prog_test_run(progs["fault_to_gw"].fd, FRAME)[0] for _ in range(4)]
    assert verdicts == [TC_ACT_SHOT, TC_ACT_SHOT, TC_ACT_OK, TC_ACT_OK]
    assert prog_test_run(progs["fault_from_gw"].fd, FRAME)[0] == TC_ACT_OK


# ---------------------------------------------------------------- gray faults: the delay line's rules

def test_the_delay_line_never_reorders_under_jitter():
    line = delayline.Line(delayline.Profile(delay_us=100, jitter_us=5000), capacity=1000, rng=random.Random(7))
    for i in range(500):
        line.admit(i.to_bytes(2, "big"), arrived_ns=i * 10_000, elapsed_ns=i * 10_000)
    dues = [due for due, _ in line.held]
    assert dues == sorted(dues) and len(set(dues)) > 10
    assert [int.from_bytes(f, "big") for f in line.due(10**12)] == list(range(500))


def test_the_delay_ramps_and_the_loss_creeps():
    profile = delayline.Profile(delay_us=1000, ramp_to_us=3000, ramp_s=1.0, ramp_loss=0.4)
    rng = random.Random(1)
    assert [profile.hold_ns(t, rng) for t in (0, 500_000_000, 2_000_000_000)] == [1_000_000, 2_000_000, 3_000_000]
    assert [profile.loss(t) for t in (0, 500_000_000, 2_000_000_000)] == [0.0, 0.2, 0.4]


def test_the_delay_line_holds_at_most_its_capacity():
    line = delayline.Line(delayline.Profile(delay_us=1000), capacity=3, rng=random.Random(1))
    for i in range(5):
        line.admit(b"x", arrived_ns=i, elapsed_ns=i)
    assert len(line.held) == 3 and line.counts == {"received": 5, "lost": 0, "overflowed": 2}
    assert list(line.due(1_000_000)) == [b"x"] and line.next_due_ns() == 1_000_001


def test_creep_then_blackhole_is_a_ramp_from_zero_ending_in_a_blackhole():
    params = {"creep_s": 2.5, "creep_delay_us": 3000, "creep_loss": 0.3, "max_s": 60}
    args = delayline.build_parser().parse_args(["--lab", "tp0000", "--link", "A",
                                                *faults.helper_argv("creep-then-blackhole", params)])
    assert (args.delay_us, args.ramp_to_us, args.ramp_s, args.ramp_loss, args.blackhole_after_ramp, args.max_s) == \
        (0, 3000, 2.5, 0.3, True, 60)


@pytest.mark.parametrize("fault,params", [
    ("delay", {}), ("delay", {"delay_us": -1}), ("delay", {"delay_us": 10, "ramp_s": 1.0}),
    ("jitter", {"jitter_us": 0}), ("flap", {"down_ms": 50}), ("flap", {"down_ms": 5, "up_ms": 5, "carrier": 1}),
    ("loss", {"probability": 0.1, "burst": 0}), ("blackhole", {"delay_us": 5}),
    ("creep-then-blackhole", {"creep_s": 5, "creep_delay_us": 1, "creep_loss": 0.1, "max_s": 5}),
])
def test_bad_parameters_are_refused_before_anything_changes(fault, params):
    with pytest.raises(ValueError):
        faults.inject(Lab("tp0000"), fault, "A", **params)  # no such lab: refused before it is looked at


# ---------------------------------------------------------------- gray faults in a lab

def rtts_ms(lab, count=30, interval_s=0.01, link=LINKS["A"]) -> list[tuple[int, float]]:
    """(icmp_seq, RTT ms) of gw's pings to the link's target, in arrival order."""
    out = lab.run("gw", ["ping", "-n", "-c", str(count), "-i", str(interval_s), "-W", "1", link.target],
                  timeout=count * interval_s + 20, check=False).stdout
    return [(int(seq), float(ms)) for seq, ms in re.findall(r"icmp_seq=(\d+) ttl=\d+ time=([\d.]+) ms", out)]


def median_ms(replies) -> float:
    assert replies, "no reply at all"
    return statistics.median(ms for _, ms in replies)


def wait_for_event(lab, link, event, timeout_s) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [e for e in faults.events(lab, link) if e["event"] == event]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no {event!r} event on link {link} in {timeout_s} s: {faults.events(lab, link)}")


def sleep_until_ns(mono_ns: int) -> None:
    time.sleep(max(0.0, (mono_ns - time.monotonic_ns()) / 1e9))


@pytest.fixture
def gray(lab):
    """Clears link A whatever a test leaves on it, so a failure never leaks into the next test."""
    yield lab
    faults.clear(lab, "delay", "A")
    faults.clear(lab, "carrier-down", "A")


def test_delay_adds_latency_until_cleared(gray):
    lab = gray
    assert median_ms(rtts_ms(lab)) < 2
    faults.inject(lab, "delay", "A", delay_us=5000)
    pid = json.loads(faults.helper_state_path(lab, "A").read_text())["pid"]
    assert faults.active(lab)["A"] == {"delay": {"delay_us": 5000, "ramp_to_us": None, "ramp_s": None,
                                                 "max_s": faults.HELPER_MAX_S, "running": True}}
    assert median_ms(rtts_ms(lab)) > 3
    assert faults.counters(lab, "A")["delayed"] >= 30
    faults.clear(lab, "delay", "A")
    assert exited(pid)
    assert faults.active(lab) == {"A": {}, "B": {}}
    assert median_ms(rtts_ms(lab)) < 2
    (exit_event,) = faults.events(lab, "A")
    assert exit_event["reason"] == "stopped" and exit_event["sent"] >= 30 and exit_event["overflowed"] == 0


def test_a_ramping_delay_grows_and_its_helper_ends_at_max_s(gray):
    lab = gray
    started_ns = faults.inject(lab, "delay", "A", delay_us=500, ramp_to_us=7000, ramp_s=1.0, max_s=4.0)
    sleep_until_ns(started_ns + 1_100_000_000)
    assert median_ms(rtts_ms(lab)) > 5
    assert wait_for_event(lab, "A", "exit", timeout_s=15)["reason"] == "lifetime"
    assert wait_until(lambda: faults.active(lab) == {"A": {}, "B": {}}), "gone, leaving pass-through"
    assert median_ms(rtts_ms(lab)) < 2


def test_jitter_spreads_rtts_without_reordering(gray):
    lab = gray
    faults.inject(lab, "jitter", "A", jitter_us=4000)
    spaced = [ms for _, ms in rtts_ms(lab)]
    assert max(spaced) - min(spaced) > 1.5, spaced
    # 1 ms apart with up to 4 ms of jitter: only FIFO keeps the replies in order.
    dense = rtts_ms(lab, count=200, interval_s=0.001)
    assert len(dense) > 150
    assert [seq for seq, _ in dense] == sorted(seq for seq, _ in dense)


def test_inject_replaces_a_gray_fault(gray):
    lab = gray
    faults.inject(lab, "delay", "A", delay_us=3000)
    pid = json.loads(faults.helper_state_path(lab, "A").read_text())["pid"]
    faults.inject(lab, "blackhole", "A")
    assert exited(pid)
    assert faults.active(lab)["A"] == {"blackhole": True}
    assert rtts_ms(lab, count=5) == []
    faults.clear(lab, "blackhole", "A")
    assert median_ms(rtts_ms(lab)) < 2


def test_burst_loss_is_reported(gray):
    lab = gray
    faults.inject(lab, "loss", "A", probability=0.1, burst=4)
    assert faults.active(lab)["A"] == {"loss": {"probability": 0.1, "burst": 4}}
    faults.clear(lab, "loss", "A")
    assert faults.active(lab)["A"] == {}


def test_flap_alternates_and_ends_up(gray):
    lab = gray
    count, down_ms, up_ms = 8, 100, 100
    faults.inject(lab, "flap", "A", down_ms=down_ms, up_ms=up_ms, count=count)
    assert faults.active(lab)["A"]["flap"]["running"]
    replies = rtts_ms(lab, count=150)
    assert 15 <= len(replies) <= 135, f"{len(replies)} of 150 pings answered: both states must show"
    assert wait_for_event(lab, "A", "exit", timeout_s=10)["reason"] == "count"
    transitions = [e for e in faults.events(lab, "A") if e["event"] != "exit"]
    assert [e["event"] for e in transitions] == ["down", "up"] * count
    times = [e["mono_ns"] for e in transitions]
    assert times == sorted(times)
    assert times[-1] - times[0] >= ((count - 1) * (down_ms + up_ms) + down_ms) * 1_000_000, "the schedule held"
    assert wait_until(lambda: faults.active(lab)["A"] == {})
    assert median_ms(rtts_ms(lab)) < 2


def test_flap_on_carrier_drops_gw_carrier_and_restores_the_path(gray):
    lab = gray
    faults.inject(lab, "flap", "A", down_ms=300, up_ms=300, count=2, carrier=True)
    assert wait_until(lambda: gw_carrier(lab) == 0)
    assert wait_for_event(lab, "A", "exit", timeout_s=10)["reason"] == "count"
    assert wait_until(lambda: gw_carrier(lab) == 1)
    # trader -> exch goes via A, and carA's route back to the trader was deleted and restored with each flap.
    assert lab.run("trader", ["ping", "-c", "3", "-i", "0.05", "-W", "1", "-q", EXCHANGE_ADDR],
                   check=False).returncode == 0


def test_creep_rises_then_blackholes_until_cleared(gray):
    lab = gray
    creep_s = 2.0
    started_ns = faults.inject(lab, "creep-then-blackhole", "A", creep_s=creep_s, creep_delay_us=6000,
                               creep_loss=0.3)
    early = median_ms(rtts_ms(lab, count=20))
    sleep_until_ns(started_ns + 1_400_000_000)
    late = median_ms(rtts_ms(lab, count=20))
    assert late > early + 1, (early, late)
    blackhole = wait_for_event(lab, "A", "blackhole", timeout_s=creep_s + 10)
    assert blackhole["mono_ns"] >= started_ns + creep_s * 1e9
    assert faults.active(lab)["A"]["creep-then-blackhole"]["blackhole_ns"] == blackhole["mono_ns"]
    assert wait_until(lambda: not faults.active(lab)["A"]["creep-then-blackhole"]["running"]), \
        "the helper is gone and the blackhole stays"
    assert rtts_ms(lab, count=20) == [], "every ping lost in the blackhole"
    faults.clear(lab, "creep-then-blackhole", "A")
    assert faults.active(lab)["A"] == {}
    assert median_ms(rtts_ms(lab)) < 2


def gw_carrier(lab, link=LINKS["A"]):
    with lab.iproute("gw") as ipr:
        (dev,) = ipr.get_links(ifname=link.gw_dev)
    return dev.get("IFLA_CARRIER")


def wait_until(predicate, timeout_s=5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def exited(pid: int) -> bool:
    """Gone, or a zombie that nobody reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
