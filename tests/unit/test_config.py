import json
import re
from pathlib import Path

import pytest

import appliance.core
from appliance.core.config import ConfigError, parse
from appliance.core.damping import DampingParams
from appliance.core.detect import DetectParams
from appliance.core.policy import ClassPolicy, Prediction
from appliance.edge.configfile import load

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


def test_an_existing_config_gets_the_defaults_of_detection_damping_and_policy():
    params = parse(BASE).link_params(ready_timeout_ns=5_000_000_000)
    assert (params.names, params.class_names, params.class_links) == (["A", "B"], ["orders"], [[0, 1]])
    assert (params.dead_ns, params.holddown_ns, params.ready_timeout_ns) == (3_000_000, 10**9, 5 * 10**9)
    assert params.class_policies == [ClassPolicy()] and params.prediction == Prediction(enabled=False)
    assert params.detection == DetectParams() and params.damping == DampingParams()


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
    from lab.topology import render_config
    cfg = parse(render_config(feeds=True))
    assert [(f.name, f.protocol, f.port) for f in cfg.feeds] == [("itch", "moldudp64", 26400),
                                                                  ("mdp3", "mdp3", 26401)]
    assert cfg.arbitration.lines == ["A", "B"]


@pytest.mark.parametrize("extra,message", [
    (FEEDS + FEEDS, "duplicate feed name(s): itch"),
    (FEEDS + FEEDS.replace('"itch"', '"other"'), "duplicate feed destination(s): 198.18.1.1:26400"),
    (FEEDS.replace("moldudp64", "itch50"), "feeds.0.protocol"),
    (FEEDS.replace("26400", "70000"), "feeds.0.port"),
    (FEEDS + '[arbitration]\nlines = ["A", "A"]\n', "arbitration.lines: must name two different links"),
    (FEEDS + '[arbitration]\nlines = ["A", "C"]\n', "arbitration.lines: must name two different links"),
])
def test_bad_feed_config_is_refused_by_name(extra, message):
    from lab.topology import render_config
    base = render_config()
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(base + extra)


# -- strict types, usable addresses, new keys -------------------------------
HB = "[heartbeat]\n{}\n\n[steer]"
ARB = FEEDS + "[arbitration]\n{}\n"


def _edit(old, new):
    return lambda text: text.replace(old, new)


def _heartbeat(line):
    return _edit("[steer]", HB.format(line))


def _link_a(line):
    return _edit('target = "198.18.10.2"', line)


def _feeds(line):
    return lambda text: text + ARB.format(line)


def _class(lines):
    return _edit('links = ["A", "B"]', 'links = ["A", "B"]\n' + lines)


def _table(name, lines):
    return lambda text: text + f"\n[{name}]\n{lines}\n"


PAIR_LINKS = """
[[links]]
name = "peer-lan"
dev = "pl"
target = "198.18.1.3"

[[links]]
name = "peer-xl"
dev = "xl"
target = "198.18.42.2"

[[links]]
name = "anchor"
dev = "pa"
target = "198.18.1.1"
"""
PAIR = """
[pair]
node = "gw1"
peer = "gw2"
vip = "198.18.1.254/24"
peer_links = ["peer-lan", "peer-xl"]
lan_links = ["peer-lan", "anchor"]
witness = ["http://198.18.41.100:2379"]
prefix = "/twinpath/colo1"
"""


def _pair(old: str = "", new: str = ""):
    """BASE with the pair's links before the classes and a [pair] section, edited."""
    def edit(text: str) -> str:
        text = text.replace("\n[[classes]]", PAIR_LINKS + "\n[[classes]]", 1) + PAIR
        assert old in text
        return text.replace(old, new, 1)
    return edit


# (edit of BASE, the key path the error must name, a fragment of the reason)
BAD_CONFIGS = {
    "pair node = peer": (_pair('peer = "gw2"', 'peer = "gw1"'), "pair", "node and peer are both 'gw1'"),
    "pair vip without prefix": (_pair('"198.18.1.254/24"', '"198.18.1.254"'), "pair.vip", "prefix length"),
    "pair vip is the network": (_pair('"198.18.1.254/24"', '"198.18.1.0/24"'), "pair.vip", "network or broadcast"),
    "pair vip not a string": (_pair('"198.18.1.254/24"', "1"), "pair.vip", "got 1 (an integer)"),
    "pair one peer path": (_pair('peer_links = ["peer-lan", "peer-xl"]', 'peer_links = ["peer-lan"]'),
                           "pair.peer_links", "at least 2"),
    "pair unknown link": (_pair('"peer-xl"]', '"peer-x"]'), "pair.peer_links.1", "unknown link 'peer-x'"),
    "pair path carries a class": (_pair('lan_links = ["peer-lan", "anchor"]', 'lan_links = ["A"]'),
                                  "pair.lan_links.0", "'A' carries class traffic"),
    "pair without an anchor": (_pair('lan_links = ["peer-lan", "anchor"]', 'lan_links = ["peer-lan"]'),
                               "pair.lan_links", "needs a link that is not a peer link"),
    "pair witness not a URL": (_pair('"http://198.18.41.100:2379"', '"198.18.41.100:2379"'), "pair.witness",
                               "not an etcd client URL"),
    "pair prefix relative": (_pair('"/twinpath/colo1"', '"twinpath"'), "pair.prefix", "should match pattern"),
    "pair lease zero": (_pair('colo1"', 'colo1"\nlease_s = 0'), "pair.lease_s", "greater than or equal to 1"),
    "interval as string": (_heartbeat('interval_us = "1000"'), "heartbeat.interval_us", "must be an integer"),
    "interval as float": (_heartbeat("interval_us = 1000.0"), "heartbeat.interval_us", "got 1000.0 (a float)"),
    "interval as bool": (_heartbeat("interval_us = true"), "heartbeat.interval_us", "got true (a boolean)"),
    "multiplier as string": (_heartbeat('multiplier = "3"'), "heartbeat.multiplier", "must be an integer"),
    "holddown negative": (_heartbeat("holddown_ms = -1"), "heartbeat.holddown_ms", "greater than or equal to 0"),
    "key_file relative": (_heartbeat('key_file = "keys.txt"'), "heartbeat.key_file", "must be an absolute path"),
    "key_file empty": (_heartbeat('key_file = ""'), "heartbeat.key_file", "must be an absolute path"),
    "key_file not a string": (_heartbeat("key_file = 1"), "heartbeat.key_file", "must be a string"),
    "unknown heartbeat key": (_heartbeat("keyfile = '/k'"), "heartbeat.keyfile", "unknown key"),
    "ports with plus": (_edit('"9000-9099"', '"+9000"'), "rules.0.ports", "decimal digits"),
    "ports with underscore": (_edit('"9000-9099"', '"9_000"'), "rules.0.ports", "decimal digits"),
    "ports with space": (_edit('"9000-9099"', '" 9000"'), "rules.0.ports", "decimal digits"),
    "ports with newline": (_edit('"9000-9099"', r'"9000\n"'), "rules.0.ports", "decimal digits"),
    "ports unicode digits": (_edit('"9000-9099"', '"９０００"'), "rules.0.ports", "decimal digits"),
    "ports six digits": (_edit('"9000-9099"', '"009000"'), "rules.0.ports", "decimal digits"),
    "ports float": (_edit('"9000-9099"', "9000.0"), "rules.0.ports", "got 9000.0 (a float)"),
    "ports bool": (_edit('"9000-9099"', "true"), "rules.0.ports", "got true (a boolean)"),
    "ports int too big": (_edit('"9000-9099"', "65536"), "rules.0.ports", "not within 0-65535"),
    "ports reversed": (_edit('"9000-9099"', '"9099-9000"'), "rules.0.ports", "lo <= hi"),
    "ports on icmp": (_edit('proto = "udp"', 'proto = "icmp"'), "rules.0.ports", "no sense for icmp"),
    "dst not a string": (_edit('dst = "198.19.0.0/24"', "dst = 5"), "rules.0.dst", "must be a string"),
    "target as integer": (_link_a("target = 3323071234"), "links.0.target", "must be a string"),
    "target unspecified": (_link_a('target = "0.0.0.0"'), "links.0.target",
                           "0.0.0.0 is unspecified: no reply can come from it"),
    "target this-network": (_link_a('target = "0.1.2.3"'), "links.0.target", "0.0.0.0/8"),
    "target loopback": (_link_a('target = "127.0.0.53"'), "links.0.target", "127.0.0.53 is loopback"),
    "target multicast": (_link_a('target = "224.0.0.5"'), "links.0.target", "224.0.0.5 is multicast"),
    "target broadcast": (_link_a('target = "255.255.255.255"'), "links.0.target", "limited broadcast"),
    "target link-local": (_link_a('target = "169.254.1.1"'), "links.0.target", "link-local"),
    "target reserved": (_link_a('target = "240.0.0.1"'), "links.0.target", "240.0.0.1 is reserved"),
    "target leading zero": (_link_a('target = "198.18.010.2"'), "links.0.target", "not an IPv4 address"),
    "target with space": (_link_a('target = " 198.18.10.2"'), "links.0.target", "not an IPv4 address"),
    "nexthop loopback": (_link_a('target = "198.18.10.2"\nnexthop = "127.0.0.1"'), "links.0.nexthop",
                         "127.0.0.1 is loopback"),
    "ttl_security as string": (_link_a('target = "198.18.10.2"\nttl_security = "yes"'), "links.0.ttl_security",
                               "must be true or false"),
    "ttl_security as int": (_link_a('target = "198.18.10.2"\nttl_security = 1'), "links.0.ttl_security",
                            "must be true or false"),
    "ttl_security via nexthop": (_link_a('target = "198.18.10.2"\nnexthop = "198.18.10.1"\nttl_security = true'),
                                 "links.0.ttl_security", "needs a directly connected target"),
    "link name not a string": (_edit('name = "B"', "name = 2"), "links.1.name", "must be a string"),
    "duplicate dev": (_edit('dev = "lnkB"', 'dev = "lnkA"'), "links.1.dev", "duplicate link dev 'lnkA'"),
    "unknown link in class": (_edit('links = ["A", "B"]', 'links = ["A", "C"]'), "classes.0.links.1",
                              "unknown link 'C'"),
    "unknown class in rule": (_edit('class = "orders"', 'class = "ordrs"'), "rules.0.class", "unknown class"),
    "ingress is a link": (_edit('dev = "lnkB"', 'dev = "int"'), "steer.ingress", "also a link (links.1.dev)"),
    "missing steer": (_edit('[steer]\ningress = "int"', ""), "steer", "required key is missing"),
    "grace as string": (_feeds('grace_ms = "20"'), "arbitration.grace_ms", "must be a number"),
    "grace as bool": (_feeds("grace_ms = true"), "arbitration.grace_ms", "must be a number"),
    "behind_seqs as float": (_feeds("behind_seqs = 10.0"), "arbitration.behind_seqs", "must be an integer"),
    "feed port as string": (lambda t: t + FEEDS.replace("26400", '"26400"'), "feeds.0.port", "must be an integer"),
    "feed dst as integer": (lambda t: t + FEEDS.replace('"198.18.1.1"', "1"), "feeds.0.dst", "must be a string"),
    "unknown policy": (_class('policy = "fastest"'), "classes.0.policy", "'active-backup' or 'lowest-latency'"),
    "preempt as string": (_class('preempt = "no"'), "classes.0.preempt", "must be true or false"),
    "preempt on lowest-latency": (_class('policy = "lowest-latency"\npreempt = false'), "classes.0.preempt",
                                  'applies only to policy = "active-backup"'),
    "dwell on active-backup": (_class("min_dwell_ms = 10"), "classes.0.min_dwell_ms",
                               'applies only to policy = "lowest-latency"'),
    "hysteresis negative": (_class('policy = "lowest-latency"\nhysteresis_us = -1'), "classes.0.hysteresis_us",
                            "greater than or equal to 0"),
    "quorum of one": (_table("detection", "quorum = 1"), "detection.quorum", "one alone is noise"),
    "quorum of five": (_table("detection", "quorum = 5"), "detection.quorum", "must be 2, 3 or 4"),
    "loss threshold 1": (_table("detection", "loss_threshold = 1.0"), "detection.loss_threshold", "less than 1"),
    "stall as string": (_table("detection", 'stall_ms = "10"'), "detection.stall_ms", "must be a number"),
    "unknown detection key": (_table("detection", "quorom = 2"), "detection.quorom", "unknown key"),
    "reuse above suppress": (_table("damping", "reuse = 2500"), "damping.reuse", "must be below suppress (2000)"),
    "max suppress too short": (_table("damping", "max_suppress_s = 20"), "damping.max_suppress_s",
                               "must be above 21.2 s"),
    "max suppress too long": (_table("damping", "half_life_s = 1\nmax_suppress_s = 3600"), "damping.max_suppress_s",
                              "at most 100 half-lives"),
    "prediction threshold 0": (_table("prediction", "threshold = 0.0"), "prediction.threshold", "greater than 0"),
    "prediction enabled as int": (_table("prediction", "enabled = 1"), "prediction.enabled", "must be true or false"),
    "control socket relative": (_table("control", 'socket = "control.sock"'), "control.socket",
                                "must be an absolute path, got 'control.sock'"),
    "control socket too long": (_table("control", f'socket = "/run/{"x" * 120}.sock"'), "control.socket",
                                "at most 107 bytes"),
    "control socket a directory": (_table("control", 'socket = "/run/twinpath/"'), "control.socket",
                                   "must be a file path"),
    "control socket empty": (_table("control", 'socket = ""'), "control.socket", "must be an absolute path"),
    "control socket not a string": (_table("control", "socket = 1"), "control.socket", "must be a string"),
    "unknown control key": (_table("control", 'path = "/run/twinpath/c.sock"'), "control.path", "unknown key"),
    "metrics port too big": (_table("metrics", "port = 70000"), "metrics.port", "less than or equal to 65535"),
    "metrics port negative": (_table("metrics", "port = -1"), "metrics.port", "greater than or equal to 0"),
    "metrics port as string": (_table("metrics", 'port = "9464"'), "metrics.port", "must be an integer"),
    "metrics port as float": (_table("metrics", "port = 9464.0"), "metrics.port", "got 9464.0 (a float)"),
    "metrics address": (_table("metrics", 'address = "0.0.0.0"'), "metrics.address", "unknown key"),
    "pin_dir outside bpffs": (_table("state", 'pin_dir = "/run/twinpath/pins"'), "state.pin_dir",
                              "must be a directory under /sys/fs/bpf/ (no '.' or '..' parts), got '/run/twinpath/pins'"),
    "pin_dir is bpffs itself": (_table("state", 'pin_dir = "/sys/fs/bpf"'), "state.pin_dir",
                                "must be a directory under /sys/fs/bpf/"),
    "pin_dir relative": (_table("state", 'pin_dir = "twinpath/gw"'), "state.pin_dir", "must be an absolute path"),
    "pin_dir escapes bpffs": (_table("state", 'pin_dir = "/sys/fs/bpf/../../etc"'), "state.pin_dir",
                              "no '.' or '..' parts"),
    "pin_dir is bpffs root with slash": (_table("state", 'pin_dir = "/sys/fs/bpf/"'), "state.pin_dir",
                                         "must be a directory under /sys/fs/bpf/"),
    "on_stop unknown": (_table("state", 'on_stop = "detatch"'), "state.on_stop",
                        "'fail-static' or 'detach', got 'detatch' (a string)"),
    "on_stop as bool": (_table("state", "on_stop = true"), "state.on_stop", "got true (a boolean)"),
}


@pytest.mark.parametrize("edit,path,reason", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_config_names_file_key_path_and_reason(edit, path, reason):
    text = edit(BASE)
    assert text != BASE, "the edit must change the config"
    with pytest.raises(ConfigError) as e:
        parse(text, "gw.toml")
    message = str(e.value)
    assert message.startswith("gw.toml: ")
    lines = [l.strip() for l in message.splitlines()[1:]]
    assert any(l.startswith(f"{path}: ") and reason in l for l in lines), message


ACCEPTED = {
    "pair": (_pair(), lambda c: (c.pair.node, str(c.pair.vip), c.pair.lease_s, c.pair.preempt) ==
             ("gw1", "198.18.1.254/24", 2, False)),
    "port as integer": (_edit('"9000-9099"', "9000"), lambda c: c.rules[0].port_range == (9000, 9000)),
    "port as string": (_edit('"9000-9099"', '"9000"'), lambda c: c.rules[0].port_range == (9000, 9000)),
    "full port range": (_edit('"9000-9099"', '"0-65535"'), lambda c: c.rules[0].port_range == (0, 65535)),
    "port zero": (_edit('"9000-9099"', "0"), lambda c: c.rules[0].port_range == (0, 0)),
    "no ports": (_edit('ports = "9000-9099"', ""), lambda c: c.rules[0].port_range == (0, 65535)),
    "TOML integer with underscores": (_heartbeat("interval_us = 1_000"), lambda c: c.heartbeat.interval_us == 1000),
    "key_file": (_heartbeat('key_file = "/etc/twinpath/hb.keys"'),
                 lambda c: c.heartbeat.key_file == "/etc/twinpath/hb.keys"),
    "no key_file": (lambda t: t, lambda c: c.heartbeat.key_file is None and not c.links[0].ttl_security),
    "ttl_security": (_link_a('target = "198.18.10.2"\nttl_security = true'), lambda c: c.links[0].ttl_security),
    "ttl_security, nexthop = target": (_link_a('target = "198.18.10.2"\nnexthop = "198.18.10.2"\nttl_security = true'),
                                       lambda c: c.links[0].ttl_security),
    "ttl_security off": (_link_a('target = "198.18.10.2"\nttl_security = false'), lambda c: not c.links[0].ttl_security),
    "nexthop": (_link_a('target = "198.19.7.7"\nnexthop = "198.18.10.1"'),
                lambda c: str(c.links[0].gateway) == "198.18.10.1" and str(c.links[0].target) == "198.19.7.7"),
    "private target": (_link_a('target = "10.1.2.3"'), lambda c: str(c.links[0].target) == "10.1.2.3"),
    "grace as integer": (_feeds("grace_ms = 20"), lambda c: c.arbitration.grace_ms == 20.0),
    "grace as float": (_feeds("grace_ms = 2.5"), lambda c: c.arbitration.grace_ms == 2.5),
    "multicast feed": (lambda t: t + FEEDS.replace("198.18.1.1", "233.54.12.1"),
                       lambda c: str(c.feeds[0].dst) == "233.54.12.1"),
    "active-backup without preempt": (_class("preempt = false"), lambda c: not c.classes[0].preempt),
    "lowest-latency": (_class('policy = "lowest-latency"\nhysteresis_us = 20\nhysteresis_ratio = 0\nconfirm = 5\n'
                              "min_dwell_ms = 250"),
                       lambda c: c.classes[0].params == ClassPolicy(policy="lowest-latency", hysteresis_ns=20_000,
                                                                    hysteresis_ratio=0.0, confirm=5,
                                                                    min_dwell_ns=250_000_000)),
    "detection": (_table("detection", "quorum = 3\nconfirm = 10\nstall_ms = 2.5\nrtt_margin_ratio = 2"),
                  lambda c: (c.detection.params.quorum, c.detection.params.confirm, c.detection.params.stall_ns,
                             c.detection.params.rtt_margin_ratio) == (3, 10, 2_500_000, 2.0)),
    "damping": (_table("damping", "penalty = 500\nhalf_life_s = 30\nmax_suppress_s = 120"),
                lambda c: (c.damping.params.penalty, c.damping.params.half_life_ns,
                           c.damping.params.max_suppress_ns) == (500.0, 30 * 10**9, 120 * 10**9)),
    "prediction": (_table("prediction", "enabled = true\nthreshold = 0.75"),
                   lambda c: c.prediction.params == Prediction(enabled=True, threshold=0.75)),
}


@pytest.mark.parametrize("edit,check", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted_forms(edit, check):
    cfg = parse(edit(BASE), "gw.toml")
    assert check(cfg)
    assert cfg.source == "gw.toml"


def test_every_problem_is_listed_not_just_the_first():
    text = BASE.replace('target = "198.18.10.2"', 'target = "0.0.0.0"').replace('"9000-9099"', '"+1"')
    with pytest.raises(ConfigError) as e:
        parse(text, "gw.toml")
    assert "links.0.target: 0.0.0.0 is unspecified" in str(e.value)
    assert "rules.0.ports: " in str(e.value)


def test_load_names_the_file(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(BASE.replace('target = "198.18.10.2"', 'target = "127.0.0.1"'))
    with pytest.raises(ConfigError) as e:
        load(path)
    assert str(e.value).startswith(f"{path}: invalid configuration:")
    assert "links.0.target: 127.0.0.1 is loopback" in str(e.value)
    path.write_bytes(b'[steer]\ningress = "\xff"\n')
    with pytest.raises(ConfigError, match=f"{re.escape(str(path))}: not UTF-8"):
        load(path)
    with pytest.raises(ConfigError, match="cannot read config"):
        load(tmp_path / "absent.toml")
    path.write_text(BASE)
    assert load(path).source == str(path)


def test_enabled_prediction_without_a_model_gets_the_shipped_one(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(BASE)
    assert load(path).prediction.model is None                      # off: nothing loaded
    path.write_text(BASE + "\n[prediction]\nenabled = true\n")
    cfg = load(path)
    shipped = json.loads((Path(appliance.core.__file__).parent / "predict_weights.json").read_text())["model"]
    assert cfg.prediction.model.coef == shipped["coef"]
    assert cfg.prediction.params.threshold == shipped["threshold"]   # the model's operating point
    path.write_text(BASE + "\n[prediction]\nenabled = true\nthreshold = 0.5\n")
    assert load(path).prediction.params.threshold == 0.5             # unless the config sets one


def test_check_config_command(tmp_path, capsys):
    from appliance.cli import main
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(BASE.replace('[steer]', '[heartbeat]\nkey_file = "/etc/twinpath/hb.keys"\n\n[steer]'))
    bad.write_text(BASE.replace('"9000-9099"', '"9_000"'))
    assert main(["check-config", str(good)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{good}: ok.") and "198.19.0.0/24 proto udp ports 9000-9099 -> orders" in out
    # What the daemon will decide with, defaults included, so an engineer sees it before starting it.
    assert "sender SCHED_FIFO 10" in out and "gray: 2 of rtt" in out and "damping: penalty 1000" in out
    assert "class orders: links A > B (active-backup, preempt)" in out
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}: invalid configuration:") and "rules.0.ports:" in err
