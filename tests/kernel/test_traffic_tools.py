"""The lab traffic tools end to end across a private veth pair.

Independent of the lab: two throwaway namespaces (tptXXXX-a / tptXXXX-b)
joined by one veth pair, deleted again whatever happens.
"""
import json
import secrets
import subprocess
import time

import numpy as np
import pytest

from lab.processes import Tool as LabTool
from lab.processes import traffic_argv
from lab.traffic import analyze_stream

ADDR_A, ADDR_B = "198.18.200.1", "198.18.200.2"


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@pytest.fixture
def veth_pair():
    """Namespaces a and b joined by veth va <-> vb; returns (ns_a, ns_b, vb_ifindex)."""
    prefix = "tpt" + secrets.token_hex(2)
    ns_a, ns_b = prefix + "-a", prefix + "-b"
    created = []
    try:
        for ns in (ns_a, ns_b):
            ip("netns", "add", ns)
            created.append(ns)
        ip("-n", ns_a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", ns_b)
        for ns, dev, addr in ((ns_a, "va", ADDR_A), (ns_b, "vb", ADDR_B)):
            ip("-n", ns, "addr", "add", addr + "/30", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        vb_ifindex = json.loads(ip("-n", ns_b, "-j", "link", "show", "vb"))[0]["ifindex"]
        yield ns_a, ns_b, vb_ifindex
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def Tool(ns: str, *args: str) -> LabTool:
    """A traffic tool started in one of this test's private namespaces."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, *traffic_argv(*args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return LabTool(proc, args[0])


@pytest.mark.kernel
def test_udp_stream_across_veth(veth_pair, tmp_path):
    ns_a, ns_b, vb_ifindex = veth_pair
    out = tmp_path / "arrivals.npy"
    with Tool(ns_b, "udp-recv", "--bind", ADDR_B, "--port", "40100", "--timeout", "20",
              "--idle", "1", "--out", str(out)) as receiver:
        receiver.wait_ready()
        with Tool(ns_a, "udp-send", "--dst", ADDR_B, "--port", "40100",
                  "--rate", "10000", "--count", "2000") as sender:
            sender.wait_ready()
            sent = sender.result(timeout_s=20)
        summary = receiver.result(timeout_s=25)

    assert (sent["sent"], sent["errors"], sent["issued"]) == (2000, 0, 2000)
    # Paced rather than one burst: 2000 at 10k pps is a 0.2 s schedule (a busy
    # machine may stretch it; the pacer then catches up, so allow slack).
    assert sent["last_ns"] - sent["first_ns"] >= 100_000_000
    assert summary["received"] == 2000
    assert summary["by_ifindex"] == {str(vb_ifindex): 2000}
    assert summary["ended"] == "idle"
    assert summary["socket_drops"] == 0

    arrivals = np.load(out)
    assert len(arrivals) == 2000
    # Kernel receive stamps converted to monotonic time land in the send window
    # (loosely: on a busy machine the sender reads its clock late).
    assert sent["first_ns"] - 500_000_000 <= arrivals["t_ns"].min()
    assert arrivals["t_ns"].max() <= sent["last_ns"] + 500_000_000
    analysis = analyze_stream(arrivals, sent["issued"], fault_ns=None, standby_ifindex=vb_ifindex)
    assert analysis["received"] == 2000
    assert (analysis["lost"], analysis["duplicated"], analysis["reordered"]) == (0, 0, 0)
    assert analysis["first_standby_ns"] == int(arrivals["t_ns"].min())


@pytest.mark.kernel
def test_tcp_order_session_across_veth(veth_pair, tmp_path):
    ns_a, ns_b, _ = veth_pair
    out = tmp_path / "session.json"
    with Tool(ns_b, "tcp-server", "--bind", ADDR_B, "--port", "40200", "--timeout", "20",
              "--idle", "0.5", "--out", str(out)) as server:
        server.wait_ready()
        started = time.monotonic()
        with Tool(ns_a, "tcp-client", "--dst", ADDR_B, "--port", "40200",
                  "--rate", "1000", "--count", "500", "--timeout", "10") as client:
            client.wait_ready()
            sent = client.result(timeout_s=15)
        session = server.result(timeout_s=25)

    assert sent == {"sent": 500, "error": None, "connected": True}
    assert time.monotonic() - started >= 0.499  # paced, not sent in one burst
    assert session["connections"] == 1
    assert session["records"] == 500
    assert session["in_order"] is True
    assert session["first_bad_seq"] is None
    assert session["ended"] == "eof"
    assert 0 < session["max_gap_ms"] < 500
    assert json.loads(out.read_text()) == session


@pytest.mark.kernel
def test_tcp_client_reports_refused_session(veth_pair):
    ns_a, _, _ = veth_pair
    with Tool(ns_a, "tcp-client", "--dst", ADDR_B, "--port", "40300",
              "--rate", "1000", "--count", "10", "--timeout", "5") as client:
        result = client.result(timeout_s=10)
    assert result["connected"] is False
    assert result["sent"] == 0
    assert "Connection refused" in result["error"]
    assert client.proc.returncode == 1
