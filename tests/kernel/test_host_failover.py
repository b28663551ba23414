"""Host failover in an HA pair lab (lab.hostscenario): a fault on the
active gateway, orders measured at the exchange. twinpath takes over exactly
in the scenarios it must (host-death, host-links-down, lan-partition), never
with both gateways forwarding, and a TCP order session survives a host's
death; keepalived, the comparison, runs the same scenario."""
import json

import pytest

from lab import hostscenario, pair


class Peers:
    """The module's pair lab and the one peer running on it: asking for the
    other stops this one first (both would claim the VIP)."""

    def __init__(self, lab: pair.PairLab):
        self.lab = lab
        self.running: hostscenario.HostPair | None = None

    def get(self, peer: str) -> hostscenario.HostPair:
        if self.running and self.running.peer != peer:
            self.running.stop()
            self.running = None
        if self.running is None:
            self.running = hostscenario.prepare(self.lab, peer)
        return self.running


@pytest.fixture(scope="module")
def peers():
    lab = pair.up()
    p = Peers(lab)
    try:
        yield p
    finally:
        try:
            if p.running:
                p.running.stop()
        finally:
            pair.down(lab.name)


def test_keepalived_takes_over_a_dead_host_too(peers):
    r = hostscenario.trial(peers.get("keepalived"), "host-death")
    assert r["took_over"] and r["takeover_us"] > 0, json.dumps(r)
    assert hostscenario.contract_failures(r) == []   # the comparison: nothing is required of it
    assert r["via"]["gw1"] > 0 and r["via"]["gw2"] > 0, r["via"]


@pytest.mark.parametrize("name", hostscenario.HOST_SCENARIOS)
def test_twinpath_takes_over_exactly_when_it_must_and_never_both_forward(peers, name):
    r = hostscenario.trial(peers.get("twinpath"), name)
    assert r["took_over"] == hostscenario.EXPECT[name], json.dumps(r)
    assert r["dual_active_us"] == 0 and r["duplicated"] == 0, json.dumps(r)
    if name == "host-death":
        assert r["tcp_session_survived"], json.dumps(r["tcp"])
    assert r["pair_roles"] or not r["took_over"], "a takeover shows in the daemons' pair-role events"
