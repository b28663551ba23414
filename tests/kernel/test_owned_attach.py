"""Detach removes only what this loader attached: a tc filter or XDP program
another loader has since put in its place survives our detach."""
import json
import secrets
import subprocess

import pytest
from pyroute2 import IPRoute

from appliance.edge import bpfsys, netlink
from appliance.edge.dataplane import FILTER_PRIO

pytestmark = pytest.mark.kernel

# tc and XDP programs that change nothing; two compilations give two
# distinct kernel programs of identical code.
PASS_SRC = b"""
int tc_pass(struct __sk_buff *skb) { return 0; }
int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }
"""


@pytest.fixture(scope="module")
def two_loads():
    from bcc import BPF
    loads = [BPF(text=PASS_SRC) for _ in range(2)]
    try:
        yield [(b.load_func(b"tc_pass", BPF.SCHED_CLS), b.load_func(b"xdp_pass", BPF.XDP)) for b in loads]
    finally:
        for b in loads:
            b.cleanup()


@pytest.fixture
def veth():
    """(namespace, IPRoute in it) with an up veth "v0" (native XDP capable);
    the namespace is deleted whatever happens."""
    ns = f"tpPF{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        for args in (["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                     ["link", "set", "v0", "up"], ["link", "set", "v1", "up"]):
            subprocess.run(["ip", "-n", ns, *args], check=True, timeout=10)
        with IPRoute(netns=ns, flags=0) as ipr:
            yield ns, ipr
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=10)


def tc_ids(ns: str) -> list[int]:
    """Program ids of v0's ingress filters, as tc(8) reports them."""
    out = subprocess.run(["tc", "-n", ns, "filter", "show", "dev", "v0", "ingress"], check=True,
                         capture_output=True, text=True, timeout=10).stdout.split()
    return [int(out[i + 1]) for i, word in enumerate(out) if word == "id"]


def xdp_id(ns: str) -> int | None:
    (link,) = json.loads(subprocess.run(["ip", "-n", ns, "-j", "link", "show", "v0"], check=True,
                                        capture_output=True, text=True, timeout=10).stdout)
    return link.get("xdp", {}).get("prog", {}).get("id")


def test_program_id_is_what_the_kernel_reports(two_loads, veth):
    ns, ipr = veth
    (tc1, xdp1), (tc2, _) = two_loads
    ids = {bpfsys.prog_id(p.fd) for p in (tc1, xdp1, tc2)}
    assert len(ids) == 3 and 0 not in ids
    a = netlink.attach_bpf(ipr, "v0", netlink.TC_INGRESS, tc1, FILTER_PRIO)
    assert a.prog_id == bpfsys.prog_id(tc1.fd) and int(a) == ipr.link_lookup(ifname="v0")[0]
    assert tc_ids(ns) == [a.prog_id]
    assert netlink.tc_filter_prog_id(ipr, a, netlink.TC_INGRESS, FILTER_PRIO) == a.prog_id
    x = netlink.attach_xdp(ipr, "v0", xdp1)
    assert xdp_id(ns) == x.prog_id == bpfsys.prog_id(xdp1.fd)


def test_tc_detach_leaves_a_filter_that_replaced_ours(two_loads, veth):
    ns, ipr = veth
    (first, _), (second, _) = two_loads
    a = netlink.attach_bpf(ipr, "v0", netlink.TC_INGRESS, first, FILTER_PRIO)
    b = netlink.attach_bpf(ipr, "v0", netlink.TC_INGRESS, second, FILTER_PRIO)   # a second loader takes over
    assert tc_ids(ns) == [b.prog_id] != [a.prog_id]
    assert netlink.detach_bpf(ipr, a, netlink.TC_INGRESS, FILTER_PRIO) is False
    assert tc_ids(ns) == [b.prog_id], "the first loader's detach removed the second's filter"
    assert netlink.detach_bpf(ipr, int(b), netlink.TC_INGRESS, FILTER_PRIO) is False, "no id: not ours"
    assert tc_ids(ns) == [b.prog_id]
    assert netlink.detach_bpf(ipr, b, netlink.TC_INGRESS, FILTER_PRIO) is True
    assert tc_ids(ns) == []
    assert netlink.detach_bpf(ipr, b, netlink.TC_INGRESS, FILTER_PRIO) is False   # gone already is fine


def test_tc_detach_touches_only_our_priority_and_parent(two_loads, veth):
    ns, ipr = veth
    (first, _), (second, _) = two_loads
    other = netlink.attach_bpf(ipr, "v0", netlink.TC_INGRESS, second, 1)          # another tool, prio 1
    ours = netlink.attach_bpf(ipr, "v0", netlink.TC_INGRESS, first, FILTER_PRIO)
    assert netlink.detach_bpf(ipr, ours, netlink.TC_EGRESS, FILTER_PRIO) is False
    assert sorted(tc_ids(ns)) == sorted([other.prog_id, ours.prog_id])
    assert netlink.detach_bpf(ipr, ours, netlink.TC_INGRESS, FILTER_PRIO) is True
    assert tc_ids(ns) == [other.prog_id]


def test_xdp_detach_leaves_a_program_that_replaced_ours(two_loads, veth):
    ns, ipr = veth
    (_, first), (_, second) = two_loads
    a = netlink.attach_xdp(ipr, "v0", first)
    b = netlink.attach_xdp(ipr, "v0", second)
    assert xdp_id(ns) == b.prog_id != a.prog_id
    assert netlink.detach_xdp(ipr, a) is False
    assert xdp_id(ns) == b.prog_id, "the first loader's detach removed the second's XDP program"
    assert netlink.detach_xdp(ipr, b) is True
    assert xdp_id(ns) is None
    assert netlink.detach_xdp(ipr, b) is False


def test_gateway_and_arbiter_keep_what_attach_returns():
    """Gateway and Arbiter store attach's return value and hand it back to
    detach: the id must survive being used as a plain ifindex."""
    a = netlink.Attached(7, 1234)
    kept = [(a, netlink.TC_INGRESS)]
    idx, _ = list(reversed(kept))[0]
    assert idx == 7 and int(idx) == 7 and idx.prog_id == 1234 and {7: "x"}[idx] == "x"
