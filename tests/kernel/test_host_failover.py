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
    assert hostscenario.contract_failures(r) == [], json.dumps(r)   # switchover: not one order lost
    if name == "host-death":
        assert r["tcp_session_survived"], json.dumps(r["tcp"])
    assert r["pair_roles"] or not r["took_over"], "a takeover shows in the daemons' pair-role events"


def test_a_paired_daemon_runs_its_pair_thread_real_time_above_its_other_threads(peers):
    """With [pair] (sender_priority 10): the pair thread SCHED_FIFO 9, every
    other thread of the daemon FIFO 1, so none holding the GIL is taken off
    the CPU by a busy process while the pair thread waits for it."""
    import os
    hp = peers.get("twinpath")
    hp.settle()   # a daemon restarted by the last trial runs its pair threads once it has settled
    for node, daemon in hp.daemons.items():
        threads = os.listdir(f"/proc/{daemon.proc.pid}/task")
        policies = [(os.sched_getscheduler(int(tid)), os.sched_getparam(int(tid)).sched_priority) for tid in threads]
        assert sorted(policies).count((os.SCHED_FIFO, 9)) == 1, (node, policies)
        assert all(p == (os.SCHED_FIFO, 1) for p in policies if p != (os.SCHED_FIFO, 9)), (node, policies)
