"""Which gateway of an HA pair owns the virtual address and forwards orders.

Pure: decisions are a function of (state, inputs, clock), with no I/O, so
`twinpath replay` re-makes them from a recorded trace.

Roles:
  active     owns the virtual address (VIP): the data path's gate forwards
             class traffic; confirmed once its own swap of the witness's
             owner key won
  standby    not the owner: the gate drops class traffic, no VIP
  suspended  the owner, but off the LAN or without any order link: it steps
             down at once, without asking the witness, and takes the role
             back only by winning a swap

Evidence:
  - the peer's data path: heartbeats on every peer_link (LAN, crosslink),
    stamped in the kernel like any link's. Its kernel answers them, not its
    daemon, so a daemon restart (fail static) changes nothing here;
  - this gateway's own LAN (lan_links: the peer's LAN path, an anchor on the
    LAN) and order links (the links classes use);
  - the witness (etcd): who owns, with which fencing token (the owner key's
    mod_revision), and the state each daemon published under its lease
    (lan, links, and whether it claims ownership).

Ownership moves only by a compare-and-swap on the owner key at the token
last read, and a gateway becomes active only by winning one itself (a read
that names it owner is not enough: it swaps at that token first), with one
exception. An eligible standby (on the LAN, with an order link) swaps when:
  peer-dead        the peer is dead on every peer_link while the witness is
                   reachable. The one exception: the standby takes the VIP
                   at once and swaps right after, because a peer that
                   answers on no path while this gateway is on the LAN is
                   off the LAN itself (or dead) and cannot be receiving
                   orders; it suspended itself when it lost the LAN. If the
                   swap finds a newer owner, the standby steps down;
  peer-ineligible  the peer published that it lost the LAN or every order
                   link (one witness round trip, then the swap);
  vacant           nobody owns (first start of the pair).
A live owner is never displaced: preempt (after hold_down eligible) and
force-active publish a claim, and the owner hands over by its own swap;
force-standby on the owner hands over likewise. A hand-over whose answer is
lost suspends the owner until a read says who owns.

A won swap makes a gateway active only if it is still eligible; an owner
that is not stays suspended and swaps again once it is. An unconfirmed
peer-dead takeover steps down (peer-back) if the peer is heard again while
the witness cannot confirm it. An active deposed by a peer that is dead on
every path to it (a LAN split between the two with the crosslink cut: each
sees the other dead) makes no peer-dead takeover back at that token until
the peer is heard again or its daemon's lease runs out; otherwise the two
would trade the VIP every dead interval. Without the witness
nothing moves: the active keeps forwarding (fail static), and a standby
cannot tell a dead peer from its own isolation. For ready_ns after a start
only fresh evidence counts (a restarted daemon's probe sender was stopped
and started again): no link is dead, nothing is lost, nothing is published.

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
pair-publish (effect ("publish", state): lan, links, claim), pair-claim,
pair-hold, refused.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

ACTIVE, STANDBY, SUSPENDED = "active", "standby", "suspended"
ROLES = (ACTIVE, STANDBY, SUSPENDED)
# Readings per probe period while a stale link waits only for its last
# unanswered probe (next_deadline).
LAST_PROBE_READS = 8
# After a hand-over it won, the old owner gives the VIP up at once but keeps
# its gate open this long, so the orders the trader sends it until the new
# owner's gratuitous ARP arrives are still forwarded (each order goes one way:
# nothing is duplicated). The effect ("pair", DRAINING, token) says so.
HANDOVER_DRAIN_NS = 500_000_000
DRAINING = "draining"


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
        self.hold_standby = False            # force-standby: no vacant takeover nor claim until force-active
        self.forced_claim = False            # force-active: claim ownership from the owner
        self.published: dict[str, Any] = {"lan": None, "links": None, "claim": None}
        self.eligible_since: int | None = None
        self.announced = False               # the first pair-role, once the witness and the links were read
        # An active that took over on the data path's evidence (peer-dead) before
        # its swap of the owner key succeeded: the token that swap expects.
        self.unconfirmed: int | None = None
        # The token of a peer that took ownership from this node while silent
        # on every path to it (the LAN split between the two, the crosslink
        # cut): no peer-dead takeover back from it until it is heard again,
        # or the two would trade the VIP every dead interval.
        self.ceded_to: int | None = None
        self.draining_until: int | None = None   # a won hand-over's gate closes then

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
                # what the verdicts rest on: how long ago each peer path last
                # answered (None: never) and the probes unanswered since
                "peer_heard_us": {names[l]: self._heard_us(l) for l in self.p.peer_links},
                "peer_unanswered": {names[l]: self.unanswered[l] for l in self.p.peer_links},
                "lan": self._lan(), "links": self._links()}

    def _heard_us(self, link: int) -> float | None:
        last = self.last_reply[link]
        return None if self.read_ns is None or last <= 0 else round((self.read_ns - last) / 1000, 1)

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

    def _peer_state(self) -> dict | None:
        return (self.witness.states or {}).get(self.p.peer)

    def _peer_ineligible(self) -> bool:
        state = self._peer_state()
        return state is not None and not (state.get("lan") and state.get("links"))

    def _peer_fit(self) -> bool:
        """The peer could take over now: alive on a path, and its daemon
        reports the LAN and an order link."""
        state = self._peer_state()
        return (any(self._fresh(l) for l in self.p.peer_links) and state is not None
                and bool(state.get("lan")) and bool(state.get("links")))

    def next_deadline(self, ts_ns: int) -> int | None:
        """When the next reading could change what is fresh or dead: the
        earliest time a fresh link goes stale, a probe period on for a link
        that is stale but not dead yet (LAST_PROBE_READS times a period while
        only its last probe is missing), or the end of the start's grace."""
        times = [last + self.p.dead_ns for last in self.last_reply if last and last + self.p.dead_ns > ts_ns]
        gray = [l for l in range(len(self.last_reply)) if not self._fresh(l) and not self._dead(l)]
        if gray:
            period = self.p.dead_ns // self.p.multiplier
            # A probe a few µs late at a dead link's deadline would otherwise
            # cost the takeover a whole period.
            one_probe_short = not self._settling() and any(self.unanswered[l] == self.p.multiplier - 1 for l in gray)
            times.append(ts_ns + (period // LAST_PROBE_READS if one_probe_short else period))
        if self.started_ns + self.p.ready_ns > ts_ns:
            times.append(self.started_ns + self.p.ready_ns)
        if self.draining_until is not None:
            times.append(self.draining_until)
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
        if role == ACTIVE:
            if self.role == ACTIVE:
                self.hold_standby = False
                return [("refused", {**request, "reason": "already active"})]
            reason = self._cannot_own()
            if reason:
                return [("refused", {**request, "reason": reason})]
            self.hold_standby, self.forced_claim = False, True
            return [("pair-claim", {"cause": "force-active", "note": "published: the owner hands over when it "
                                                                    "reads it; a dead or vacant owner is taken over"}),
                    *self._evaluate(ts_ns)]
        if role == STANDBY:
            self.forced_claim = False
            if self.role != ACTIVE:
                self.hold_standby = True
                return [("pair-hold", {"role": self.role, "note": "no vacant takeover nor claim until "
                                                                 "force-active"}), *self._evaluate(ts_ns)]
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
        if not self._peer_fit():
            return f"the peer {self.p.peer} is not ready to take over (dead, or its daemon reports no LAN " \
                   f"or no order link): handing over would black-hole orders"
        return None

    def _request(self, op: str, cause: str, expected: int, to: str | None = None) -> tuple:
        self.pending = (op, cause)
        fields = {"op": op, "cause": cause, "expected": expected, **({"to": to} if to else {})}
        return ("pair-request", fields, ("witness", op, expected, to))

    def _become(self, role: str, token: int, cause: str, unconfirmed: int | None = None,
                drain_until: int | None = None) -> tuple:
        was, self.role, self.token, self.unconfirmed = self.role, role, token, unconfirmed
        self.draining_until = drain_until
        self.announced = True
        if role == ACTIVE:
            self.forced_claim = False   # claimed and won
        fields = {"role": role, "was": was, "token": token, "cause": cause,
                  "confirmed": role != ACTIVE or unconfirmed is None, "owner": self.witness.owner,
                  "witness": self.witness.reachable, **self.evidence()}
        if drain_until is not None:
            fields["draining_ms"] = HANDOVER_DRAIN_NS // 1_000_000
        return ("pair-role", fields, ("pair", DRAINING if drain_until is not None else role, token))

    def _evaluate(self, ts_ns: int) -> list[tuple]:
        out = []
        if self.draining_until is not None and ts_ns >= self.draining_until:
            self.draining_until = None
            out.append(("pair-drained", {"role": self.role, "token": self.token,
                                         "note": "the gate left open after the hand-over closes"},
                        ("pair", self.role, self.token)))
        out += self._decide(ts_ns)
        if not self.announced and self.witness.reachable and self.read_ns is not None:
            out.append(self._become(self.role, self.token, "adopted" if self.role == ACTIVE else "started"))
        return out

    def _claims(self, ts_ns: int, eligible: bool) -> bool:
        if self.role != STANDBY or self.hold_standby or not eligible:
            return False
        return self.forced_claim or (self.p.preempt and ts_ns - self.eligible_since >= self.p.hold_down_ns)

    def _decide(self, ts_ns: int) -> list[tuple]:
        out: list[tuple] = []
        lan_state, links_state = self._lan(), self._links()
        lan, links = lan_state is True, links_state is True
        eligible = lan and links
        if not eligible:
            self.eligible_since = None
        elif self.eligible_since is None:
            self.eligible_since = ts_ns
        # What is unknown keeps what was published before: only evidence moves it.
        published = {"lan": self.published["lan"] if lan_state is None else lan_state,
                     "links": self.published["links"] if links_state is None else links_state,
                     "claim": self._claims(ts_ns, eligible)}
        if None not in published.values() and published != self.published and not self._settling():
            self.published = published
            out.append(("pair-publish", dict(published), ("publish", published)))

        w, me = self.witness, self.p.node
        owns = w.reachable and w.owner == me
        won = self.answered is not None and owns            # this input answers our own swap, and it won
        if any(self._fresh(l) for l in self.p.peer_links) or (w.reachable and self._peer_state() is None):
            self.ceded_to = None   # heard again, or its daemon's lease ran out: it may be dead after all
        cause = self.answered[1] if self.answered else "witness-owner"
        taken = w.reachable and w.owner is not None and w.owner != me

        if self.role == ACTIVE and self.unconfirmed is not None:
            if lan_state is False or links_state is False:
                out.append(self._become(SUSPENDED, self.token, "lan-lost" if lan_state is False else "links-lost"))
            elif won:
                out.append(self._become(ACTIVE, w.token, cause))   # confirmed: announced again
            elif owns and self.pending and not self.answered:
                pass   # the watch saw our own swap land before its answer came back: the answer decides
            elif w.reachable and (self.answered or w.token != self.unconfirmed or w.owner != self.p.peer):
                out.append(self._become(STANDBY, 0, "witness-owner"))
            elif not w.reachable and any(self._fresh(l) for l in self.p.peer_links):
                # Unconfirmed, and the peer is back: it may win the swap this node could not make.
                out.append(self._become(STANDBY, 0, "peer-back"))
            elif w.reachable and not self.pending:
                out.append(self._request("acquire", "peer-dead", self.unconfirmed))
            return out
        if self.role == ACTIVE:
            if taken:
                if self.read_ns is not None and all(self._dead(l) for l in self.p.peer_links) and \
                        self._peer_state() is not None:
                    self.ceded_to = w.token
                # Our own hand-over, answered or (the watch can deliver it
                # before the answer) still in flight: keep the gate open.
                handing = self.answered or self.pending
                handed = handing is not None and handing[0] == "hand-over"
                out.append(self._become(STANDBY, 0, handing[1] if handed else cause,
                                        drain_until=ts_ns + HANDOVER_DRAIN_NS if handed else None))
            elif self.answered and self.answered[0] == "hand-over" and not w.reachable:
                # The hand-over may have been applied: forward nothing until a read says who owns.
                out.append(self._become(SUSPENDED, self.token, "handing-over"))
            elif lan_state is False or links_state is False:
                out.append(self._become(SUSPENDED, self.token, "lan-lost" if lan_state is False else "links-lost"))
            elif owns and w.token != self.token:
                out.append(self._become(ACTIVE, w.token, "witness-owner"))
            elif self.pending or not w.reachable:
                pass
            elif w.owner is None and eligible:
                # The owner key is gone (the store was wiped or restored): claim it
                # back while forwarding on; a peer that wins the race is obeyed.
                out.append(self._request("acquire", "vacant", 0))
            elif owns and self._peer_fit() and (self._peer_state() or {}).get("claim"):
                out.append(self._request("hand-over", "claimed", self.token, to=self.p.peer))
            return out
        if self.role == SUSPENDED:
            if w.reachable and w.owner != me:
                out.append(self._become(STANDBY, 0, "witness-owner"))
            elif won and eligible:
                out.append(self._become(ACTIVE, w.token, cause))
            elif won:
                self.token = w.token
            elif owns and eligible and not self.pending:
                out.append(self._request("acquire", "resume", w.token))
            return out
        # standby
        if won:
            # Owner now; off the LAN or without order links since it asked: suspended.
            out.append(self._become(ACTIVE if eligible else SUSPENDED, w.token, cause))
            return out
        if not eligible or self.pending or self.read_ns is None or not w.reachable:
            return out
        if owns:
            # Named owner by a read (a hand-over to it, a restart): swap at that token
            # first, so that a read older than another's swap never makes it active.
            out.append(self._request("acquire", "handed-over" if published["claim"] else "resume", w.token))
        elif w.owner is None:
            if not self.hold_standby:
                out.append(self._request("acquire", "vacant", 0))
        elif self._peer_dead() and self.ceded_to != w.token:
            out.append(self._become(ACTIVE, w.token, "peer-dead", unconfirmed=w.token))
            out.append(self._request("acquire", "peer-dead", w.token))
        elif self._peer_ineligible():
            out.append(self._request("acquire", "peer-ineligible", w.token))
        return out

    def status(self) -> dict[str, Any]:
        w = self.witness
        return {"node": self.p.node, "peer": self.p.peer, "role": self.role, "token": self.token,
                "witness": {"reachable": w.reachable, "owner": w.owner, "token": w.token,
                            "peer_state": (w.states or {}).get(self.p.peer)},
                "pending": self.pending, "hold_standby": self.hold_standby,
                "draining": self.draining_until is not None,
                "confirmed": self.role != ACTIVE or self.unconfirmed is None,
                "peer_dead": self._peer_dead(), **self.evidence()}
