import re

import pytest

from appliance.config import ConfigError, parse

BASE = """
[steer]
ingress = "int"

[[links]]
name = "A"
dev = "lnkA"
target = "198.18.10.2"

[[links]]
name = "B"
dev = "lnkB"
target = "198.18.11.2"

[[classes]]
name = "orders"
links = ["A", "B"]

[[rules]]
class = "orders"
dst = "198.19.0.0/24"
proto = "udp"
ports = "9000-9099"
"""


def test_defaults_are_1ms_x3_with_1s_holddown():
    cfg = parse(BASE)
    hb = cfg.heartbeat
    assert (hb.interval_us, hb.multiplier, hb.holddown_ms, hb.dead_ns) == (1000, 3, 1000, 3_000_000)
    assert cfg.rules[0].port_range == (9000, 9099)
    assert cfg.links[0].gateway == cfg.links[0].target


def test_200us_interval_is_accepted():
    cfg = parse(BASE.replace('[steer]', '[heartbeat]\ninterval_us = 200\n\n[steer]'))
    assert cfg.heartbeat.dead_ns == 600_000


@pytest.mark.parametrize("edit,message", [
    (('ports = "9000-9099"', 'ports = "9099-9000"'), "rules.0"),
    (('ports = "9000-9099"', 'ports = "90x0"'), "rules.0"),
    (('ports = "9000-9099"', 'ports = "9000-70000"'), "rules.0"),
    (('dst = "198.19.0.0/24"', 'dst = "198.19.0.1/24"'), "rules.0.dst"),
    (('target = "198.18.10.2"', 'target = "198.18.10"'), "links.0.target"),
    (('links = ["A", "B"]', 'links = ["A", "C"]'), "unknown link"),
    (('links = ["A", "B"]', 'links = ["A", "A"]'), "appears twice"),
    (('class = "orders"', 'class = "ordrs"'), "unknown class"),
    (('name = "B"', 'name = "A"'), "duplicate link"),
    (('dev = "lnkB"', 'dev = "int"'), "also a link"),
    (('proto = "udp"', 'proto = "sctp"'), "rules.0.proto"),
    (('[steer]', '[steer]\ncolour = "blue"'), "steer.colour"),
    (('[steer]', '[heartbeat]\ninterval_us = 5\n[steer]'), "heartbeat.interval_us"),
    (('[steer]', '[heartbeat]\nmultiplier = 1\n[steer]'), "heartbeat.multiplier"),
])
def test_bad_config_names_the_offending_key(edit, message):
    with pytest.raises(ConfigError) as e:
        parse(BASE.replace(*edit), "gw.toml")
    assert message in str(e.value)
    assert str(e.value).startswith("gw.toml")


def test_icmp_rule_with_ports_is_rejected():
    with pytest.raises(ConfigError, match="icmp"):
        parse(BASE.replace('proto = "udp"', 'proto = "icmp"'))


def test_not_toml_is_a_clear_error():
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse("[steer\ningress=", "gw.toml")


def test_too_many_rules_for_one_prefix_is_rejected():
    rule = '\n[[rules]]\nclass = "orders"\ndst = "198.19.0.0/24"\nports = "{p}"\n'
    text = BASE + "".join(rule.format(p=9100 + i) for i in range(8))
    with pytest.raises(ConfigError, match="at most 8 per prefix"):
        parse(text)


FEEDS = """
[[feeds]]
name = "itch"
protocol = "moldudp64"
dst = "198.18.1.1"
port = 26400
"""


def test_lab_config_has_two_arbitrated_feeds():
    from appliance.lab.topology import render_config
    cfg = parse(render_config(feeds=True))
    assert [(f.name, f.protocol, f.port) for f in cfg.feeds] == [("itch", "moldudp64", 26400),
                                                                  ("mdp3", "mdp3", 26401)]
    assert cfg.arbitration.lines == ["A", "B"]


@pytest.mark.parametrize("extra,message", [
    (FEEDS + FEEDS, "duplicate feed name(s): itch"),
    (FEEDS + FEEDS.replace('"itch"', '"other"'), "duplicate feed destination(s): 198.18.1.1:26400"),
    (FEEDS.replace("moldudp64", "itch50"), "feeds.0.protocol"),
    (FEEDS.replace("26400", "70000"), "feeds.0.port"),
    (FEEDS + '[arbitration]\nlines = ["A", "A"]\n', "arbitration.lines must name two different links"),
    (FEEDS + '[arbitration]\nlines = ["A", "C"]\n', "arbitration.lines must name two different links"),
])
def test_bad_feed_config_is_refused_by_name(extra, message):
    from appliance.lab.topology import render_config
    base = render_config()
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(base + extra)
