from appliance.statusview import render

FULL = {
    "daemon": {"pid": 4242, "version": "0.1.0", "uptime_s": 7385.2, "config": "/etc/twinpath/gw.toml", "interval_us": 1000,
               "multiplier": 3, "pin_dir": "/sys/fs/bpf/twinpath",
               "readings": {"pace": "quiet", "every_ms": 50.0, "total": 90210, "quiet": 88000, "kernel_wakes": 17}},
    "links": {
        "A": {"state": "up", "rtt_p50_us": 41.3, "rtt_p99_us": 88.6, "rtt_max_us": 310.0, "loss": 0.0,
              "heartbeat_age_ms": 0.42, "carrier": True, "drained": False, "reasons": []},
        "B": {"state": "gray", "rtt_p50_us": 120.0, "rtt_p99_us": 4410.2, "rtt_max_us": 9800.0, "loss": 0.0231,
              "heartbeat_age_ms": 1.1, "carrier": True, "drained": False, "reasons": ["rtt", "loss"]}},
    "classes": {
        "orders": {"link": "A", "policy": "active-backup", "preferred": "A", "forced": None, "failovers": 3,
                   "last_cause": "heartbeat", "last_failover_age_s": 184.0, "packets": 1234567, "bytes": 98765432},
        "market-data": {"link": "B", "policy": "lowest-latency", "preferred": "A", "forced": "B", "failovers": 12,
                        "last_cause": "forced", "last_failover_age_s": 5.0, "packets": 42, "bytes": 2688}},
    "feeds": {"mold": {"won_pct": {"A": 61.2, "B": 38.8}, "gaps": 0, "lost": 0,
                       "lines": {"A": "ok", "B": "behind"}}},
}

UNKNOWNS = {
    "daemon": {"pid": 1, "uptime_s": None, "config": None, "interval_us": None, "multiplier": None, "pin_dir": None},
    "links": {"A": {"state": "down", "rtt_p50_us": None, "rtt_p99_us": None, "rtt_max_us": None, "loss": None,
                    "heartbeat_age_ms": None, "carrier": False, "drained": True, "reasons": ["carrier"]}},
    "classes": {"orders": {"link": None, "policy": "active-backup", "preferred": "A", "forced": None, "failovers": 0,
                           "last_cause": None, "last_failover_age_s": None, "packets": 0, "bytes": 0}},
    "feeds": {},
}


def test_full_status():
    assert render(FULL) == """\
twinpath 0.1.0 daemon pid 4242, up 2h03m, config /etc/twinpath/gw.toml, heartbeat 1000 us x 3, pins /sys/fs/bpf/twinpath
  reads links every 50.0 ms (quiet), 17 kernel wakes

link  state  rtt p50 us  p99 us  max us   loss  heartbeat age ms  carrier  drained  reasons
A     up             41      89     310  0.00%               0.4  up       no       -
B     gray          120    4410    9800  2.31%               1.1  up       no       rtt, loss

class        link  policy          preferred  forced  failovers  last cause  last failover  packets   bytes
orders       A     active-backup   A          -               3  heartbeat   3m04s ago         1.2M  98.8MB
market-data  B     lowest-latency  A          B              12  forced      5s ago              42   2.7kB

feed  won A  won B  gaps  lost  line A  line B
mold  61.2%  38.8%     0     0  ok      behind"""


def test_unknown_values_show_as_dashes_and_empty_sections_are_left_out():
    assert render(UNKNOWNS) == """\
twinpath - daemon pid 1, up -, config -, heartbeat -, pins -

link  state  rtt p50 us  p99 us  max us  loss  heartbeat age ms  carrier  drained  reasons
A     down            -       -       -     -                 -  down     yes      carrier

class   link  policy         preferred  forced  failovers  last cause  last failover  packets  bytes
orders  -     active-backup  A          -               0  -           -                    0     0B"""


def test_absent_fields_and_sections_do_not_break_it():
    text = render({"daemon": {"pid": 9}, "links": {"A": {"state": "stale"}}})
    assert text.splitlines()[0] == "twinpath - daemon pid 9, up -, config -, heartbeat -, pins -"
    assert text.splitlines()[-1].split() == ["A", "stale", "-", "-", "-", "-", "-", "-", "-", "-"]
    assert "class" not in text and "feed" not in text


def test_a_class_held_on_a_gray_link_says_so_beside_it():
    held = {**FULL, "classes": {"orders": {**FULL["classes"]["orders"], "link": "B", "gray_held": True}}}
    row = [line for line in render(held).splitlines() if line.startswith("orders")]
    assert row and row[0].split()[1:3] == ["B", "(gray-held)"]
    assert max(len(line) for line in render(held).splitlines()) <= 120
    assert "gray-held" not in render(FULL)


def test_fits_a_terminal():
    assert max(len(line) for line in render(FULL).splitlines()) <= 120


def test_the_pair_shows_role_peer_paths_witness_and_token():
    pair = {"node": "gw2", "peer": "gw1", "role": "active", "token": 17, "confirmed": True, "vip": "198.18.1.254/24",
            "witness": {"reachable": True, "owner": "gw2", "token": 17, "peer_state": {"lan": False, "links": True}},
            "pending": None, "hold_standby": False, "peer_dead": False,
            "peer_paths": {"peer-lan": "dead", "peer-xl": "fresh"}, "lan": True, "links": True,
            "gate": {"mode": "active", "token": 17, "fenced_packets": 0}}
    text = render({**UNKNOWNS, "pair": pair})
    assert """\
pair: gw2 is ACTIVE, token 17, vip 198.18.1.254/24; gate active (fenced 0 packets)
  peer gw1: alive (peer-lan dead, peer-xl fresh); published {'lan': False, 'links': True}
  witness: reachable, owner gw2, token 17
  this gateway: lan ok, order links ok""" in text
    held = render({"pair": {**pair, "role": "standby", "hold_standby": True, "peer_dead": True, "lan": None,
                            "pending": ["acquire", "peer-dead"], "witness": {"reachable": False}}})
    assert "gw2 is STANDBY" in held and "DEAD on every path" in held and "UNREACHABLE" in held
    assert "lan -" in held and "acquire (peer-dead) in flight" in held and "held standby" in held


def test_the_pair_shows_when_each_peer_path_was_last_heard():
    pair = {"role": "standby", "peer": "gw1", "peer_dead": True, "peer_paths": {"peer-lan": "dead", "peer-xl": "fresh"},
            "peer_heard_us": {"peer-lan": 3125.4, "peer-xl": 412.0}, "peer_unanswered": {"peer-lan": 3, "peer-xl": 0}}
    assert "(peer-lan dead (heard 3.1 ms ago, 3 unanswered), peer-xl fresh (heard 0.4 ms ago))" in render({"pair": pair})
    never = {**pair, "peer_heard_us": {"peer-lan": None}, "peer_unanswered": {"peer-lan": 5}}
    assert "peer-lan dead (never heard, 5 unanswered)" in render({"pair": never})
