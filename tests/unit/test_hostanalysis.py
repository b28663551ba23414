"""analyze_host on hand-built exchange captures (no root): takeover, clean
handovers, dual-active episodes, duplicates and losses."""
import json

import numpy as np
import pytest

from lab.hostanalysis import analyze_host
from lab.traffic import ARRIVAL_DTYPE

# exch's handoffs: two per gateway (carriers A and B).
GATEWAY_OF = {11: "gw1", 12: "gw1", 21: "gw2", 22: "gw2"}
PERIOD_NS = 100_000           # 10,000 orders/s
FAULT_NS = 1_000_000_000      # order 10,000 is sent at the fault
LATENCY_NS = 30_000           # send -> arrival at exch


def capture(ifindex_of_seq, seqs=None, sent=20_000):
    """Arrivals of orders `seqs` (default all), in send order, each through
    ifindex_of_seq(seq)."""
    seqs = np.arange(sent) if seqs is None else np.asarray(seqs)
    out = np.empty(len(seqs), dtype=ARRIVAL_DTYPE)
    out["seq"] = seqs
    out["sent_ns"] = seqs * PERIOD_NS
    out["t_ns"] = out["sent_ns"] + LATENCY_NS
    out["ifindex"] = [ifindex_of_seq(int(s)) for s in seqs]
    return out


def analyze(arrivals, sent=20_000, active="gw1"):
    return analyze_host(arrivals, sent, FAULT_NS, GATEWAY_OF, active)


def test_a_clean_takeover_is_one_switch_and_no_dual_activity():
    lost = range(10_000, 10_030)          # the dead interval
    seqs = [s for s in range(20_000) if s not in lost]
    r = analyze(capture(lambda s: 11 if s < 10_000 else 21, seqs))
    assert r["took_over"] and r["takeover_us"] == (30 * PERIOD_NS + LATENCY_NS) / 1000
    assert r["takeover_order_delay_us"] == LATENCY_NS / 1000
    assert (r["switches"], r["dual_active_us"], r["dual_active_episodes"]) == (1, 0, 0)
    assert (r["lost"], r["duplicated"], r["reordered"]) == (30, 0, 0)
    assert r["lost_ranges"] == [[10_000, 10_029]]
    assert r["via"] == {"gw1": 10_000, "gw2": 9_970}
    json.dumps(r)  # the scenario runner prints it as JSON


def test_a_stalled_sender_shows_in_the_takeover_order_delay():
    arrivals = capture(lambda s: 11 if s < 10_000 else 21)
    arrivals["t_ns"][arrivals["seq"] >= 10_000] += 500_000_000   # sent half a second late, in a burst
    r = analyze(arrivals)
    assert r["takeover_us"] == (500_000_000 + LATENCY_NS) / 1000
    assert r["takeover_order_delay_us"] == (500_000_000 + LATENCY_NS) / 1000


def test_no_takeover_when_the_standby_carries_nothing_after_the_fault():
    r = analyze(capture(lambda s: 12 if s % 2 else 11))   # both of gw1's carriers: one gateway
    assert not r["took_over"] and r["takeover_us"] is None and r["takeover_order_delay_us"] is None
    assert (r["switches"], r["dual_active_us"]) == (0, 0)
    assert r["via"] == {"gw1": 20_000, "gw2": 0}


def test_orders_sent_before_the_fault_are_no_takeover():
    # gw2 carried orders only before the fault: a move then is not this fault's takeover.
    r = analyze(capture(lambda s: 21 if 5_000 <= s < 6_000 else 11))
    assert not r["took_over"]
    assert r["switches"] == 2 and r["dual_active_us"] == 0


def test_alternating_gateways_for_5_ms_count_as_dual_active():
    # Orders 10,000..10,049 (5 ms of sending) alternate between the gateways, then gw2 alone.
    r = analyze(capture(lambda s: 11 if s < 10_000 else (21 if s >= 10_050 or s % 2 == 0 else 11)))
    assert r["dual_active_episodes"] == 1
    assert r["dual_active_us"] == 5000   # from the change at 10,000 to the one at 10,050
    assert r["switches"] == 51
    assert r["took_over"] and r["takeover_us"] == LATENCY_NS / 1000


def test_episodes_are_summed_and_far_apart_changes_are_separate():
    # Two bursts of alternation 1 s apart, 2 ms each.
    def ifindex(s):
        for start in (5_000, 15_000):
            if start <= s < start + 20:
                return 21 if s % 2 else 11
        return 11
    r = analyze(capture(ifindex))
    assert r["dual_active_episodes"] == 2
    assert r["dual_active_us"] == pytest.approx(2 * 2000, abs=400)


def test_a_switch_and_a_switch_back_2_s_later_is_a_preemption_not_dual_activity():
    r = analyze(capture(lambda s: 21 if 10_000 <= s < 30_000 else 11, sent=40_000), sent=40_000)
    assert r["switches"] == 2
    assert (r["dual_active_us"], r["dual_active_episodes"]) == (0, 0)
    assert r["took_over"]


def test_arrival_order_does_not_matter_send_order_does():
    arrivals = capture(lambda s: 11 if s < 10_000 else 21)
    r = analyze(arrivals[np.random.default_rng(1).permutation(len(arrivals))])
    assert (r["switches"], r["dual_active_us"]) == (1, 0)
    assert r["reordered"] > 0


def test_duplicates_and_losses_are_counted():
    seqs = list(range(100)) + [50, 51] + list(range(120, 200))
    arrivals = capture(lambda s: 11, seqs=sorted(seqs), sent=200)
    r = analyze(arrivals, sent=200)
    assert (r["received"], r["lost"], r["duplicated"]) == (180, 20, 2)
    assert r["lost_ranges"] == [[100, 119]]
    assert r["via"] == {"gw1": 182, "gw2": 0}


def test_an_order_through_both_gateways_is_a_duplicate_and_a_dual_active_episode():
    seqs = sorted(list(range(200)) + [100, 101, 102])
    arrivals = capture(lambda s: 11, seqs=seqs, sent=200)
    # The second copy of 100..102 (and every order after 102) through gw2.
    copies = np.flatnonzero(np.diff(arrivals["seq"]) == 0) + 1
    arrivals["ifindex"][copies] = 21
    arrivals["ifindex"][arrivals["seq"] > 102] = 21
    r = analyze(arrivals, sent=200)
    assert r["duplicated"] == 3
    assert r["dual_active_episodes"] == 1 and r["dual_active_us"] == 2 * PERIOD_NS / 1000


def test_an_unknown_ifindex_is_rejected_naming_it():
    arrivals = capture(lambda s: 99 if s == 7 else 11, sent=10)
    with pytest.raises(ValueError, match=r"1 arrivals on ifindex 99, which is no gateway's handoff"):
        analyze(arrivals, sent=10)


def test_an_unknown_active_gateway_is_rejected():
    with pytest.raises(ValueError, match="'gw3'"):
        analyze(capture(lambda s: 11, sent=10), sent=10, active="gw3")


def test_an_empty_capture():
    r = analyze(capture(lambda s: 11, seqs=[], sent=100), sent=100)
    assert (r["lost"], r["switches"], r["dual_active_us"], r["took_over"]) == (100, 0, 0, False)


def test_outage_is_the_exchanges_own_gap_across_the_takeover():
    """Last order through the old gateway -> first through the new one, on
    the exchange's clock, whenever the lab stamped the fault."""
    rows = [(seq, 1_000_000 + seq * 100_000 + (4_000_000 if seq >= 30 else 0), 11 if seq < 30 else 22,
             1_000_000 + seq * 100_000 - 50_000) for seq in range(60)]
    arrivals = np.array(rows, dtype=ARRIVAL_DTYPE)
    r = analyze_host(arrivals, 60, fault_ns=3_000_000, gateway_of={11: "gw1", 22: "gw2"}, active="gw1")
    assert r["took_over"] and r["outage_us"] == 4_100.0
    assert r["takeover_us"] == round((1_000_000 + 30 * 100_000 + 4_000_000 - 3_000_000) / 1000, 1)
