"""The links as the daemon keeps them, and its decisions on them.

- carrier and next hop: what netlink says, kept in the data path's tp_links
  (a next hop that becomes unresolved keeps its last MAC: fail static);
- a reflex failover the data path made: reported with its detection time
  (from carrier loss when that was the cause, else the silence it saw);
- failback after the hold-down (appliance.core.policy);
- readiness: steering attaches once every link has answered, or after
  ready_timeout_ns (appliance.edge.dataplane.Gateway.attach_steer says why).

Handlers return (event, fields, effect) for appliance.core.decision.
"""
from __future__ import annotations

from dataclasses import dataclass

from appliance.core import policy


@dataclass(frozen=True)
class LinkParams:
    names: list[str]
    gateways: list[str]           # each link's next hop address
    class_names: list[str]
    class_links: list[list[int]]  # each class's links, most preferred first
    dead_ns: int
    holddown_ns: int
    ready_timeout_ns: int



class LinkCore:
    def __init__(self, p: LinkParams, carrier: list[bool], nexthop: list[str | None], started_ns: int):
        self.p = p
        self.carriers = list(carrier)
        self.nexthops = list(nexthop)
        self.carrier_lost_ns: dict[int, int] = {}
        self.ready_by_ns = started_ns + p.ready_timeout_ns
        self.ready = False

    def _link_effect(self, link: int) -> tuple:
        return ("link", link, self.carriers[link], self.nexthops[link])

    def carrier(self, ts_ns: int, link: int, up: bool) -> list[tuple]:
        if up == self.carriers[link]:
            return []
        self.carriers[link] = up
        if not up:
            self.carrier_lost_ns[link] = ts_ns
        return [("carrier", {"link": self.p.names[link], "up": up}, self._link_effect(link))]

    def neighbour(self, ts_ns: int, link: int, ip: str, mac: str | None) -> list[tuple]:
        if ip != self.p.gateways[link]:
            return []
        name = self.p.names[link]
        if mac is None:  # keep forwarding to the last known MAC
            return [("nexthop-unresolved", {"link": name, "kept": self.nexthops[link]}, None)] \
                if self.nexthops[link] else []
        if mac == self.nexthops[link]:
            return []
        self.nexthops[link] = mac
        return [("nexthop", {"link": name, "ip": ip, "mac": mac}, self._link_effect(link))]

    def reflex(self, ts_ns: int, class_id: int, from_link: int, to_link: int, cause: str,
               silence_ns: int) -> list[tuple]:
        """The data path moved a class on its own (ebpf/lib/reflex.h)."""
        if cause == "carrier" and from_link in self.carrier_lost_ns:
            detect_ns = ts_ns - self.carrier_lost_ns[from_link]
        else:
            detect_ns = silence_ns
        return [("failover", {"class": self.p.class_names[class_id], "from": self.p.names[from_link],
                              "to": self.p.names[to_link], "cause": cause,
                              "detect_us": round(detect_ns / 1000, 1)}, None)]

    def observations(self, links: list[list[int]]) -> list[policy.LinkObservation]:
        """links: each link's [last_reply_ns, fresh_since_ns] from tp_health."""
        return [policy.LinkObservation(carrier=c, nexthop=m is not None, last_reply_ns=last, fresh_since_ns=since)
                for c, m, (last, since) in zip(self.carriers, self.nexthops, links)]

    def health(self, ts_ns: int, links: list[list[int]], active: list[int]) -> list[tuple]:
        """A reading of tp_health and tp_active: failbacks, then readiness."""
        seen = self.observations(links)
        out = []
        for sw in policy.failbacks(self.p.class_links, active, seen, ts_ns, self.p.dead_ns, self.p.holddown_ns):
            out.append(("failover", {
                "class": self.p.class_names[sw.class_id], "from": self.p.names[sw.from_link],
                "to": self.p.names[sw.to_link], "cause": sw.cause, "detect_us": None,
                "fresh_for_ms": round(sw.fresh_for_ns / 1e6, 1)}, ("active", sw.class_id, sw.to_link)))
        if not self.ready:
            fresh = [policy.fresh_for_ns(o, ts_ns, self.p.dead_ns) >= 0 for o in seen]
            if all(fresh) or ts_ns > self.ready_by_ns:
                self.ready = True
                out.append(("ready", {"fresh": dict(zip(self.p.names, fresh))}, ("steer",)))
        return out
