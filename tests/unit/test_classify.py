"""The data path's two-step lookup (LPM, then first rule of that prefix) must
mean exactly what the ordered rule list says."""
import ipaddress
import random

import pytest

from appliance.core import classify
from appliance.core.config import parse

HEAD = """
[steer]
ingress = "int"
[[links]]
name = "A"
dev = "lnkA"
target = "198.18.10.2"
"""


def config_with(rules: list[tuple[str, str, str, str | None]], n_classes: int = 3):
    text = HEAD + "".join(f'\n[[classes]]\nname = "c{i}"\nlinks = ["A"]\n' for i in range(n_classes))
    for cls, dst, proto, ports in rules:
        text += f'\n[[rules]]\nclass = "{cls}"\ndst = "{dst}"\nproto = "{proto}"\n'
        if ports:
            text += f'ports = "{ports}"\n'
    return parse(text)


def test_shorter_prefix_listed_first_still_wins_on_longer_prefix():
    # The broad rule comes first in config order, so it wins even for
    # addresses inside the narrower prefix: LPM alone would get this wrong.
    cfg = config_with([("c0", "198.19.0.0/16", "udp", None), ("c1", "198.19.0.0/24", "udp", None)])
    table = classify.compile_rules(cfg)
    dst = ipaddress.IPv4Address("198.19.0.10")
    assert classify.lookup(table, dst, 17, 1) == classify.first_match(cfg, dst, 17, 1) == 0


def test_narrow_exception_before_broad_rule():
    cfg = config_with([("c1", "198.19.0.10/32", "tcp", "9000"), ("c0", "198.19.0.0/16", "any", None)])
    table = classify.compile_rules(cfg)
    assert classify.lookup(table, ipaddress.IPv4Address("198.19.0.10"), 6, 9000) == 1
    assert classify.lookup(table, ipaddress.IPv4Address("198.19.0.10"), 17, 9000) == 0
    assert classify.lookup(table, ipaddress.IPv4Address("198.18.0.1"), 17, 9000) is None


def test_icmp_has_no_port_so_only_portless_rules_match():
    cfg = config_with([("c0", "198.19.0.0/24", "any", "9000-9099"), ("c1", "198.19.0.0/24", "any", None)])
    table = classify.compile_rules(cfg)
    assert classify.lookup(table, ipaddress.IPv4Address("198.19.0.1"), 1, 9000) == 1


@pytest.mark.parametrize("seed", range(20))
def test_compiled_lookup_equals_first_match_on_random_rule_sets(seed):
    rng = random.Random(seed)
    prefixes = ["198.18.0.0/15", "198.19.0.0/16", "198.19.0.0/24", "198.19.0.0/28", "198.19.0.8/29",
                "198.19.1.0/24", "198.18.5.0/24"]
    rules = []
    for _ in range(rng.randint(1, 7)):
        lo = rng.choice([0, 9000, 9050, 9100])
        ports = rng.choice([None, f"{lo}-{lo + rng.choice([0, 49, 99])}"])
        rules.append((f"c{rng.randrange(3)}", rng.choice(prefixes), rng.choice(["any", "udp", "tcp"]), ports))
    cfg = config_with(rules)
    table = classify.compile_rules(cfg)
    for _ in range(300):
        dst = ipaddress.IPv4Address(rng.choice(["198.19.0.", "198.19.1.", "198.18.5."]) + str(rng.randrange(16)))
        proto = rng.choice([1, 6, 17])
        dport = rng.choice([0, 9000, 9049, 9050, 9099, 9100, 9148, 9199, 40000])
        assert classify.lookup(table, dst, proto, dport) == classify.first_match(cfg, dst, proto, dport)
