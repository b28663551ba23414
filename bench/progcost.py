"""What each fast-path program costs per packet, against an empty program of
the same hook, measured side by side with BPF_PROG_TEST_RUN.

Every case is a (program, packet) pair that takes one known path; each is
paired with an empty program of its hook run on the same packet the same
way. Rounds interleave all cases, so machine noise lands on all of them
alike; each round gives one figure per case, and the report is its p50
(and p99) over rounds, nearest rank.

`repeat` runs one packet through the program that many times inside the
kernel (the mean is the round's figure): it leaves out the syscall and timer
overhead. It only suits paths that give the same result every time on the
same bytes; steer's TTL decrement compounds over repeats, so its packet
starts at TTL 255. A first copy in arbitration is first only once, so that
case runs one packet per call (repeat 1, a fresh sequence each call) and so
does its empty twin. One packet per call pays what ran in between (the
syscall, this Python) in cache misses on the program's code and maps, far
more for an arbiter than for an empty program: arb_duplicate_single runs
the duplicate that way too, so that a first copy's own work is the
difference of two figures measured alike (measured 12-04: a duplicate read
+75 at 64 repeats and +135 at one per call).

Three things keep one case's cost out of another's figure:
- Every XDP program measured, and the empty one, stays attached for the
  whole run (to a veth of a namespace only this process holds), as it is on
  a gateway. Otherwise BPF_PROG_TEST_RUN puts an XDP program into the
  kernel's XDP dispatcher before its repeats and takes it out after: two
  text patches and two RCU grace periods per call, whose aftermath landed
  in the timed loop of the next call (measured 12-04: TC steer +31 ns over
  an empty program with only TC cases beside it, +57 with XDP cases).
- A case's calls alternate with its empty twin's on the same packet, so
  whatever the previous case leaves behind falls on both alike, not on the
  program that used to run first.
- Each case's calls of a round start after one untimed call of the program
  and of its empty twin. The first call after another case's pays for
  bringing the program's code and maps back into the caches, microseconds
  for an arbiter: averaged over a round of one-packet calls it moved the
  first copy by about 150 ns with the case before it (measured 12-04).
"""
from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from appliance import layout
from appliance.core.stats import percentiles
from bench.progress import Advance, ignore
from lab import feedproto
from lab.libbpf import prog_test_run
from lab.topology import EXCHANGE_ADDR, FEED_DST, FEED_PORTS, FEED_SOURCES, LINKS, TRADER_ADDR, render_config

REPEAT = 64
EMPTY_SOURCES = {
    "tc": "int empty_tc(struct __sk_buff *skb) { return 0; }",
    "xdp": "int empty_xdp(struct xdp_md *ctx) { return XDP_PASS; }",
}
# tc: TC_ACT_OK 0, TC_ACT_SHOT 2, TC_ACT_REDIRECT 7. xdp: XDP_DROP 1, XDP_PASS 2, XDP_REDIRECT 4.
VERDICTS = {"redirect_tc": 7, "ok_tc": 0, "shot_tc": 2, "drop_xdp": 1, "pass_xdp": 2, "redirect_xdp": 4}

LINK_A_MACS = ("02:00:00:00:0a:01", "02:00:00:00:0a:02")
TRADER = {"ifindex": 7, "src": "02:00:00:00:01:fe", "dst": "02:00:00:00:01:01"}
# BPF_PROG_TEST_RUN runs skb programs on loopback: a link on ifindex 1 is "this interface".
TEST_RUN_IFINDEX = 1


@dataclass
class Case:
    hook: str                        # "tc" | "xdp": which empty program is its yardstick
    fd: int
    packet: Callable[[int], bytes]   # the i-th call's packet
    verdict: int                     # what the path must return, checked on every call
    repeat: int = REPEAT
    prepare: Callable[[], None] = lambda: None  # before each round (e.g. keep a link fresh)
    # Run once, untimed, before the case's calls of each round, with its
    # empty twin: a packet the program has seen (None: the case's next one,
    # for a case whose every call takes the same path on the same bytes).
    warm: bytes | None = None


def measure(cases: dict[str, Case], rounds: int, calls_per_round: int, advance: Advance = ignore) -> dict:
    """fastpath_ns.<case> = {ns, empty_ns, ratio, p99_ns, empty_p99_ns, repeat, rounds};
    advance() after each round."""
    from bcc import BPF
    empties = {hook: BPF(text=src.encode()) for hook, src in EMPTY_SOURCES.items()}
    empty_fd = {"tc": empties["tc"].load_func("empty_tc", BPF.SCHED_CLS).fd,
                "xdp": empties["xdp"].load_func("empty_xdp", BPF.XDP).fd}
    samples = {name: ([], []) for name in cases}
    xdp_fds = {empty_fd["xdp"]} | {case.fd for case in cases.values() if case.hook == "xdp"}
    call = 0
    with attached_xdp(sorted(xdp_fds)):
        for _ in range(rounds):
            for name, case in cases.items():
                case.prepare()
                warm = case.packet(call) if case.warm is None else case.warm
                prog_test_run(case.fd, warm)
                prog_test_run(empty_fd[case.hook], warm)
                totals = [0, 0]
                for i in range(calls_per_round):
                    packet = case.packet(call + i)
                    for target, fd in ((0, case.fd), (1, empty_fd[case.hook])):
                        verdict, _out, ns = prog_test_run(fd, packet, repeat=case.repeat)
                        if target == 0 and verdict != case.verdict:
                            raise RuntimeError(f"{name}: verdict {verdict}, expected {case.verdict}: "
                                               "the bench packet took the wrong path")
                        totals[target] += ns
                for target in (0, 1):
                    samples[name][target].append(totals[target] / calls_per_round)
            call += calls_per_round
            advance()
    for bpf in empties.values():
        bpf.cleanup()
    out = {}
    for name, (prog, empty) in samples.items():
        p, e = percentiles(prog, ("p50", "p99")), percentiles(empty, ("p50", "p99"))
        out[name] = {"ns": p["p50"], "empty_ns": e["p50"], "ratio": round(p["p50"] / e["p50"], 2),
                     "p99_ns": p["p99"], "empty_p99_ns": e["p99"],
                     "repeat": cases[name].repeat, "rounds": rounds, "calls_per_round": calls_per_round,
                     "hook": cases[name].hook}
    return out


CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def attached_xdp(fds: Iterable[int]) -> Iterator[object]:
    """Each XDP program attached to a veth of its own, in a network namespace
    that only the yielded netlink socket keeps alive: no traffic reaches it,
    and it goes (detaching every program) when the socket closes or the
    process dies, so nothing is left behind."""
    from pyroute2 import IPRoute

    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(CLONE_NEWNET):
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) for the XDP attach namespace")
        try:
            ipr = IPRoute()
        finally:
            if libc.setns(own, CLONE_NEWNET):
                raise OSError(ctypes.get_errno(), "setns back to the bench's own network namespace")
    finally:
        os.close(own)
    try:
        for i, fd in enumerate(fds):
            ipr.link("add", ifname=f"xdp{i}", kind="veth", peer=f"peer{i}")
            ipr.link("set", index=ipr.link_lookup(ifname=f"xdp{i}")[0], xdp_fd=fd)
        yield ipr
    finally:
        ipr.close()


def gateway_cases() -> tuple[object, dict[str, Case]]:
    """Steer at TC and at XDP (redirect to link A, and the no-rule exit to kernel routing) and
    the heartbeat programs, on a gateway compiled from the lab config with
    link A fresh. Returns the Gateway too: the caller keeps it alive."""
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.layers.l2 import Ether

    from appliance.core import config
    from appliance.edge.dataplane import PROBE_IDENT, Gateway, LinkState
    from appliance.edge.keys import HeartbeatKey
    from lab.siphash import probe_mac

    # 100 ms timers: link A stays fresh for a whole round without a live sender.
    gw = Gateway(config.parse(render_config(interval_us=100_000), "bench"))
    gw.write_policy(gw.preferred_active())
    key = HeartbeatKey(1, bytes(range(16)))
    gw.write_keys([key])
    local, target = ipaddress.IPv4Address(LINKS["A"].gw_addr), ipaddress.IPv4Address(LINKS["A"].target)
    for link_id in range(2):
        gw.write_link(link_id, LinkState(TEST_RUN_IFINDEX, *LINK_A_MACS, carrier=True, local=local, target=target,
                                         xdp_target=True))

    def keep_fresh() -> None:
        now = time.monotonic_ns()
        for link_id in range(2):
            gw.bpf["tp_health"][ctypes.c_uint32(link_id)] = layout.Health(
                last_reply_ns=now, fresh_since_ns=now - 10**9)

    def udp(dport: int) -> bytes:
        return bytes(Ether(src=TRADER["dst"], dst=TRADER["src"]) / IP(src=TRADER_ADDR, dst=EXCHANGE_ADDR, ttl=255)
                     / UDP(sport=40000, dport=dport) / (b"x" * 32))

    def probe(echo_type: int, signed: bool = False) -> bytes:
        icmp = bytearray(layout.probe_template(0, PROBE_IDENT))
        icmp[0] = echo_type
        p = layout.Probe.from_buffer(icmp, layout.ICMP_ECHO_HEADER)
        p.tx_ns, p.seq, p.key_id = time.monotonic_ns() - 50_000, 1, key.id
        p.mac = probe_mac(key.key, local, target, 0, key.id, p.seq, p.tx_ns) if signed else 0x5EED
        msg = ICMP(bytes(icmp))
        del msg.chksum
        src, dst = (local, target) if echo_type == 8 else (target, local)
        return bytes(Ether() / IP(src=str(src), dst=str(dst)) / ICMP(bytes(msg)))

    bad_checksum = bytearray(udp(9000))
    bad_checksum[24] ^= 0xFF
    steered, unsteered, request, forged = udp(9000), udp(9300), probe(8), probe(0)
    # A signed reply verifies in full each call (the repeats are then replays,
    # refused only after the MAC), so this is the cost of verifying one.
    def signed_reply(_i: int) -> bytes:
        return probe(0, signed=True)
    return gw, {
        "steer_redirect": Case("tc", gw.steer.fd, lambda i: steered, VERDICTS["redirect_tc"], prepare=keep_fresh),
        "steer_no_rule": Case("tc", gw.steer.fd, lambda i: unsteered, VERDICTS["ok_tc"], prepare=keep_fresh),
        # The same order at XDP (steer.xdp), against an empty XDP program.
        "steer_xdp_redirect": Case("xdp", gw.steer_xdp.fd, lambda i: steered, VERDICTS["redirect_xdp"],
                                   prepare=keep_fresh),
        "steer_xdp_no_rule": Case("xdp", gw.steer_xdp.fd, lambda i: unsteered, VERDICTS["pass_xdp"],
                                  prepare=keep_fresh),
        "steer_bad_checksum": Case("tc", gw.steer.fd, lambda i: bytes(bad_checksum), VERDICTS["ok_tc"],
                                   prepare=keep_fresh),
        "heartbeat_reply": Case("tc", gw.hb_ingress.fd, signed_reply, VERDICTS["shot_tc"]),
        "heartbeat_forged": Case("tc", gw.hb_ingress.fd, lambda i: forged, VERDICTS["shot_tc"]),
        "heartbeat_stamp": Case("tc", gw.hb_egress.fd, lambda i: request, VERDICTS["ok_tc"]),
    }


def arbitration_cases(calls: int) -> tuple[object, dict[str, Case]]:
    """First copy (forwarded, the next sequence in order: a live feed's
    common path), duplicate (dropped; also one per call, as the first copy
    is measured), late fill (forwarded below the feed's
    high mark, with its fill event) and passthrough (not a feed) on a
    compiled arbiter with two MoldUDP64 feeds. `calls` bounds how many fresh
    sequences the first-copy and fill cases may ask for."""
    from appliance.edge.arbitration import Arbiter

    arb = Arbiter(hb_dedup_ns=50_000_000)
    port = FEED_PORTS["moldudp64"]
    fill_port = port + 1  # a feed of its own: its high mark stays above every fill
    for feed_id, p in enumerate((port, fill_port)):
        arb.write_feed(feed_id, "moldudp64", ipaddress.IPv4Address(FEED_DST), p, TRADER["ifindex"],
                       TRADER["src"], TRADER["dst"])
    arb.sync_clock()

    def frame(seq: int, p: int = port) -> bytes:
        payload = feedproto.mold_packet("BENCH", seq, [feedproto.lab_message("moldudp64", seq, 16)])
        return feedproto.line_frame(payload, FEED_DST, p, FEED_SOURCES["A"])

    line_a, line_b = (p.fd for p in arb.lines)
    seen = frame(1)
    prog_test_run(line_a, seen)  # line A delivered it: every later copy on B is a duplicate
    in_order = [frame(s) for s in range(2, calls + 2)]
    fill_high = frame(calls + 1, fill_port)
    prog_test_run(line_a, fill_high)
    fills = [frame(s, fill_port) for s in range(1, calls + 1)]
    other = feedproto.line_frame(b"\x00" * 38, FEED_DST, 9100, FEED_SOURCES["A"])
    return arb, {
        "arb_first_copy": Case("xdp", line_a, in_order.__getitem__, VERDICTS["redirect_xdp"], repeat=1,
                               warm=seen),
        "arb_duplicate": Case("xdp", line_b, lambda i: seen, VERDICTS["drop_xdp"]),
        "arb_duplicate_single": Case("xdp", line_b, lambda i: seen, VERDICTS["drop_xdp"], repeat=1),
        "arb_late_fill": Case("xdp", line_a, fills.__getitem__, VERDICTS["redirect_xdp"], repeat=1,
                              warm=fill_high),
        "arb_passthrough": Case("xdp", line_a, lambda i: other, VERDICTS["pass_xdp"]),
    }


def run(rounds: int = 100, calls_per_round: int = 20, advance: Advance = ignore) -> dict:
    """Every program and path of the fast path, side by side in one run."""
    _gateway, cases = gateway_cases()  # these own the programs: referenced until measured
    _arbiter, arb_cases = arbitration_cases(rounds * calls_per_round)
    return measure(cases | arb_cases, rounds, calls_per_round, advance)
