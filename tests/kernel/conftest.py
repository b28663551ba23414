from __future__ import annotations

import time

import pytest

from appliance.core import config
from lab.topology import render_config

# Fixture timers: 100 ms x 3 (dead after 300 ms). The test's own overhead
# between writing a map and running a program reaches milliseconds on a
# loaded machine; ages in the tests keep >= 100 ms from every limit.
FIXTURE_INTERVAL_NS = 100_000_000


@pytest.fixture(scope="session")
def fixture_config() -> config.Config:
    return config.parse(render_config(interval_us=FIXTURE_INTERVAL_NS // 1000), "fixture")


@pytest.fixture(scope="session")
def compiled_gateway(fixture_config):
    """One compilation for every packet-fixture test (BCC takes ~0.5 s)."""
    from appliance.edge.dataplane import Gateway
    return Gateway(fixture_config)


def now_ns() -> int:
    # bpf_ktime_get_ns() is CLOCK_MONOTONIC, the same clock as this.
    return time.monotonic_ns()

MAC = {"A.src": "02:00:00:00:0a:01", "A.nh": "02:00:00:00:0a:02",
       "B.src": "02:00:00:00:0b:01", "B.nh": "02:00:00:00:0b:02"}
# Each link's own address and heartbeat target.
ADDR = {"A.local": "198.18.10.1", "A.target": "198.18.10.2",
        "B.local": "198.18.11.1", "B.target": "198.18.11.2"}
# Heartbeat keys of the fixtures: (id, 16 bytes); the first signs.
FIXTURE_KEYS = [(7, bytes(range(16))), (9, bytes(range(100, 116)))]
# BPF_PROG_TEST_RUN runs skb programs on the loopback device, so a link whose
# ifindex is 1 is "the interface this packet arrived on".
TEST_RUN_IFINDEX = 1


class FixtureGateway:
    """The compiled gateway with maps reset to a known state per test, and
    the reflex events it emitted."""

    def __init__(self, gateway):
        from appliance.edge.dataplane import LinkState
        self.gw = gateway
        self.events = []
        self._LinkState = LinkState
        gateway.open_events(lambda ev: self.events.append((ev.class_id, ev.from_link, ev.to_link,
                                                           ev.cause, ev.silence_ns)))

    def reset(self):
        from appliance.edge.keys import HeartbeatKey
        gw = self.gw
        for name in ("tp_health", "tp_rtt_ring", "tp_probe_round", "tp_steer_stats", "tp_rtt_hist", "tp_gstats",
                     "tp_pair", "tp_wake"):
            gw.bpf[name].clear()
        gw.write_policy(gw.preferred_active())
        gw.write_keys([HeartbeatKey(i, k) for i, k in FIXTURE_KEYS])
        for link_id, name in enumerate("AB"):
            self.set_link(link_id, carrier=True, nexthop=True)
            self.set_fresh(link_id, age_ns=0)
        gw.poll(0)
        self.events.clear()

    def set_link(self, link_id, carrier=True, nexthop=True, ifindex=TEST_RUN_IFINDEX, ttl_security=False,
                 xdp_target=True):
        import ipaddress
        name = "AB"[link_id]
        self.gw.write_link(link_id, self._LinkState(
            ifindex=ifindex, src_mac=MAC[f"{name}.src"],
            dst_mac=MAC[f"{name}.nh"] if nexthop else None, carrier=carrier,
            local=ipaddress.IPv4Address(ADDR[f"{name}.local"]),
            target=ipaddress.IPv4Address(ADDR[f"{name}.target"]), ttl_security=ttl_security,
            xdp_target=xdp_target))

    def set_fresh(self, link_id, age_ns, fresh_for_ns=10**9, unanswered=3, stamped_seq=0):
        """The link's last reply age_ns ago (None: never), with `unanswered`
        probes sent since (by default a sender that kept probing)."""
        import ctypes

        from appliance import layout
        now = now_ns()
        last = now - age_ns if age_ns is not None else 0
        self.gw.bpf["tp_health"][ctypes.c_uint32(link_id)] = layout.Health(
            last_reply_ns=last, fresh_since_ns=max(last - fresh_for_ns, 0) if last else 0,
            unanswered=unanswered, stamped_seq=stamped_seq)

    def run(self, prog, packet: bytes):
        from lab.libbpf import prog_test_run
        verdict, out, _ = prog_test_run(prog.fd, packet)
        self.gw.poll(0)
        return verdict, out


def _fixture(compiled):
    fx = getattr(compiled, "_fixture", None) or FixtureGateway(compiled)
    compiled._fixture = fx
    fx.reset()
    return fx


@pytest.fixture
def gateway(compiled_gateway):
    return _fixture(compiled_gateway)


@pytest.fixture(scope="module")
def lab():
    """A lab of the test module's own, torn down whatever happens."""
    from lab import topology
    lab = topology.up()
    try:
        yield lab
    finally:
        topology.down(lab.name)


# -- arbitration fixtures ---------------------------------------------------
FEED_ADDR = "198.18.1.1"
FEED_PORTS = {"moldudp64": 26400, "mdp3": 26401}
FEED_IDS = {"moldudp64": 0, "mdp3": 1}
TRADER = {"ifindex": 7, "src": "02:00:00:00:01:fe", "dst": "02:00:00:00:01:01"}
HB_DEDUP_NS = 100_000_000  # same margins as the gateway fixtures
XDP_DROP, XDP_PASS, XDP_REDIRECT = 1, 2, 4


@pytest.fixture(scope="session")
def compiled_arbiter():
    from appliance.edge.arbitration import Arbiter
    return Arbiter(HB_DEDUP_NS)


class FixtureArbiter:
    """The compiled arbiter with both fixture feeds configured and all state
    cleared per test; `events` collects (kind, feed, line, first, last)."""

    def __init__(self, arbiter):
        from appliance import layout
        self.arb = arbiter
        self.events = []
        arbiter.open_events(lambda ev: self.events.append(
            (layout.ARB_EVENTS[ev.kind], ev.feed, "AB"[ev.line], ev.first, ev.last)))

    def reset(self):
        import ipaddress
        arb = self.arb
        for name in ("tp_feeds", "tp_feed_index", "tp_feed_state", "tp_feed_claims", "tp_line_stats", "tp_arb_gstats"):
            arb.bpf[name].clear()
        for proto, port in FEED_PORTS.items():
            arb.write_feed(FEED_IDS[proto], proto, ipaddress.IPv4Address(FEED_ADDR), port,
                           TRADER["ifindex"], TRADER["src"], TRADER["dst"])
        arb.sync_clock()
        arb.poll(0)
        self.events.clear()

    def run(self, line: str, frame: bytes):
        from lab.libbpf import prog_test_run
        verdict, out, _ = prog_test_run(self.arb.lines["AB".index(line)].fd, frame)
        self.arb.poll(0)
        return verdict, out

    def stats(self, line: str, proto: str = "moldudp64"):
        return self.arb.line_stats(FEED_IDS[proto], "AB".index(line))


@pytest.fixture
def arbiter(compiled_arbiter):
    fx = getattr(compiled_arbiter, "_fixture", None) or FixtureArbiter(compiled_arbiter)
    compiled_arbiter._fixture = fx
    fx.reset()
    return fx
