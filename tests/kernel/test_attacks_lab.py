"""Attacks from carrier A's wire, end to end in the lab (lab.attacks).

spoofed-heartbeats: link A black-holed while forged and replayed heartbeat
replies keep arriving on it; the link must still fail over, within a
blackhole's loss, and no spoofed reply may be accepted. forged-session: one
forged MoldUDP64 packet of another session on line A mid-feed; the genuine
feed must still be delivered whole and once. Each scenario runs once per
module; the tests read its result, so a failure says which part of the
contract broke. The first tests of each check the attack itself happened.
"""
import json
import random
import signal
import socket
import time

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether

from appliance import layout
from appliance.edge.dataplane import PROBE_IDENT
from lab import attack, attacks, feedproto, processes, scenario

RATE, INTERVAL_US, MULTIPLIER = 10_000, 1000, 3
# The attack runs at 5,000/s from before the fault until after it is cleared,
# at least 2 s of fault: a floor well below what it sends.
MIN_SPOOFED = 5_000
GW, TARGET = socket.inet_aton("198.18.10.1"), socket.inet_aton("198.18.10.2")
GW_MAC, CARRIER_MAC = bytes.fromhex("020000000a01"), bytes.fromhex("020000000a02")


@pytest.fixture(scope="module")
def spoofed(lab):
    return scenario.run("spoofed-heartbeats", lab, rate_pps=RATE, interval_us=INTERVAL_US, multiplier=MULTIPLIER)


@pytest.fixture(scope="module")
def forged(lab):
    return scenario.run("forged-session", lab)


# ---------------------------------------------------------------- the attacker's frames

@pytest.mark.parametrize("variant", attack.VARIANTS)
def test_forged_reply_is_a_perfect_lookalike_but_for_the_authenticator(variant):
    ttl, seq_mode, mac_mode = variant
    rng = random.Random(1)
    probe = attack.probe_payload(0, 123456, 987654321, 1, mac_mode, rng)
    frame = Ether(attack.forged_reply(GW_MAC, CARRIER_MAC, TARGET, GW, PROBE_IDENT, probe, 123456, ttl, 7))
    recomputed = Ether(bytes(frame))
    del recomputed[IP].chksum, recomputed[ICMP].chksum
    recomputed = Ether(bytes(recomputed))
    assert (frame[IP].chksum, frame[ICMP].chksum) == (recomputed[IP].chksum, recomputed[ICMP].chksum)
    assert (frame.dst, frame[IP].src, frame[IP].dst, frame[IP].ttl) == \
        ("02:00:00:00:0a:01", "198.18.10.2", "198.18.10.1", ttl)
    assert (frame[ICMP].type, frame[ICMP].id, frame[ICMP].seq) == (0, PROBE_IDENT, 123456 & 0xFFFF)
    p = layout.Probe.from_buffer_copy(bytes(frame[ICMP].payload))
    assert (p.magic, p.version, p.link, p.seq, p.tx_ns) == \
        (layout.C["TP_PROBE_MAGIC"], layout.C["TP_PROBE_VERSION"], 0, 123456, 987654321)
    assert len(frame[ICMP].payload) == len(bytes(layout.Probe()))


def test_forged_session_frame_is_a_62_byte_moldudp64_heartbeat_with_the_lines_headers():
    template = feedproto.line_frame(feedproto.mold_packet("GENUINE01", 5, [b"x" * 16]), "198.18.1.1", 26400,
                                    "198.18.30.1", ttl=63)
    raw = attack.forged_feed_frame(template, feedproto.mold_heartbeat("FORGED0001", 12001))
    frame = Ether(raw)
    recomputed = Ether(raw)
    del recomputed[IP].chksum, recomputed[UDP].chksum
    recomputed = Ether(bytes(recomputed))
    assert len(raw) == 62
    assert (frame[IP].chksum, frame[UDP].chksum) == (recomputed[IP].chksum, recomputed[UDP].chksum)
    assert (frame[IP].src, frame[IP].dst, frame[IP].ttl, frame[UDP].dport) == ("198.18.30.1", "198.18.1.1", 63, 26400)
    assert attack.parse_feed_frame(raw, socket.inet_aton("198.18.30.1"), 26400) == \
        feedproto.MoldPacket("FORGED0001", 12001, 0, ())


# ---------------------------------------------------------------- spoofed-heartbeats

def test_spoofed_replies_reach_the_gateway_throughout_the_fault(spoofed):
    r = spoofed
    assert r["spoofed_sent"] >= MIN_SPOOFED, json.dumps(r)
    assert min(r["spoofed_by_kind"].values()) >= MIN_SPOOFED // 4, "both forged and replayed replies"
    assert r["attacker"]["captured"] > 0 and r["attacker"]["send_errors"] == 0
    # Every spoofed reply in the window met the heartbeat ingress program: accepted or rejected.
    seen = r["spoofed_accepted"] + sum(v for k, v in r["gw_counters_during_fault"].items()
                                       if k.startswith("drops.reply_") and k != "drops.reply_ok")
    window_s = (r["spoofed_window_ms"][1] - r["spoofed_window_ms"][0]) / 1000
    assert window_s >= 1.0 and seen >= 0.5 * attacks.SPOOF_RATE * window_s, json.dumps(r)


def test_blackholed_link_still_fails_over_within_a_blackholes_loss(spoofed):
    r = spoofed
    assert r["failed_over"], "spoofed replies kept the black-holed link alive: " + json.dumps(r)
    assert (r["from_link"], r["to_link"]) == ("A", "B")
    assert r["duplicated"] == 0 and r["reordered"] == 0, json.dumps(r)
    assert r["received"] + r["lost"] == r["sent"]
    assert r["lost"] <= attacks.max_lost(RATE, INTERVAL_US, MULTIPLIER), json.dumps(r)
    assert len(r["lost_ranges"]) <= 1, "loss must be one contiguous burst at the fault"


def test_no_spoofed_reply_is_accepted(spoofed):
    assert spoofed["spoofed_accepted"] == 0, json.dumps(spoofed["gw_counters_during_fault"])


# ---------------------------------------------------------------- forged-session

def test_forged_packet_is_injected_mid_feed(forged):
    r = forged
    assert (r["forged_sent"], r["forged_frame_bytes"]) == (1, 62), json.dumps(r)
    assert attacks.FORGE_AFTER_SEQ <= r["forged_seq"] < r["sent"]


def test_forged_session_costs_the_genuine_feed_nothing(forged):
    r = forged
    assert (r["delivered"], r["delivered_twice"]) == (r["sent"], 0), json.dumps(r)
    assert r["out_of_order"] == 0 and r["corrupt"] == 0
    assert r["gaps_reported"] == r["gaps_expected"] == []


# ---------------------------------------------------------------- no failback onto a dead link

def test_spoofed_replies_never_fail_traffic_back_onto_a_dead_link(lab):
    """Orders already on B after A died: forged and replayed replies on A for
    five hold-downs must not make the daemon fail back onto A (it used to,
    after one hold-down, and lost every order after)."""
    from lab import faults, topology
    from tests.kernel.test_failover import failovers, stream

    workdir = lab.dir / "spoofed-no-failback"
    workdir.mkdir(parents=True, exist_ok=True)
    config = topology.write_config(lab, interval_us=INTERVAL_US, multiplier=MULTIPLIER, holddown_ms=300)
    daemon = processes.DaemonProcess(lab, config, workdir / "daemon.jsonl")
    spoofer = None
    try:
        daemon.wait_for("ready", 30)
        spoofer = attacks.HeartbeatSpoofer(lab, config)
        time.sleep(attacks.CAPTURE_S)                 # genuine replies to replay
        faults.inject(lab, "blackhole", "A")
        try:
            stream(lab, workdir, 9000, 0.3)            # traffic makes the data path switch
            spoofer.go()
            result, arrivals = stream(lab, workdir, 9000, 1.5)
            spoofer.tool.proc.send_signal(signal.SIGTERM)
            sent = spoofer.tool.result(timeout_s=15)
        finally:
            # The daemon goes before A heals: failing back onto a healed A is right,
            # and a slow spoofer exit used to leave it the hold-down to do so.
            daemon.stop()
            faults.clear(lab, "blackhole", "A")
    finally:
        if spoofer:
            spoofer.stop()
        if daemon.proc.poll() is None:
            daemon.stop()
    assert sent["sent"] >= 5_000
    moves = [(e["class"], e["from"], e["to"], e["cause"]) for e in failovers(daemon)]
    assert [m for m in moves if m[0] == "orders"] == [("orders", "A", "B", "heartbeat")]
    # A class with no traffic (no reflex) may leave dead A on the daemon's gray verdict; none may go onto it.
    assert not [m for m in moves if m[2] == "A"], moves
    assert result["lost"] == 0, result
    assert set(arrivals["ifindex"]) == {lab.ifindex("exch", "hB")}
