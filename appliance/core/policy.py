"""The daemon's decisions as pure functions of (observations, clock): no I/O,
so they replay from a recorded trace and test without root.

The data path already moves a class off a stale link on its own (reflex
failover, ebpf/lib/reflex.h). What is decided here is the way back: a class
returns to a more preferred link only after that link has been fresh without
a break for the hold-down time, so a flapping link cannot pull traffic back
and forth.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinkObservation:
    """One link as the daemon sees it at one instant (netlink + tp_health)."""
    carrier: bool
    nexthop: bool
    last_reply_ns: int
    fresh_since_ns: int


@dataclass(frozen=True)
class Switch:
    class_id: int
    from_link: int
    to_link: int
    cause: str
    fresh_for_ns: int


def fresh_for_ns(link: LinkObservation, now_ns: int, dead_ns: int) -> int:
    """How long the link has been continuously usable, or -1 if it is not now.
    The same test as tp_link_fresh() in the data path."""
    if not (link.carrier and link.nexthop and link.last_reply_ns):
        return -1
    if now_ns - link.last_reply_ns > dead_ns:
        return -1
    return max(0, now_ns - link.fresh_since_ns)


def failbacks(class_links: list[list[int]], active: list[int], links: list[LinkObservation],
              now_ns: int, dead_ns: int, holddown_ns: int) -> list[Switch]:
    """Classes to move to a more preferred link that has held fresh for the
    hold-down. Never moves a class to a less preferred link."""
    out = []
    for class_id, prefs in enumerate(class_links):
        current = active[class_id]
        rank = prefs.index(current) if current in prefs else len(prefs)
        for candidate in prefs[:rank]:
            held = fresh_for_ns(links[candidate], now_ns, dead_ns)
            if held >= holddown_ns:
                out.append(Switch(class_id, current, candidate, "failback", held))
                break
    return out
