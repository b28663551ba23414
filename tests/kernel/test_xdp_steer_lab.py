"""Order steering at XDP in the lab: orders leave gw without an skb on links
whose device takes XDP frames, and take the TC path, losing nothing, the
moment a link stops taking them.

A veth takes redirected XDP frames only while its peer runs NAPI (GRO or
XDP there); a NIC with ndo_xdp_xmit always does. The lab's carriers run
neither by default, so this test turns GRO on at their gw-facing ends."""
import time

import numpy as np

from lab import processes, topology
from lab.colo import LINKS
from lab.traffic import analyze_stream

ORDERS_PORT, RATE, SECONDS = 9000, 2000, 0.5


def _orders(lab, workdir, name):
    """Streams orders; returns (lost, duplicated, issued)."""
    work = workdir / name
    work.mkdir()
    receiver, sender = processes.udp_stream(lab, work, RATE, SECONDS, ORDERS_PORT)
    try:
        issued = sender.result(timeout_s=SECONDS + 15)["issued"]
        receiver.result(timeout_s=20)
    finally:
        sender.stop()
        receiver.stop()
    result = analyze_stream(np.load(work / f"arrivals-{ORDERS_PORT}.npy"), issued)
    return result["lost"], result["duplicated"], issued


def _xdp_forwarded_after(daemon, mono_ns: int) -> int:
    """The data path's xdp_forwarded count in the first health report after mono_ns."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        reports = [e for e in daemon.events() if e.get("event") == "health" and e.get("mono_ns", 0) > mono_ns]
        if reports:
            return reports[0]["drops"]["xdp_forwarded"]
        time.sleep(0.05)
    raise AssertionError(f"no health report within 10 s:\n{daemon.log_path.read_text()[-2000:]}")


def test_orders_leave_at_xdp_and_fall_back_to_tc_when_a_link_stops_taking_xdp_frames(lab, tmp_path):
    ends = [(link.carrier, link.carrier_dev) for link in LINKS.values()]
    for role, dev in ends:
        topology.set_features(lab, role, dev, {"rx-gro": True})
    daemon = processes.DaemonProcess(lab, topology.write_config(lab, steer_xdp=True), tmp_path / "daemon.jsonl",
                                     stats_interval_s=0.3)
    try:
        daemon.wait_for("ready", 60)
        attached = daemon.wait_for("steer-attached", 5)
        assert attached["xdp"] is True and attached["xdp_targets"] == ["A", "B"], attached

        before = _xdp_forwarded_after(daemon, time.monotonic_ns())
        lost, duplicated, issued = _orders(lab, tmp_path, "xdp")
        assert (lost, duplicated) == (0, 0)
        at_xdp = _xdp_forwarded_after(daemon, time.monotonic_ns()) - before
        assert at_xdp >= issued, f"{at_xdp} of {issued} orders forwarded at XDP"

        # Link A's far end stops taking XDP frames: the daemon hears it from
        # the kernel, and orders go on through TC.
        topology.set_features(lab, "carA", "gwA", {"rx-gro": False})
        deadline = time.monotonic() + 5
        while not [e for e in daemon.events() if e.get("event") == "xdp-target"]:
            assert time.monotonic() < deadline, "the daemon never heard A stop taking XDP frames"
            time.sleep(0.02)
        change, = [e for e in daemon.events() if e.get("event") == "xdp-target"]
        assert (change["link"], change["redirect_target"]) == ("A", False)
        before = _xdp_forwarded_after(daemon, time.monotonic_ns())
        lost, duplicated, issued = _orders(lab, tmp_path, "tc")
        assert (lost, duplicated) == (0, 0)
        assert _xdp_forwarded_after(daemon, time.monotonic_ns()) == before
    finally:
        daemon.stop()
        for role, dev in ends:
            topology.set_features(lab, role, dev, {"rx-gro": False})
