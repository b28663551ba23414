"""The capacity bench's moving parts in a lab: the live-frames generator
(lab/blast.py + lab/ebpf/blast.c) sends what it is asked, paced and in
order, and one step of each mode (bench/capacity.py) counts every frame,
with the daemon forwarding and arbitrating."""
import json
import subprocess
import sys

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from bench import capacity
from lab import topology
from lab.colo import EXCHANGE_ADDR, INGRESS_DEV, TRADER_ADDR, TRADER_DEV
from lab.processes import DaemonProcess, Tool

PORTS = (9310, 9311)       # no rule: gw's kernel routing takes both to exch
FIRST_SEQ = 7_000_000
MESSAGES = 400
RATE_PPS = 8_000           # frames/s over both outputs: a 100 ms schedule


def blast(spec: dict) -> dict:
    run = subprocess.run([sys.executable, "-m", "lab.blast", json.dumps(spec)], check=False, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout)


def test_generator_sends_each_message_once_per_output_in_order_and_paced(lab, tmp_path):
    capacity.pin_gateway_napi(lab, (INGRESS_DEV,))   # gw's int takes XDP frames only with a NAPI
    trader, gw_int = capacity.mac(lab, "trader", TRADER_DEV), capacity.mac(lab, "gw", INGRESS_DEV)
    outputs = [{"ns": lab.ns("trader"), "dev": TRADER_DEV,
                "frame": bytes(Ether(src=trader, dst=gw_int) / IP(src=TRADER_ADDR, dst=EXCHANGE_ADDR)
                               / UDP(sport=40000, dport=port, chksum=0) / bytes(32)).hex()} for port in PORTS]
    receivers = [Tool.in_lab(lab, "exch", "udp-recv", "--bind", EXCHANGE_ADDR, "--port", str(port),
                             "--timeout", "30", "--idle", "1", "--out", str(tmp_path / f"{port}.npy"))
                 for port in PORTS]
    try:
        for r in receivers:
            r.wait_ready()
        result = blast({"outputs": outputs, "seq_offset": 42, "rate_pps": RATE_PPS, "count": MESSAGES,
                        "first_seq": FIRST_SEQ, "cpu": 0})
        for r in receivers:
            r.result(timeout_s=40)
    finally:
        for r in receivers:
            r.stop()
    assert (result["frames"], result["sent"]) == (2 * MESSAGES, 2 * MESSAGES)
    # Paced, not one burst: the last frame leaves no earlier than its turn.
    assert result["seconds"] >= 0.9 * (2 * MESSAGES - 1) / RATE_PPS
    for port in PORTS:
        seqs = np.load(tmp_path / f"{port}.npy")["seq"].tolist()
        assert seqs == list(range(FIRST_SEQ, FIRST_SEQ + MESSAGES)), f"port {port}: each message once, in order"


@pytest.mark.parametrize("spec, error", [
    ({"count": 0}, "count"),
    ({"rate_pps": 0}, "rate_pps"),
    ({"seq_offset": 10}, "seq_offset"),
    ({"seq_offset": 60}, "seq_offset"),
    ({"outputs": [{"ns": "x", "dev": "y", "frame": "00" * 60}] * 3}, "outputs"),
    ({"outputs": [{"ns": "x", "dev": "y", "frame": "00" * 60}, {"ns": "x", "dev": "y", "frame": "00" * 59 + "01"}]},
     "differ only"),
])
def test_generator_refuses_a_bad_spec_before_sending(spec, error):
    base = {"outputs": [{"ns": "tp-none", "dev": "none", "frame": "00" * 60}], "seq_offset": -1,
            "rate_pps": 1000, "count": 10, "cpu": 0}
    run = subprocess.run([sys.executable, "-m", "lab.blast", json.dumps(base | spec)], check=False, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1
    assert error in json.loads(run.stdout)["error"]


@pytest.fixture(scope="module")
def capacity_lab():
    lab = topology.up()
    daemon = None
    try:
        daemon = DaemonProcess(lab, topology.write_config(lab, feeds=True), lab.dir / "capacity-daemon.jsonl",
                               stats_interval_s=3600)
        daemon.wait_for("ready", 60)
        routes = capacity.paths(lab)
        capacity.attach_sinks(lab, routes)
        capacity.pin_gateway_napi(lab)
        yield lab, routes
    finally:
        if daemon:
            daemon.stop()
        topology.down(lab.name)


@pytest.mark.parametrize("mode", capacity.MODES)
def test_a_step_well_below_capacity_counts_every_frame_once(capacity_lab, mode):
    lab, routes = capacity_lab
    s = capacity.step(lab, mode, routes[mode], 20_000, 0.2, first_seq=1 + 10_000 * capacity.MODES.index(mode))
    assert s["sent"] == s["frames"] == 4000
    assert s["counted"] == s["expected"] == (2000 if mode == "arbitration" else 4000), s
    assert (s["lost"], s["extra"]) == (0, 0)
