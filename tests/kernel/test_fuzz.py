"""Differential fuzzing of every product program (lab/fuzz.py):
at least 100,000 random and mutated frames per program through
BPF_PROG_TEST_RUN, each verdict, output and counter against the program's
pure-Python reference (lab/fuzzref.py), then every map counter
against the reference's totals.

TP_FUZZ_SEED and TP_FUZZ_FRAMES override the seed and the frames per
program. A failure prints, per mismatch, the seed, the frame's index, its hex,
its mutations and expected vs got; `python -m lab.fuzz --program P
--seed S --stop-at INDEX` replays the run up to it.
"""
import json
import os

import pytest

from lab import fuzz, fuzzref

SEED = int(os.environ.get("TP_FUZZ_SEED", "20261201"))
FRAMES = int(os.environ.get("TP_FUZZ_FRAMES", "100000"))


@pytest.fixture(scope="module")
def gateway_fixture():
    return fuzz.GatewayFixture(SEED)


def assert_clean(res: fuzz.Result):
    d = res.as_dict()
    print(f"\n{res.program}: {res.frames} frames in {d['seconds']} s ({d['frames_per_s']:.0f} frames/s), "
          f"seed {SEED}, {d['ambiguous']} ambiguous")
    for rule, n in d["outcomes"].items():
        print(f"  {n:7d}  {rule}")
    detail = "\n".join(json.dumps(s) for s in d["samples"]) + "\n" + "\n".join(d["counter_mismatches"])
    assert d["mismatches"] == 0, f"{d['mismatches']} mismatch(es), seed {SEED}:\n{detail}"
    assert res.frames >= FRAMES


def outcome_count(res: fuzz.Result, fragment: str) -> int:
    return sum(n for rule, n in res.outcomes.items() if fragment in rule)


@pytest.mark.parametrize("program", fuzz.GATEWAY_PROGRAMS)
def test_gateway_program_matches_its_reference(gateway_fixture, program):
    harness = fuzz.gateway_harnesses(gateway_fixture)[program]
    res = fuzz.run(harness, gateway_fixture.runners, FRAMES, SEED)
    assert_clean(res)
    # The deep paths were reached, not only the cheap exits.
    steer = ["-> link 0", "-> link 1", "-> link 3", "without next hop", "no rule", "TTL <= 1",
             "ports not inside", "IP options", "fragment", "ip_rcv() rejects", "not an IPv4"]
    deep = {"tp_steer": steer, "tp_steer_xdp": steer,
            "tp_hb_egress": ["signed", "not from its link", "not a probe"],
            "tp_hb_ingress": ["accepted on link 0", "accepted on link 1", "accepted on link 2", "MAC mismatch",
                              "names no key", "window or seen", "dead interval", "future", "tx_ns == 0",
                              "GTSM", "ICMP checksum", "target -> local", "ifindex", "no such link",
                              "not a well-formed probe", "not probe-shaped"]}[program]
    missing = [d for d in deep if outcome_count(res, d) < FRAMES // 2000]
    assert not missing, f"rules barely exercised: {missing}"


@pytest.fixture(scope="module")
def arbiter_fixture():
    return fuzz.ArbFixture(SEED)


def test_arbitration_lines_match_their_reference(arbiter_fixture):
    """Both lines together (they share the feeds' state): at least FRAMES
    frames each; verdict, bytes, events, line counters and feed state checked
    per frame, claim words and every counter at the end."""
    results = fuzz.run_programs(fuzz.ArbHarness(arbiter_fixture), arbiter_fixture.runners,
                                {p: FRAMES for p in fuzz.ARB_PROGRAMS}, SEED)
    for res in results.values():
        assert_clean(res)
    res = results["tp_arb_line_a"]
    deep = ["won", "won (overlap)", "lost:", "stale:", "another session", "far ahead,", "far behind,",
            "heartbeat forwarded", "heartbeat copy", "heartbeat behind", "end of session forwarded", "end of session already",
            "malformed", "not a configured feed", "fragment", "TTL <= 1", "without receiver MAC",
            "ip_rcv() rejects", "IP options", "UDP header past", "not IPv4", "not UDP", "event session", "event session-candidate", "event resync", "event far-ahead",
            "event far-behind", "event gap", "event fill"]
    missing = [d for d in deep if outcome_count(res, d) < FRAMES // 2000]
    assert not missing, f"rules barely exercised: {missing}"


def test_the_harness_catches_a_wrong_reference(gateway_fixture, monkeypatch):
    """Sensitivity: with an off-by-one planted in the reference (TTL 1
    forwarded), the same machinery must report mismatches."""
    orig = fuzzref.SteerRef.expect

    def wrong(self, f, before, after):
        if len(f) >= 34 and f[22] == 1:
            f = f[:22] + b"\x02" + f[23:]
        return orig(self, f, before, after)
    monkeypatch.setattr(fuzzref.SteerRef, "expect", wrong)
    harness = fuzz.gateway_harnesses(gateway_fixture)["tp_steer"]
    res = fuzz.run(harness, gateway_fixture.runners, 5000, SEED)
    assert res.mismatches > 0
    assert res.samples[0]["seed"] == SEED and bytes.fromhex(res.samples[0]["frame"])
