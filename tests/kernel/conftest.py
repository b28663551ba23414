from __future__ import annotations

import time

import pytest

from appliance import config
from appliance.lab.topology import render_config



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
    from appliance.dataplane import Gateway
    return Gateway(fixture_config)


def now_ns() -> int:
    # bpf_ktime_get_ns() is CLOCK_MONOTONIC, the same clock as this.
    return time.monotonic_ns()

MAC = {"A.src": "02:00:00:00:0a:01", "A.nh": "02:00:00:00:0a:02",
       "B.src": "02:00:00:00:0b:01", "B.nh": "02:00:00:00:0b:02"}
# BPF_PROG_TEST_RUN runs skb programs on the loopback device, so a link whose
# ifindex is 1 is "the interface this packet arrived on".
TEST_RUN_IFINDEX = 1


class FixtureGateway:
    """The compiled gateway with maps reset to a known state per test, and
    the reflex events it emitted."""

    def __init__(self, gateway):
        from appliance.dataplane import LinkState
        self.gw = gateway
        self.events = []
        self._LinkState = LinkState
        gateway.open_events(lambda ev: self.events.append((ev.class_id, ev.from_link, ev.to_link,
                                                           ev.cause, ev.silence_ns)))

    def reset(self):
        gw = self.gw
        for name in ("tp_health", "tp_steer_stats", "tp_rtt_hist", "tp_gstats"):
            gw.bpf[name].clear()
        gw.write_policy()
        for link_id, name in enumerate("AB"):
            self.set_link(link_id, carrier=True, nexthop=True)
            self.set_fresh(link_id, age_ns=0)
        gw.poll(0)
        self.events.clear()

    def set_link(self, link_id, carrier=True, nexthop=True, ifindex=TEST_RUN_IFINDEX):
        name = "AB"[link_id]
        self.gw.write_link(link_id, self._LinkState(
            ifindex=ifindex, src_mac=MAC[f"{name}.src"],
            dst_mac=MAC[f"{name}.nh"] if nexthop else None, carrier=carrier))

    def set_fresh(self, link_id, age_ns, fresh_for_ns=10**9):
        import ctypes
        from appliance import layout
        now = now_ns()
        last = now - age_ns if age_ns is not None else 0
        self.gw.bpf["tp_health"][ctypes.c_uint32(link_id)] = layout.Health(
            last_reply_ns=last, fresh_since_ns=max(last - fresh_for_ns, 0) if last else 0)

    def run(self, prog, packet: bytes):
        from appliance.bpfsys import prog_test_run
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
