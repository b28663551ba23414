"""Traffic classification rules, compiled for the steering program.

The configuration is an ordered list of rules, first match wins. The data path
does one longest-prefix-match lookup on the destination and then scans a few
rules of that prefix (ebpf/lib/classify.h). Both give the same answer because
each configured prefix carries the rules of every configured prefix that
contains it, in config order: any prefix matching a packet contains the
longest one that does.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance import layout

if TYPE_CHECKING:  # config validates capacity with compile_rules: no runtime import back
    from appliance.core.config import Config

PROTOCOLS = {"any": 0, "icmp": 1, "tcp": 6, "udp": 17}


@dataclass(frozen=True)
class CompiledRule:
    proto: int       # 0 = any
    class_id: int
    port_lo: int
    port_hi: int

    def matches(self, proto: int, dport: int) -> bool:
        return (self.proto in (0, proto)) and self.port_lo <= dport <= self.port_hi


def _ordered_rules(cfg: Config) -> list[tuple[ipaddress.IPv4Network, CompiledRule]]:
    return [(r.dst, CompiledRule(PROTOCOLS[r.proto], cfg.class_index(r.class_name), *r.port_range))
            for r in cfg.rules]


def compile_rules(cfg: Config) -> dict[ipaddress.IPv4Network, list[CompiledRule]]:
    """Prefix -> rules to try in order, for the tp_rules LPM trie."""
    ordered = _ordered_rules(cfg)
    table = {}
    for prefix in dict.fromkeys(p for p, _ in ordered):
        rules = [rule for p, rule in ordered if prefix.subnet_of(p)]
        if len(rules) > layout.RULES_PER_PREFIX:
            raise ValueError(f"{len(rules)} rules apply to {prefix}; the data path checks at most "
                             f"{layout.RULES_PER_PREFIX} per prefix (merge port ranges or split prefixes)")
        table[prefix] = rules
    if len(table) > layout.C["TP_MAX_PREFIXES"]:
        raise ValueError(f"{len(table)} distinct prefixes; the data path holds {layout.C['TP_MAX_PREFIXES']}")
    return table


def _l4_port(proto: int, dport: int) -> int:
    return dport if proto in (PROTOCOLS["tcp"], PROTOCOLS["udp"]) else 0


def lookup(table: dict[ipaddress.IPv4Network, list[CompiledRule]],
           dst: ipaddress.IPv4Address, proto: int, dport: int) -> int | None:
    """What the data path does with `table`: LPM, then first matching rule."""
    matching = [p for p in table if dst in p]
    if not matching:
        return None
    longest = max(matching, key=lambda p: p.prefixlen)
    port = _l4_port(proto, dport)
    return next((r.class_id for r in table[longest] if r.matches(proto, port)), None)


def first_match(cfg: Config, dst: ipaddress.IPv4Address, proto: int, dport: int) -> int | None:
    """What the configuration means: the first rule in order that matches."""
    port = _l4_port(proto, dport)
    return next((rule.class_id for p, rule in _ordered_rules(cfg)
                 if dst in p and rule.matches(proto, port)), None)
