"""Parsing FRR bfdd's log into session transitions; the lines are real, from
FRR 8.4.4's bfdd in the lab (gw's log, TZ=UTC, `log timestamp precision 6`,
`debug bfd peer`), around a blackhole on link A and the daemon's exit."""

import pytest

from lab.bfd import Bfdd, parse_state_changes, render_config
from lab.topology import LINKS, Lab

GW_LOG = """\
2026/11/21 12:35:35.027627 BFD: [PSB4R-8T1TJ] session-new: mhop:no peer:198.18.10.2 local:198.18.10.1 vrf:default
2026/11/21 12:35:35.028203 BFD: [PSB4R-8T1TJ] session-new: mhop:no peer:198.18.11.2 local:198.18.11.1 vrf:default
2026/11/21 12:35:36.048120 BFD: [J1C6V-VMRW5] state-change: [mhop:no peer:198.18.10.2 local:198.18.10.1 vrf:default] down -> up
2026/11/21 12:35:36.056596 BFD: [J1C6V-VMRW5] state-change: [mhop:no peer:198.18.11.2 local:198.18.11.1 vrf:default] down -> up
2026/11/21 12:35:36.122514 BFD: [SEY1D-NT8EQ] state-change: [mhop:no peer:198.18.10.2 local:198.18.10.1 vrf:default] up -> down reason:control-expired
2026/11/21 12:35:36.126434 BFD: [J1C6V-VMRW5] state-change: [mhop:no peer:198.18.10.2 local:198.18.10.1 vrf:default] down -> up
2026/11/21 12:35:36.128761 BFD: [SEY1D-NT8EQ] state-change: [mhop:no peer:198.18.10.2 local:198.18.10.1 vrf:default] up -> down reason:path-down
2026/11/21 12:35:36.128774 BFD: [SEY1D-NT8EQ] state-change: [mhop:no peer:198.18.11.2 local:198.18.11.1 vrf:default] up -> down reason:path-down
""".splitlines(keepends=True)

GW_PEERS = {spec.target: name for name, spec in LINKS.items()}
# 2026-11-21 12:35:36 UTC (`date -u -d '2026-11-21 12:35:36' +%s`)
T_12_35_36 = 1_795_264_536 * 10**9


def test_state_changes_of_both_links_in_log_order():
    changes = parse_state_changes(GW_LOG, GW_PEERS, 0)
    assert [(c["link"], c["from"], c["to"], c["diag"]) for c in changes] == [
        ("A", "down", "up", None),
        ("B", "down", "up", None),
        ("A", "up", "down", "control-expired"),
        ("A", "down", "up", None),
        ("A", "up", "down", "path-down"),
        ("B", "up", "down", "path-down"),
    ]
    assert {(c["peer"], c["local"]) for c in changes} == {("198.18.10.2", "198.18.10.1"),
                                                          ("198.18.11.2", "198.18.11.1")}


def test_stamps_are_utc_microseconds_shifted_to_monotonic():
    offset = 1_795_257_390_109_465_352  # realtime - monotonic, as measured at start
    changes = parse_state_changes(GW_LOG, GW_PEERS, offset)
    down = changes[2]
    assert down["to"] == "down"
    assert down["mono_ns"] == T_12_35_36 + 122_514_000 - offset
    assert changes[3]["mono_ns"] - down["mono_ns"] == 3_920_000  # .126434 - .122514
    assert [c["mono_ns"] for c in changes] == sorted(c["mono_ns"] for c in changes)


def test_only_listed_peers_are_reported():
    changes = parse_state_changes(GW_LOG, {"198.18.11.2": "B"}, 0)
    assert [(c["link"], c["to"]) for c in changes] == [("B", "up"), ("B", "down")]
    assert parse_state_changes(GW_LOG, {"198.18.10.1": "A"}, 0) == []  # a local address is no peer


def test_carrier_side_and_interface_bound_sessions():
    carrier_log = [
        # carB's bfdd, answering gw (its session starts from init: down -> init is not logged)
        "2026/11/21 12:35:36.056705 BFD: [J1C6V-VMRW5] state-change: [mhop:no peer:198.18.11.1 "
        "local:198.18.11.2 vrf:default] init -> up\n",
        # a session configured with `interface` (bfdd with zebra) names the interface too
        "2026/11/21 12:33:25.233948 BFD: [SEY1D-NT8EQ] state-change: [mhop:no peer:198.18.10.2 "
        "local:198.18.10.1 vrf:default ifname:lnkA] up -> down reason:control-expired\n",
    ]
    changes = parse_state_changes(carrier_log, {"198.18.11.1": "B", "198.18.10.2": "A"}, 0)
    assert [(c["link"], c["from"], c["to"], c["diag"]) for c in changes] == [
        ("B", "init", "up", None), ("A", "up", "down", "control-expired")]
    assert changes[1]["mono_ns"] == 1_795_264_405 * 10**9 + 233_948_000


def test_lines_that_are_not_state_changes_are_skipped():
    noise = [
        "2026/11/21 12:32:30 BFD: [WJMQE-SVGRJ] session-enable: specified interface lnkA (VRF default) "
        "doesn't exist.\n",
        "2026/11/21 12:32:30 BFD: [SHWNK-NWT5S][EC 100663304] No such command on config line 5:   "
        "receive-interval 9\n",
        "2026/11/21 12:35:36.128761 BFD: [SEY1D-NT8EQ] state-change: unhandled neighbor state: 7\n",
        "can't open logfile /tmp/bfdx/tpbfd7/gw.log\n",
        "2026/11/21 12:35:36.1287",  # a line bfdd is still writing
        "",
    ]
    assert parse_state_changes(noise, GW_PEERS, 0) == []


def test_a_stamp_without_fraction_is_whole_seconds():
    line = ("2026/11/21 12:35:36 BFD: [SEY1D-NT8EQ] state-change: [mhop:no peer:198.18.10.2 "
            "local:198.18.10.1 vrf:default] up -> down reason:neighbor-down")
    (change,) = parse_state_changes([line], GW_PEERS, 0)
    assert change["mono_ns"] == T_12_35_36
    assert change["diag"] == "neighbor-down"


def test_config_has_one_peer_per_link_at_the_requested_timers():
    gw = render_config([LINKS["A"], LINKS["B"]], "gw", 10, 3)
    assert " peer 198.18.10.2 local-address 198.18.10.1\n" in gw
    assert " peer 198.18.11.2 local-address 198.18.11.1\n" in gw
    assert gw.count("  receive-interval 10\n") == gw.count("  transmit-interval 10\n") == 2
    assert gw.count("  detect-multiplier 3\n") == 2
    assert "log timestamp precision 6\n" in gw and "debug bfd peer\n" in gw
    carrier = render_config([LINKS["A"]], "carrier", 50, 5)
    assert " peer 198.18.10.1 local-address 198.18.10.2\n" in carrier
    assert "198.18.11" not in carrier
    assert "  transmit-interval 50\n" in carrier and "  detect-multiplier 5\n" in carrier


@pytest.mark.parametrize("kwargs", [{"interval_ms": 9}, {"multiplier": 1}, {"links": ("C",)},
                                    {"links": ("A", "A")}, {"links": ()}])
def test_settings_frr_would_refuse_are_rejected_up_front(tmp_path, kwargs):
    with pytest.raises(ValueError):
        Bfdd(Lab("tp0000"), tmp_path, **kwargs)
