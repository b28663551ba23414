"""The HA pair lab (lab.pair): its paths, its faults, the etcd witness and keepalived."""

import os
import shutil
import signal
import sys
import time

import pytest

from lab import pair
from lab.colo import EXCHANGE_ADDR
from lab.pair import WITNESS_ADDR, anchor_addr, crosslink_addr, int_addr, mgmt_addr, peer_lan_addr

pytestmark = pytest.mark.kernel

# Drops an XDP_PASS program on the given interfaces and exits, as a daemon
# killed with its host would leave it.
XDP_ATTACH = r"""
import sys
from bcc import BPF
from pyroute2 import IPRoute
prog = BPF(text="int pass(struct xdp_md *ctx) { return XDP_PASS; }").load_func("pass", BPF.XDP)
with IPRoute() as ipr:
    for dev in sys.argv[1:]:
        ipr.link("set", index=ipr.link_lookup(ifname=dev)[0], xdp_fd=prog.fd)
"""


@pytest.fixture(scope="module")
def lab():
    lab = pair.up()
    try:
        yield lab
    finally:
        pair.down(lab.name)


@pytest.fixture
def healed(lab):
    """Every cut (the carriers' too) removed after the test, whatever happened."""
    yield lab
    pair.heal_all(lab)


def needs(tool):
    if shutil.which(tool) is None:
        message = f"{tool} is not installed (scripts/setup.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def reaches(lab, role, target, via=None):
    return pair.reaches(lab, role, target, via)


def unreachable(lab, role, target, via=None):
    return not pair.reaches(lab, role, target, via, attempts=1)


def wait_for(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_every_path_pings(lab):
    for node in pair.NODES:
        peer = pair.peer_of(node)
        assert reaches(lab, "trader", int_addr(node))
        assert reaches(lab, "trader", peer_lan_addr(node))
        assert reaches(lab, "trader", anchor_addr(node))
        assert reaches(lab, node, EXCHANGE_ADDR, via=int_addr(node))
        for link in pair.CARRIER_LINKS.values():
            if link.node == node:
                assert reaches(lab, node, link.target)
        assert reaches(lab, node, int_addr(peer), via=pair.PEER_LAN_DEV)
        assert reaches(lab, node, pair.TRADER_ADDR, via=pair.ANCHOR_DEV)
        assert reaches(lab, node, crosslink_addr(peer))
        assert reaches(lab, node, mgmt_addr(peer))
        assert reaches(lab, node, WITNESS_ADDR)


def test_each_gateway_answers_arp_only_for_its_own_addresses(lab):
    for node in pair.NODES:
        assert reaches(lab, "trader", int_addr(node))
        assert reaches(lab, "trader", peer_lan_addr(node))
        assert reaches(lab, "trader", anchor_addr(node))
    with lab.iproute("trader") as ipr:
        learnt = {n.get("NDA_DST"): n.get("NDA_LLADDR") for n in ipr.get_neighbours()}
    for node in pair.NODES:
        with lab.iproute(node) as ipr:
            macs = {link.get("IFLA_IFNAME"): link.get("IFLA_ADDRESS") for link in ipr.get_links()}
        assert learnt[int_addr(node)] == macs[pair.INGRESS_DEV]
        assert learnt[peer_lan_addr(node)] == macs[pair.PEER_LAN_DEV]
        assert learnt[anchor_addr(node)] == macs[pair.ANCHOR_DEV]


def test_exchange_tells_gateways_apart_by_handoff(lab):
    gateways = pair.exch_gateways(lab)
    links = pair.exch_handoff_links(lab)
    assert sorted(gateways.values()) == ["gw1", "gw1", "gw2", "gw2"]
    assert sorted(links.values()) == [("gw1", "A"), ("gw1", "B"), ("gw2", "A"), ("gw2", "B")]
    assert all(gateways[index] == node for index, (node, _) in links.items())


def test_crosslink_cut_leaves_the_lan(healed):
    lab = healed
    pair.cut(lab, "crosslink")
    with lab.iproute("gw1") as ipr:
        (xl,) = ipr.get_links(ifname=pair.CROSSLINK_DEV)
    assert xl.get("IFLA_CARRIER") == 1  # gray: the gateway sees no link change
    assert unreachable(lab, "gw1", crosslink_addr("gw2"))
    assert reaches(lab, "gw1", int_addr("gw2"))
    assert reaches(lab, "gw1", mgmt_addr("gw2"))
    pair.heal(lab, "crosslink")
    assert reaches(lab, "gw1", crosslink_addr("gw2"))


def test_lan_cut_isolates_one_gateway(healed):
    lab = healed
    pair.cut(lab, "lan", "gw1")
    assert pair.status(lab.name)["cuts"] == {"sw": ["cut_p1"]}
    assert unreachable(lab, "trader", int_addr("gw1"))
    assert unreachable(lab, "gw1", int_addr("gw2"), via=pair.PEER_LAN_DEV)
    assert reaches(lab, "trader", int_addr("gw2"))
    assert reaches(lab, "gw1", crosslink_addr("gw2"))
    pair.heal(lab, "lan", "gw1")
    assert pair.status(lab.name)["cuts"] == {}
    assert reaches(lab, "trader", int_addr("gw1"))
    pair.heal(lab, "lan", "gw1")  # healing what is whole is a no-op


def test_witness_cuts(healed):
    lab = healed
    pair.cut(lab, "witness")
    for node in pair.NODES:
        assert unreachable(lab, node, WITNESS_ADDR)
    assert reaches(lab, "gw1", mgmt_addr("gw2"))
    pair.heal(lab, "witness")
    pair.cut(lab, "witness", "gw1")
    assert unreachable(lab, "gw1", WITNESS_ADDR)
    assert reaches(lab, "gw2", WITNESS_ADDR)
    pair.heal(lab, "witness", "gw1")
    assert reaches(lab, "gw1", WITNESS_ADDR)


def test_links_down_cuts_one_gateway_from_the_exchange(healed):
    lab = healed
    stamp = pair.links_down(lab, "gw1")
    assert 0 < stamp <= time.monotonic_ns()
    assert unreachable(lab, "gw1", EXCHANGE_ADDR, via=int_addr("gw1"))
    assert reaches(lab, "gw2", EXCHANGE_ADDR, via=int_addr("gw2"))
    pair.links_up(lab, "gw1")
    assert reaches(lab, "gw1", EXCHANGE_ADDR, via=int_addr("gw1"))


def test_heal_all_removes_every_cut(healed):
    lab = healed
    pair.cut(lab, "lan", "gw2")
    pair.cut(lab, "crosslink")
    pair.links_down(lab, "gw2")
    pair.heal_all(lab)
    assert pair.status(lab.name)["cuts"] == {}
    assert reaches(lab, "trader", int_addr("gw2"))
    assert reaches(lab, "gw2", EXCHANGE_ADDR, via=int_addr("gw2"))


def test_kill_host_then_revive_host(lab):
    node = "gw2"
    sleeper = lab.spawn(node, ["sleep", "60"])
    lab.run(node, ["tc", "qdisc", "add", "dev", pair.INGRESS_DEV, "clsact"])
    lab.run(node, ["ip", "addr", "add", f"{pair.VIP}/24", "dev", pair.INGRESS_DEV])
    lab.run(node, [sys.executable, "-c", XDP_ATTACH, pair.INGRESS_DEV, "lnkA"], timeout=60)
    lab.node_pin_dir(node).mkdir(parents=True)
    try:
        pair.kill_host(lab, node)
        assert sleeper.wait(timeout=5) == -signal.SIGKILL
        assert unreachable(lab, "trader", int_addr(node))
        pair.revive_host(lab, node)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not lab.node_pin_dir(node).exists()
    assert not pair.vip_holder(lab, node)
    assert "clsact" not in lab.run(node, ["tc", "qdisc", "show"]).stdout
    assert "xdp" not in lab.run(node, ["ip", "-d", "link", "show"]).stdout
    assert reaches(lab, "trader", int_addr(node))
    assert reaches(lab, node, EXCHANGE_ADDR, via=int_addr(node))
    assert reaches(lab, node, int_addr("gw1"), via=pair.PEER_LAN_DEV)
    assert reaches(lab, node, crosslink_addr("gw1"))
    assert reaches(lab, node, WITNESS_ADDR)


def test_witness_answers_health(lab):
    needs("etcd")
    etcd = pair.start_witness(lab)
    try:
        assert etcd.poll() is None
        health = lab.run("gw2", [sys.executable, "-c",
                                 "import urllib.request, sys; print(urllib.request.urlopen(sys.argv[1]).read().decode())",
                                 pair.witness_url(lab) + "/health"])
        assert '"health":"true"' in health.stdout
    finally:
        pair.stop_witness(lab)
        etcd.wait(timeout=5)


def test_keepalived_moves_the_vip(lab):
    needs("keepalived")
    procs = {node: pair.keepalived_start(lab, node, priority) for node, priority in (("gw1", 150), ("gw2", 100))}
    try:
        assert wait_for(lambda: pair.vip_holder(lab, "gw1"))
        assert not pair.vip_holder(lab, "gw2")
        pair.keepalived_stop(lab, "gw1")
        assert wait_for(lambda: pair.vip_holder(lab, "gw2"))
        assert procs["gw1"].wait(timeout=10) == 0
        assert not pair.vip_holder(lab, "gw1")  # a clean stop releases it
        assert reaches(lab, "trader", EXCHANGE_ADDR)  # now through gw2
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for node in pair.NODES:  # what a SIGKILLed keepalived leaves
            if pair.vip_holder(lab, node):
                lab.run(node, ["ip", "addr", "del", f"{pair.VIP}/24", "dev", pair.INGRESS_DEV])


def test_keepalived_refuses_intervals_vrrpv3_cannot_carry(lab):
    with pytest.raises(ValueError):
        pair.keepalived_start(lab, "gw1", 150, advert_s=0.005)
