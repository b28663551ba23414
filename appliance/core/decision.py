"""What the core decides, and the one entry through which it consumes inputs.

Every input the daemon's core consumes goes through `Core.consume(kind, ts_ns,
fields)`: a netlink carrier or neighbour change, a reflex failover the data
path reported, a reading of the links' health (with each link's probe window
and the probe sender's lateness), an operator's force, release, drain or
undrain, a failure prediction, an arbitration event, a reading of a feed's
lines, a reload's new parameters. The output is a list of `Decision`s: the log line it makes (event,
fields, and as mono_ns the timestamp of the input that caused it) and the
effect the edge applies to the data path, if any.

Nothing here reads a clock, a map or a socket: the same inputs in the same
order give the same decisions, which is what `twinpath replay` relies on
(appliance.edge.trace records the inputs).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from appliance.core.feeds import LINE_NAMES, FeedCore, FeedParams
from appliance.core.links import LinkCore, LinkParams, WakeBounds
from appliance.core.pair import PairCore, PairParams

# Inputs from outside the gateway's own machinery (the operator's control
# socket, a prediction model), with the fields each takes: anything else is
# refused with a decision saying so, never an exception that stops the core.
EXTERNAL_INPUTS = {"force": ("class_name", "link_name"), "release": ("class_name",), "drain": ("link_name",),
                   "undrain": ("link_name",), "predict": ("link", "probability"),
                   "pair-force": ("role",)}

# The pair core's inputs. It shares no state with the link and feed cores, so
# the daemon serializes these under a lock of their own: the pair thread's
# reading of a dead peer never waits behind a link health reading.
PAIR_INPUTS = ("pair-health", "witness", "pair-force")


@dataclass(frozen=True)
class Decision:
    ts_ns: int
    event: str
    fields: dict[str, Any]
    # What the edge does to the data path: ("link", link_id, carrier, mac),
    # ("active", class_id, link_id), ("steer",), ("feed", feed_id, mac), or the
    # pair's ("pair", role, token), ("witness", op, expected, to), ("publish", lan, links).
    effect: tuple | None = field(default=None, compare=False)

    def record(self) -> dict[str, Any]:
        """As the daemon logs it (without the wall-clock 'time')."""
        return {"mono_ns": self.ts_ns, "event": self.event, **self.fields}


@dataclass(frozen=True)
class Start:
    """Everything the core starts from: the configuration it decides with
    and the state the edge found (carrier, next hops, receivers, the time)."""
    links: LinkParams
    feeds: FeedParams
    carrier: list[bool]
    nexthop: list[str | None]
    receivers: list[str | None]
    started_ns: int
    # An HA pair: its parameters, and the role and token the pinned gate had.
    pair: PairParams | None = None
    pair_role: str = "standby"
    pair_token: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"links": self.links.to_json(), "feeds": self.feeds.__dict__, "carrier": self.carrier,
                "nexthop": self.nexthop, "receivers": self.receivers, "started_ns": self.started_ns,
                **({"pair": self.pair.to_json(), "pair_role": self.pair_role, "pair_token": self.pair_token}
                   if self.pair else {})}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Start":
        pair = raw.get("pair")
        return cls(LinkParams.from_json(raw["links"]), FeedParams(**raw["feeds"]), list(raw["carrier"]),
                   list(raw["nexthop"]), list(raw["receivers"]), int(raw["started_ns"]),
                   PairParams.from_json(pair) if pair else None, raw.get("pair_role", "standby"),
                   int(raw.get("pair_token", 0)))


class Core:
    """The link, feed and (for an HA pair) pair cores behind one input entry point."""

    def __init__(self, start: Start):
        self.links = LinkCore(start.links, start.carrier, start.nexthop, start.started_ns)
        self.feeds = FeedCore(start.feeds, start.receivers)
        self.pair = PairCore(start.pair, start.pair_role, start.pair_token, start.started_ns) if start.pair else None
        self._handlers = {
            "carrier": self.links.carrier,
            "neighbour": self.links.neighbour,
            "reflex": self.links.reflex,
            "health": self.links.health,
            "force": self.links.force,
            "release": self.links.release,
            "drain": self.links.drain,
            "undrain": self.links.undrain,
            "predict": self.links.predict,
            "receiver": self.feeds.receiver,
            "arb-event": self.feeds.event,
            "feed-lines": self.feeds.lines,
            "reconfigure": self._reconfigure,
        }
        if self.pair:
            self._handlers.update(zip(PAIR_INPUTS, (self.pair.health, self.pair.witness_read, self.pair.force)))

    def quiet(self, ts_ns: int) -> list[WakeBounds] | None:
        """LinkCore.quiet: the links' wake thresholds while the daemon may
        read them seldom. (A pair reads its own health on its own thread.)"""
        return self.links.quiet(ts_ns)

    def _reconfigure(self, ts_ns: int, links: dict, feeds: dict) -> list[tuple]:
        """A reload: both cores' new parameters, as a recorded input so that
        replay re-makes the decisions after it too."""
        return [*self.links.reconfigure(ts_ns, LinkParams.from_json(links)),
                *self.feeds.reconfigure(ts_ns, FeedParams(**feeds))]

    def consume(self, kind: str, ts_ns: int, fields: dict[str, Any]) -> list[Decision]:
        try:
            handler = self._handlers[kind]
        except KeyError:
            raise ValueError(f"unknown core input {kind!r}") from None
        expected = EXTERNAL_INPUTS.get(kind)
        if expected and sorted(fields) != sorted(expected):
            return [Decision(ts_ns, "refused", {"input": kind, "reason": f"takes {', '.join(expected)}; got "
                                                                         f"{', '.join(sorted(fields)) or 'nothing'}"})]
        decisions = [Decision(ts_ns, *d) for d in handler(ts_ns, **fields)]
        line_links = self.feeds.p.line_links
        if kind == "feed-lines" and line_links:
            for d in decisions:
                if d.event == "line-health":
                    link = line_links[LINE_NAMES.index(d.fields["line"])]
                    self.links.feed_line(link, f"{d.fields['feed']}/{d.fields['line']}", d.fields["status"])
        return decisions


def replay(start: Start, inputs: Iterable[tuple[str, int, dict[str, Any]]]) -> Iterator[Decision]:
    """The decisions a fresh core makes from (kind, ts_ns, fields) inputs."""
    core = Core(start)
    for kind, ts_ns, fields in inputs:
        yield from core.consume(kind, ts_ns, fields)
