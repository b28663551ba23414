"""Reload planning: which changes apply live and how, which are refused and
why (appliance.core.reload)."""
import dataclasses

import pytest

from appliance.core import reload
from appliance.core.config import parse
from appliance.core.predict import FEATURES
from tests.unit.test_config import BASE as CONFIG_BASE

# test_config's base, with a feed: reloads of arbitration settings need one.
BASE = CONFIG_BASE + """
[[feeds]]
name = "itch"
protocol = "moldudp64"
dst = "198.18.1.1"
port = 26400
"""

FEED_2 = """
[[feeds]]
name = "mdp"
protocol = "mdp3"
dst = "224.0.31.1"
port = 14310
"""

LINK_C = """
[[links]]
name = "C"
dev = "lnkC"
target = "198.18.12.2"
"""

CLASS_2 = """
[[classes]]
name = "market"
links = ["B", "A"]
"""

RULE_2 = """
[[rules]]
class = "orders"
dst = "198.19.1.0/24"
"""

MODEL = f"""
[prediction]
enabled = true

[prediction.model]
features = {list(FEATURES)!r}
mean = {[0.0] * len(FEATURES)!r}
scale = {[1.0] * len(FEATURES)!r}
coef = {[0.5] * len(FEATURES)!r}
intercept = -3.0
threshold = 0.8
hold_ms = 500
""".replace("'", '"')

NO_FEEDS = BASE[:BASE.index("[[feeds]]")]


def _edit(old, new, text=BASE):
    return text.replace(old, new)


def _table(name, lines, text=BASE):
    return text + f"\n[{name}]\n{lines}\n"


def _plan(new_text, old_text=BASE):
    return reload.plan(parse(old_text), parse(new_text))


def _hows(p):
    return {c.path: c.how for c in p.changes}


def test_identical_configs_plan_nothing():
    p = _plan(BASE)
    assert p.empty and p.live and p.changes == [] and p.refused == []
    assert p.summary() == "no changes"


def test_defaults_written_out_are_no_change():
    assert _plan(_table("detection", "confirm = 4") + "\n[heartbeat]\ninterval_us = 1000\n").empty


# (new config, the changes and how each is applied)
CASES = {
    "link dev": (_edit('dev = "lnkB"', 'dev = "lnkC"'), {"links.1.dev": "restart"}),
    "link added": (BASE + LINK_C, {"links.2": "restart"}),
    "link removed": (BASE + LINK_C, {"links.2": "restart"}, BASE),
    "link renamed": (_edit('name = "B"', 'name = "C"', _edit('["A", "B"]', '["A", "C"]')) +
                     '\n[arbitration]\nlines = ["A", "C"]\n',
                     {"links.1.name": "restart", "classes.0.links": "maps", "arbitration.lines": "restart"}),
    "link target": (_edit('"198.18.11.2"', '"198.18.11.3"'), {"links.1.target": "restart"}),
    "link nexthop": (_edit('target = "198.18.11.2"', 'target = "198.18.11.2"\nnexthop = "198.18.11.1"'),
                     {"links.1.nexthop": "maps"}),
    "link ttl_security": (_edit('target = "198.18.11.2"', 'target = "198.18.11.2"\nttl_security = true'),
                          {"links.1.ttl_security": "maps"}),
    "ingress": (_edit('ingress = "int"', 'ingress = "int2"'), {"steer.ingress": "restart"}),
    "interval": (_table("heartbeat", "interval_us = 500"), {"heartbeat.interval_us": "restart"}),
    "multiplier": (_table("heartbeat", "multiplier = 4"), {"heartbeat.multiplier": "restart"}),
    "holddown": (_table("heartbeat", "holddown_ms = 5000"), {"heartbeat.holddown_ms": "core"}),
    "key file": (_table("heartbeat", 'key_file = "/etc/twinpath/keys"'), {"heartbeat.key_file": "maps"}),
    "sender priority": (_table("heartbeat", "sender_priority = 50"), {"heartbeat.sender_priority": "core"}),
    "class added": (BASE + CLASS_2, {"classes.1": "restart"}),
    "class renamed": (_edit('name = "orders"', 'name = "bulk"', _edit('class = "orders"', 'class = "bulk"')),
                      {"classes.0.name": "restart", "rules.0.class": "maps"}),
    "class links": (_edit('["A", "B"]', '["B", "A"]'), {"classes.0.links": "maps"}),
    "class policy": (_edit('["A", "B"]', '["A", "B"]\npolicy = "lowest-latency"\nmin_dwell_ms = 50'),
                     {"classes.0.policy": "core", "classes.0.min_dwell_ms": "core"}),
    "rule ports": (_edit('"9000-9099"', '"9000-9199"'), {"rules.0.ports": "maps"}),
    "rule added": (BASE + RULE_2, {"rules.1": "maps"}),
    "rule removed": (BASE, {"rules.1": "maps"}, BASE + RULE_2),
    "lines": (_table("arbitration", 'lines = ["B", "A"]'), {"arbitration.lines": "restart"}),
    "grace, silence, behind": (_table("arbitration", "grace_ms = 5\nsilence_ms = 80\nbehind_seqs = 10"),
                               {"arbitration.grace_ms": "core", "arbitration.silence_ms": "core",
                                "arbitration.behind_seqs": "core"}),
    "dedup": (_table("arbitration", "heartbeat_dedup_ms = 10"), {"arbitration.heartbeat_dedup_ms": "programs"}),
    "feed appended": (BASE + FEED_2, {"feeds.1": "maps"}),
    "feed removed": (BASE, {"feeds.1": "restart"}, BASE + FEED_2),
    "feed port": (_edit("26400", "26401"), {"feeds.0.port": "restart"}),
    "feeds reordered": (_edit("[[feeds]]", FEED_2 + "\n[[feeds]]"),
                        {f"feeds.{i}.{k}": "restart" for i in (0, 1) for k in ("name", "protocol", "dst", "port")},
                        BASE + FEED_2),
    "first feed": (BASE, {"feeds.0": "restart"}, NO_FEEDS),
    "detection": (_table("detection", "confirm = 6\nquorum = 3"), {"detection.confirm": "core",
                                                                     "detection.quorum": "core"}),
    "damping": (_table("damping", "enabled = false"), {"damping.enabled": "core"}),
    "prediction": (_table("prediction", "enabled = true"), {"prediction.enabled": "core"}),
    "model": (BASE + MODEL, {"prediction.enabled": "core", "prediction.threshold": "core", "prediction.model": "core"}),
    "model coefficients": (BASE + MODEL.replace("intercept = -3.0", "intercept = -2.0"),
                           {"prediction.model.intercept": "core"}, BASE + MODEL),
    "control socket": (_table("control", 'socket = "/run/tp.sock"'), {"control.socket": "restart"}),
    "metrics port": (_table("metrics", "port = 9465"), {"metrics.port": "restart"}),
    "pin dir": (_table("state", 'pin_dir = "/sys/fs/bpf/tp"'), {"state.pin_dir": "restart"}),
    "on stop": (_table("state", 'on_stop = "detach"'), {"state.on_stop": "core"}),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_each_change_is_applied_the_way_its_rule_says(case):
    new, expected, *old = case
    p = _plan(new, *old)
    assert _hows(p) == expected
    assert p.live == ("restart" not in expected.values())
    assert len(p.refused) == list(expected.values()).count("restart")
    assert not p.empty


def test_arbitration_without_feeds_changes_only_what_the_next_start_uses():
    p = _plan(_table("arbitration", 'lines = ["B", "A"]\nheartbeat_dedup_ms = 10', NO_FEEDS), NO_FEEDS)
    assert _hows(p) == {"arbitration.lines": "core", "arbitration.heartbeat_dedup_ms": "core"} and p.live
    assert "without feeds" in p.changes[0].reason


def test_the_effective_prediction_threshold_is_compared():
    # Both dump threshold = 0.9 (the default); in effect it is 0.9, then the model's 0.8.
    set_explicitly = BASE + MODEL.replace("enabled = true", "enabled = true\nthreshold = 0.9")
    p = _plan(BASE + MODEL, set_explicitly)
    assert [(c.path, c.old, c.new, c.how) for c in p.changes] == [("prediction.threshold", 0.9, 0.8, "core")]


def test_a_key_without_a_rule_is_refused_not_applied(monkeypatch):
    old, new = parse(BASE), parse(BASE)
    dump = reload._dump

    def with_new_key(cfg):
        raw = dump(cfg)
        raw["steer"]["offload"] = {"mtu": 9000 if cfg is new else 1500, "gro": True}  # a new table in both
        if cfg is new:
            raw["heartbeat"]["colour"] = "blue"
        return raw

    monkeypatch.setattr(reload, "_dump", with_new_key)
    p = reload.plan(old, new)
    assert [(c.path, c.how, c.reason) for c in p.changes] == [
        ("heartbeat.colour", "restart", reload.NO_RULE), ("steer.offload.mtu", "restart", reload.NO_RULE)]
    assert not p.live
    assert p.refused[0] == ("heartbeat.colour: added blue: no live rule for this key; "
                            "restart the daemon (fail static keeps forwarding meanwhile)")


def _leaves(value, path=""):
    """Every key path of a dumped configuration, and every list item's own path."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        for i, v in enumerate(value):
            yield f"{path}.{i}"
            yield from _leaves(v, f"{path}.{i}")
    else:
        yield path


def test_every_key_of_todays_configuration_has_a_rule():
    """A key added to the configuration fails this until it gets a rule in
    appliance.core.reload (until then a reload refuses to apply it live)."""
    cfg = parse(BASE + RULE_2 + FEED_2 + MODEL)
    paths = list(_leaves(reload._dump(cfg)))
    assert {"prediction.model.coef", "feeds.1.port", "rules.1", "links.0.nexthop", "heartbeat.key_file"} <= set(paths)
    assert [p for p in paths if reload._rule(p, "old") is None] == []
    assert [p for p in paths if reload._rule(p, None) is None] == []


def test_summary_names_path_item_old_and_new_values_and_how():
    p = _plan(_table("detection", "confirm = 6", _edit('["A", "B"]', '["B", "A"]')))
    assert p.summary().splitlines() == [
        "classes.0.links (class orders): changed [A, B] -> [B, A] [maps: the class's map entry is rewritten and "
        "the core decides with the new links]",
        "detection.confirm: changed 4 -> 6 [core: gray-failure detection is the decision core's]"]


def test_summary_shows_an_added_item_as_the_file_writes_it():
    line = _plan(BASE + FEED_2).summary()
    assert line.startswith("feeds.1 (feed mdp): added {name = mdp, protocol = mdp3, dst = 224.0.31.1, port = 14310} "
                           "[maps: ")


def test_refused_names_the_key_and_item_the_change_and_the_restart():
    p = _plan(_edit('dev = "lnkB"', 'dev = "lnkC"', _table("heartbeat", "holddown_ms = 10")))
    assert _hows(p) == {"heartbeat.holddown_ms": "core", "links.1.dev": "restart"} and not p.live
    assert p.refused == [
        "links.1.dev (link B): changed lnkB -> lnkC: a link's device cannot change live (its programs and probe "
        "socket are bound to it); restart the daemon (fail static keeps forwarding meanwhile)"]


def test_a_renamed_item_is_named_as_it_runs_now():
    p = _plan(_edit('name = "orders"', 'name = "bulk"', _edit('class = "orders"', 'class = "bulk"')))
    assert p.refused[0].startswith("classes.0.name (class orders): changed orders -> bulk: class")
    assert "restart the daemon" in p.refused[0]


def test_a_plan_is_immutable():
    p = _plan(BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.refused = ["x"]
