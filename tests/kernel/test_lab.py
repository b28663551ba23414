"""The lab topology and its fault injector, against the running kernel."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import faults, topology
from lab.topology import EXCHANGE_ADDR, LINKS

pytestmark = pytest.mark.kernel

LINK_A = LINKS["A"]
LINK_B = LINKS["B"]

# Serves one datagram, replying with it plus the interface it arrived on.
ECHO_SERVER = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IP, 8, 1)  # IP_PKTINFO (not in Python 3.11's socket module)
sock.bind((sys.argv[1], int(sys.argv[2])))
sock.settimeout(5)
print("ready", flush=True)
data, ancillary, _, peer = sock.recvmsg(2048, socket.CMSG_SPACE(12))
ifindex = int.from_bytes(ancillary[0][2][:4], sys.byteorder)
sock.sendto(data + b" via " + socket.if_indextoname(ifindex).encode(), peer)
"""

UDP_CLIENT = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(3)
sock.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
print(sock.recv(2048).decode())
"""


def ping_ok(lab, role, target, attempts=3):
    for _ in range(attempts):
        if lab.run(role, ["ping", "-c1", "-W1", "-q", target], check=False).returncode == 0:
            return True
    return False


def gw_carrier(lab, ifname):
    with lab.iproute("gw") as ipr:
        (link,) = ipr.get_links(ifname=ifname)
    return link.get("IFLA_CARRIER")


def wait_for(predicate, timeout_s=3.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def udp_echo(lab, payload, port=9000):
    server = lab.spawn("exch", [sys.executable, "-c", ECHO_SERVER, EXCHANGE_ADDR, str(port)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready", server.stderr.read()
        client = lab.run("trader", [sys.executable, "-c", UDP_CLIENT, EXCHANGE_ADDR, str(port), payload],
                         timeout=10, check=False)
        assert server.wait(timeout=5) == 0, server.stderr.read()
    finally:
        server.kill()
        server.wait()
    assert client.returncode == 0, client.stderr
    return client.stdout.strip()


def test_trader_pings_exchange(lab):
    result = lab.run("trader", ["ping", "-c", "3", "-i", "0.2", "-W", "1", EXCHANGE_ADDR], timeout=10, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_udp_goes_via_a_and_reply_reaches_trader(lab):
    assert udp_echo(lab, "order-1") == f"order-1 via {LINK_A.handoff}"


def test_exchange_replies_on_the_handoff_the_request_used(lab):
    # Steer the request over B and blackhole A: a reply taking exch's main
    # route (via A) would be dropped, so it only arrives if it follows B.
    with lab.iproute("gw") as ipr:
        ipr.route("add", dst=f"{EXCHANGE_ADDR}/32", gateway=LINK_B.target)
    faults.inject(lab, "blackhole", "A")
    try:
        assert udp_echo(lab, "order-2") == f"order-2 via {LINK_B.handoff}"
    finally:
        faults.clear(lab, "blackhole", "A")
        with lab.iproute("gw") as ipr:
            ipr.route("del", dst=f"{EXCHANGE_ADDR}/32", gateway=LINK_B.target)


def test_blackhole_drops_link_but_keeps_carrier(lab):
    assert ping_ok(lab, "gw", LINK_A.target)
    before = faults.counters(lab, "A")
    faults.inject(lab, "blackhole", "A")
    try:
        assert faults.active(lab) == {"A": {"blackhole": True}, "B": {}}
        assert not ping_ok(lab, "gw", LINK_A.target, attempts=1)
        assert gw_carrier(lab, LINK_A.gw_dev) == 1
        assert faults.counters(lab, "A")["dropped"] > before["dropped"]
        assert ping_ok(lab, "gw", LINK_B.target)
    finally:
        faults.clear(lab, "blackhole", "A")
    assert faults.active(lab) == {"A": {}, "B": {}}
    assert ping_ok(lab, "gw", LINK_A.target)


def test_loss_drops_a_fraction(lab):
    faults.inject(lab, "loss", "B", probability=0.5)
    try:
        assert faults.active(lab)["B"] == {"loss": 0.5}
        before = faults.counters(lab, "B")
        lab.run("gw", ["ping", "-c", "40", "-i", "0.01", "-W", "1", "-q", LINK_B.target], timeout=10, check=False)
        after = faults.counters(lab, "B")
        passed, dropped = after["passed"] - before["passed"], after["dropped"] - before["dropped"]
        assert passed > 0 and dropped > 0
    finally:
        faults.clear(lab, "loss", "B")
    assert faults.active(lab)["B"] == {}


def test_carrier_down_drops_gw_carrier(lab):
    faults.inject(lab, "carrier-down", "A")
    try:
        assert wait_for(lambda: gw_carrier(lab, LINK_A.gw_dev) == 0)
        assert faults.active(lab)["A"] == {"carrier-down": True}
        assert gw_carrier(lab, LINK_B.gw_dev) == 1
    finally:
        faults.clear(lab, "carrier-down", "A")
    assert wait_for(lambda: gw_carrier(lab, LINK_A.gw_dev) == 1)
    assert faults.active(lab)["A"] == {}
    assert ping_ok(lab, "gw", LINK_A.target)
    assert udp_echo(lab, "order-3") == f"order-3 via {LINK_A.handoff}"


def test_spawned_processes_see_namespace_sysfs_and_host_bpffs(lab):
    listing = lab.run("gw", ["sh", "-c", f"cat /sys/class/net/{LINK_A.gw_dev}/carrier; ls {lab.pin_dir}"]).stdout
    carrier, *pins = listing.split()
    assert carrier == "1"
    assert "fault_carA_cfg" in pins


def test_config_and_state_written(lab):
    config = lab.config_path.read_text()
    assert 'ingress = "int"' in config and 'target = "198.18.11.2"' in config
    assert topology.write_config(lab, interval_us=500, multiplier=5) == lab.config_path
    assert "interval_us = 500" in lab.config_path.read_text()
    topology.write_config(lab)
    assert topology.load(lab.name) == lab
    state = topology.status(lab.name)
    assert all(state["namespaces"].values())
    assert state["interfaces"]["gw"][LINK_A.gw_dev]["carrier"] == 1


def test_two_labs_coexist(lab):
    other = topology.up()
    try:
        assert other.name != lab.name
        assert ping_ok(other, "trader", EXCHANGE_ADDR)
        faults.inject(other, "blackhole", "A")
        assert faults.active(lab)["A"] == {}
        assert ping_ok(lab, "gw", LINK_A.target)
        assert not ping_ok(other, "gw", LINK_A.target, attempts=1)
    finally:
        topology.down(other.name)
    assert ping_ok(lab, "trader", EXCHANGE_ADDR)


def test_up_refuses_existing_name(lab):
    with pytest.raises(topology.LabError, match=f"lab {lab.name} already exists"):
        topology.up(lab.name)


def test_down_twice_leaves_nothing():
    lab = topology.up()
    sleeper = lab.spawn("exch", ["sleep", "30"])
    assert wait_for(lambda: Path(f"/proc/{sleeper.pid}/ns/net").stat().st_ino
                    == os.stat(f"/run/netns/{lab.ns('exch')}").st_ino)
    topology.down(lab.name)
    topology.down(lab.name)
    assert sleeper.wait(timeout=1) is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert lab.name not in listed
    assert not lab.pin_dir.exists()
    assert not lab.dir.exists()
