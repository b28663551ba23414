"""Which gateway of an HA pair owns the virtual address and forwards orders.

Pure: decisions are a function of (state, inputs, clock), with no I/O, so
`twinpath replay` re-makes them from a recorded trace.

Roles:
  active     owns the virtual address (VIP): the data path's gate forwards
             class traffic; confirmed once the witness's owner key names it
  standby    not the owner: the gate drops class traffic, no VIP
  suspended  the owner, but off the LAN (every lan_link dead): it steps down
             at once, without asking the witness, and takes the role back
             only by winning a compare-and-swap at its own token

Evidence:
  - the peer's data path: heartbeats on every peer_link (LAN, crosslink),
    stamped in the kernel like any link's. Its kernel answers them, not its
    daemon, so a daemon restart (fail static) changes nothing here;
  - this gateway's own LAN (lan_links: the peer's LAN path, an anchor on the
    LAN) and order links (the links classes use);
  - the witness (etcd): who owns, with which fencing token (the owner key's
    mod_revision), and the state each daemon published under its lease.

Ownership moves only by a compare-and-swap on the owner key at the token
last read (the witness's fencing). A standby that is eligible (on the LAN,
with an order link) moves it when:
  peer-dead        the peer is dead on every peer_link. This one does not
                   wait for the witness: a peer that answers on no path
                   while this gateway is on the LAN is off the LAN itself
                   (or dead), so it cannot be receiving orders, and it
                   suspended itself when it lost the LAN. The standby takes
                   the VIP at once and then swaps the owner key; if the swap
                   finds a newer owner it steps down, and a peer coming back
                   can resume only by winning the same swap;
  peer-ineligible  the peer published that it lost the LAN or every order
                   link (one witness round trip, then the swap);
  vacant           nobody owns (first start of the pair);
  force-active     the operator asked;
  preempt          configured, and eligible for hold_down while the peer owns.
Every cause but peer-dead needs the witness: without it only the data
path's evidence moves the VIP. The active keeps forwarding while the
witness is away (fail static) and leaves the role as soon as the witness
names another owner. For ready_ns after a start only fresh evidence counts
(a restarted daemon's probe sender was stopped and started again): no link
is dead, nothing is lost, nothing is published.

A link is fresh while its last accepted reply is younger than the dead
interval, and dead only once it is older AND `multiplier` probes went out
unanswered since (the heartbeat map counts them), as the data path's reflex
judges: a probe sender held off the CPU on a loaded host makes every link
old at once without any of them failing, and must not make this gateway
think itself off the LAN or its peer dead. In between a link is unknown,
and nothing is decided on it.

Inputs: pair-health (each link's last accepted reply and unanswered probes,
from the heartbeat map), witness (a read of etcd, or that it is unreachable), pair-force (the
operator). Decisions: pair-role (effect ("pair", role, token): the gate, the
VIP and a gratuitous ARP), pair-request (effect ("witness", op, expected,
to): a compare-and-swap the edge makes and answers with a witness input),
pair-publish (effect ("publish", lan, links)), refused.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

ACTIVE, STANDBY, SUSPENDED = "active", "standby", "suspended"
ROLES = (ACTIVE, STANDBY, SUSPENDED)


@dataclass(frozen=True)
class PairParams:
    node: str
    peer: str
    link_names: list[str]
    peer_links: list[int]
    lan_links: list[int]
    order_links: list[int]
    dead_ns: int
    multiplier: int
    ready_ns: int            # the start's grace: a link not fresh counts as dead only this long after the start
    preempt: bool
    hold_down_ns: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "PairParams":
        return cls(**raw)


@dataclass(frozen=True)
class WitnessView:
    reachable: bool
    owner: str | None = None
    token: int = 0
    states: dict[str, dict] | None = None


class PairCore:
    def __init__(self, p: PairParams, role: str, token: int, started_ns: int):
        """role and token: what the pinned gate says (a restart adopts it)."""
        if role not in ROLES:
            raise ValueError(f"unknown pair role {role!r}")
        self.p = p
        self.role, self.token = role, token
        self.started_ns = started_ns
        self.last_reply = [0] * len(p.link_names)
        self.unanswered = [0] * len(p.link_names)
        self.read_ns: int | None = None      # the last pair-health reading's time
        self.witness = WitnessView(reachable=False)
        self.pending: tuple[str, str] | None = None   # (op, cause) of a request the edge has not answered yet
        self.answered: tuple[str, str] | None = None  # the request the witness input being decided answers
        self.hold_standby = False            # force-standby: no vacant or preempt takeover until force-active
        self.published: tuple[bool | None, bool | None] = (None, None)
        self.eligible_since: int | None = None
        self.announced = False               # the first pair-role, once the witness and the links were read
        # An active that took over on the data path's evidence (peer-dead) before
        # its swap of the owner key succeeded: the token that swap expects.
        self.unconfirmed: int | None = None

    # -- evidence: as of the last pair-health reading (read_ns), whatever
    # input is being decided on, so a witness input between two readings
    # never sees a link stale that the next reading would show fresh.
    def _fresh(self, link: int) -> bool:
        last = self.last_reply[link]
        return self.read_ns is not None and last > 0 and self.read_ns - last < self.p.dead_ns

    def _settling(self) -> bool:
        """Within the start's grace: a restarted daemon's probe sender was
        stopped and started again, so its links' last replies may be old
        without anything being wrong. Only fresh evidence counts then."""
        return self.read_ns is None or self.read_ns - self.started_ns < self.p.ready_ns

    def _dead(self, link: int) -> bool:
        return not self._fresh(link) and self.unanswered[link] >= self.p.multiplier and not self._settling()

    def _state(self, links: list[int], witnesses: list[int]) -> bool | None:
        """True: one of links is fresh; False: all are dead while one of
        `witnesses` (other links) is fresh; None: unknown. Every link dead at
        once is this host not taking replies in time (its softirq starved
        on a saturated host), or a host cut off from everything, where
        stepping down would gain nothing: the peer sees it dead and takes
        over."""
        if any(self._fresh(l) for l in links):
            return True
        if all(self._dead(l) for l in links) and any(self._fresh(l) for l in witnesses):
            return False
        return None

    def evidence(self) -> dict[str, Any]:
        names = self.p.link_names
        return {"peer_paths": {names[l]: "fresh" if self._fresh(l) else "dead" if self._dead(l) else "unknown"
                               for l in self.p.peer_links},
                "lan": self._lan(), "links": self._links()}

    def _lan(self) -> bool | None:
        return self._state(self.p.lan_links, self.p.order_links)

    def _links(self) -> bool | None:
        return self._state(self.p.order_links, self.p.lan_links)

    def _peer_dead(self) -> bool:
        others = [l for l in self.p.lan_links if l not in self.p.peer_links]
        return self._state(self.p.peer_links, others) is False

    def _lan_ok(self) -> bool:
        return self._lan() is True

    def _links_ok(self) -> bool:
        return self._links() is True

    def _peer_ineligible(self) -> bool:
        state = (self.witness.states or {}).get(self.p.peer)
        return state is not None and not (state.get("lan") and state.get("links"))

    def next_deadline(self, ts_ns: int) -> int | None:
        """When the next reading could change what is fresh or dead: the
        earliest time a fresh link goes stale, a probe period on for a link
        that is stale but not dead yet, or the end of the start's grace."""
        times = [last + self.p.dead_ns for last in self.last_reply if last and last + self.p.dead_ns > ts_ns]
        if any(not self._fresh(l) and not self._dead(l) for l in range(len(self.last_reply))):
            times.append(ts_ns + self.p.dead_ns // self.p.multiplier)
        if self.started_ns + self.p.ready_ns > ts_ns:
            times.append(self.started_ns + self.p.ready_ns)
        return min(times) if times else None

    # -- inputs -----------------------------------------------------------
    def health(self, ts_ns: int, links: list[list[int]]) -> list[tuple]:
        """links: [last_reply_ns, unanswered] of every link."""
        if len(links) != len(self.last_reply):
            raise ValueError(f"pair-health has {len(links)} links, the pair {len(self.last_reply)}")
        self.last_reply = [int(last) for last, _ in links]
        self.unanswered = [int(n) for _, n in links]
        self.read_ns = ts_ns
        return self._evaluate(ts_ns)

    def witness_read(self, ts_ns: int, reachable: bool, owner: str | None = None, token: int = 0,
                     states: dict[str, dict] | None = None, answer: bool = False) -> list[tuple]:
        """answer: this reading is the outcome of the pending request (the
        edge's read after it, or that the witness could not be reached);
        otherwise it is a watch's, and the request stays pending."""
        if answer:
            self.answered, self.pending = self.pending, None
        if reachable:
            self.witness = WitnessView(True, owner, int(token), states)
        else:   # what it said last still stands as the best knowledge, but nothing new is decided on it
            self.witness = WitnessView(False, self.witness.owner, self.witness.token, self.witness.states)
        try:
            return self._evaluate(ts_ns)
        finally:
            self.answered = None

    def force(self, ts_ns: int, role: str) -> list[tuple]:
        request = {"input": "pair-force", "role": role}
        w = self.witness
        if role == ACTIVE:
            if self.role == ACTIVE:
                self.hold_standby = False
                return [("refused", {**request, "reason": "already active"})]
            reason = self._cannot_own()
            if reason:
                return [("refused", {**request, "reason": reason})]
            self.hold_standby = False
            return [self._request("acquire", "force-active", w.token)]
        if role == STANDBY:
            if self.role != ACTIVE:
                self.hold_standby = True
                return [("pair-hold", {"role": self.role, "note": "no vacant or preempt takeover until "
                                                                 "force-active"})]
            reason = self._peer_cannot_own()
            if reason:
                return [("refused", {**request, "reason": reason})]
            self.hold_standby = True
            return [self._request("hand-over", "force-standby", self.token, to=self.p.peer)]
        return [("refused", {**request, "reason": f"role must be {ACTIVE} or {STANDBY}"})]

    # -- the decision -----------------------------------------------------
    def _cannot_own(self) -> str | None:
        if not self.witness.reachable:
            return "the witness is unreachable: ownership moves only through it"
        if self.pending:
            return f"a {self.pending[0]} ({self.pending[1]}) is already in flight"
        if not self._lan_ok():
            return "this gateway is off the LAN (no lan_link fresh)"
        if not self._links_ok():
            return "this gateway has no fresh order link"
        return None

    def _peer_cannot_own(self) -> str | None:
        if not self.witness.reachable:
            return "the witness is unreachable: ownership moves only through it"
        if self.pending:
            return f"a {self.pending[0]} ({self.pending[1]}) is already in flight"
        state = (self.witness.states or {}).get(self.p.peer)
        if self._peer_dead() or not state or not (state.get("lan") and state.get("links")):
            return f"the peer {self.p.peer} is not ready to take over (dead, or its daemon reports no LAN " \
                   f"or no order link): handing over would black-hole orders"
        return None

    def _request(self, op: str, cause: str, expected: int, to: str | None = None) -> tuple:
        self.pending = (op, cause)
        fields = {"op": op, "cause": cause, "expected": expected, **({"to": to} if to else {})}
        return ("pair-request", fields, ("witness", op, expected, to))

    def _become(self, role: str, token: int, cause: str, unconfirmed: int | None = None) -> tuple:
        was, self.role, self.token, self.unconfirmed = self.role, role, token, unconfirmed
        self.announced = True
        return ("pair-role", {"role": role, "was": was, "token": token, "cause": cause,
                              "confirmed": role != ACTIVE or unconfirmed is None, "owner": self.witness.owner,
                              "witness": self.witness.reachable, **self.evidence()}, ("pair", role, token))

    def _evaluate(self, ts_ns: int) -> list[tuple]:
        out = self._decide(ts_ns)
        if not self.announced and self.witness.reachable and self.read_ns is not None:
            out.append(self._become(self.role, self.token, "adopted" if self.role == ACTIVE else "started"))
        return out

    def _decide(self, ts_ns: int) -> list[tuple]:
        out: list[tuple] = []
        # What is unknown keeps what was published before: only evidence moves it.
        lan_state, links_state = self._lan(), self._links()
        published = (self.published[0] if lan_state is None else lan_state,
                     self.published[1] if links_state is None else links_state)
        if None not in published and published != self.published and not self._settling():
            self.published = published
            out.append(("pair-publish", {"lan": published[0], "links": published[1]},
                        ("publish", published[0], published[1])))
        lan, links = lan_state is True, links_state is True
        eligible = lan and links
        if not eligible:
            self.eligible_since = None
        elif self.eligible_since is None:
            self.eligible_since = ts_ns
        w, me = self.witness, self.p.node
        owns = w.reachable and w.owner == me
        cause = self.answered[1] if self.answered else "witness-owner"

        if self.role == ACTIVE and self.unconfirmed is not None:
            if lan_state is False:
                out.append(self._become(SUSPENDED, self.token, "lan-lost"))
            elif owns:
                out.append(self._become(ACTIVE, w.token, cause))   # confirmed: announced again
            elif w.reachable and (self.answered or w.token != self.unconfirmed):
                out.append(self._become(STANDBY, 0, "witness-owner"))
            elif w.reachable and not self.pending:
                out.append(self._request("acquire", "peer-dead", self.unconfirmed))
            return out
        if self.role == ACTIVE:
            if w.reachable and w.owner is None:
                # The owner key is gone (the store was wiped or restored): claim it
                # back while forwarding on; a peer that wins the race is obeyed.
                if not self.pending:
                    out.append(self._request("acquire", "vacant", 0))
            elif w.reachable and w.owner != me:
                out.append(self._become(STANDBY, 0, cause))
            elif lan_state is False:
                out.append(self._become(SUSPENDED, self.token, "lan-lost"))
            elif owns and w.token != self.token:
                out.append(self._become(ACTIVE, w.token, "witness-owner"))
            return out
        if self.role == SUSPENDED:
            if w.reachable and w.owner != me:
                out.append(self._become(STANDBY, 0, "witness-owner"))
            elif owns and self.answered and self.answered[1] == "lan-back":
                out.append(self._become(ACTIVE, w.token, "lan-back"))
            elif owns and lan and not self.pending:
                # A swap at its own token, not a read: a standby that took over on
                # the data path's evidence meanwhile swaps at the same token, and
                # exactly one of the two wins.
                out.append(self._request("acquire", "lan-back", w.token))
            return out
        # standby
        if owns:
            if lan:
                out.append(self._become(ACTIVE, w.token, cause))
            return out
        if not eligible or self.pending or self.read_ns is None:
            return out
        if self._peer_dead() and w.owner is not None:
            out.append(self._become(ACTIVE, w.token, "peer-dead", unconfirmed=w.token))
            if w.reachable:
                out.append(self._request("acquire", "peer-dead", w.token))
            return out
        if not w.reachable:
            return out
        takeover = None
        if w.owner is None:
            takeover = None if self.hold_standby else "vacant"
        elif self._peer_ineligible():
            takeover = "peer-ineligible"
        elif self.p.preempt and not self.hold_standby and ts_ns - self.eligible_since >= self.p.hold_down_ns:
            takeover = "preempt"
        if takeover:
            out.append(self._request("acquire", takeover, w.token))
        return out

    def status(self) -> dict[str, Any]:
        w = self.witness
        return {"node": self.p.node, "peer": self.p.peer, "role": self.role, "token": self.token,
                "witness": {"reachable": w.reachable, "owner": w.owner, "token": w.token,
                            "peer_state": (w.states or {}).get(self.p.peer)},
                "pending": self.pending, "hold_standby": self.hold_standby,
                "confirmed": self.role != ACTIVE or self.unconfirmed is None,
                "peer_dead": self._peer_dead(), **self.evidence()}
