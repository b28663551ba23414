"""The links as the daemon keeps them, and its decisions on them.

- carrier and next hop: what netlink says, kept in the data path's tp_links
  (a next hop that becomes unresolved keeps its last MAC: fail static);
- a reflex failover the data path made: reported with its detection time
  (from carrier loss when that was the cause, else the silence it saw);
- gray failures, from each health reading's per-link windows
  (appliance.core.detect), held while the host itself stalls;
- flap damping (appliance.core.damping): carrier loss, a reflex failover
  away from a link and a gray declaration each count as one flap of a link
  that was usable;
- where each class runs (appliance.core.policy: a class stays on a gray
  link that no healthy standby relieves, logged once as "gray-held"),
  including the operator's force, drain and release and the prediction
  hook: with prediction enabled and a model, each link's probability of
  failing comes from its own windows (appliance.core.predict); an outside
  "predict" input stands beside it, and the higher of the two counts;
- readiness: steering attaches once every link has answered, or after
  ready_timeout_ns (appliance.edge.dataplane.Gateway.attach_steer says why).

Handlers return (event, fields, effect) for appliance.core.decision. Bad
operator input is answered with a "refused" decision saying why, never an
exception.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple

from appliance.core import policy
from appliance.core.damping import Damping, DampingParams, flap, merit, reuse_ns, settle
from appliance.core.detect import DetectParams, LinkDetector, StallWatch, Window
from appliance.core.predict import LinkPredictor, Model


DEFAULT_POLICY = policy.ClassPolicy()   # frozen: one serves every class without a policy of its own


@dataclass(frozen=True)
class LinkParams:
    names: list[str]
    gateways: list[str]           # each link's next hop address
    class_names: list[str]
    class_links: list[list[int]]  # each class's links, most preferred first
    dead_ns: int
    holddown_ns: int
    ready_timeout_ns: int
    class_policies: list[policy.ClassPolicy] = field(default_factory=list)  # per class; none: all the default
    detection: DetectParams = DetectParams()
    damping: DampingParams = DampingParams()
    prediction: policy.Prediction = policy.Prediction()
    model: Model | None = None    # the failure-prediction model, recorded with the start so replay uses it

    def policy_of(self, class_id: int) -> policy.ClassPolicy:
        return self.class_policies[class_id] if self.class_policies else DEFAULT_POLICY

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "LinkParams":
        """A trace recorded before a setting existed replays with its default."""
        raw = dict(raw)
        if "class_policies" in raw:
            raw["class_policies"] = [policy.ClassPolicy(**c) for c in raw["class_policies"]]
        for key, kind in (("detection", DetectParams), ("damping", DampingParams), ("prediction", policy.Prediction)):
            if key in raw:
                raw[key] = kind(**raw[key])
        if raw.get("model") is not None:
            raw["model"] = Model.from_json(raw["model"])
        return cls(**raw)


def _number(value: Any, kind: type | tuple[type, ...]) -> bool:
    """isinstance, but a JSON boolean is not a number."""
    return isinstance(value, kind) and not isinstance(value, bool)


class WakeBounds(NamedTuple):
    """A quiet link's bounds, as tp_wake holds them (ebpf/lib/layout.h):
    beyond any, replies wake the daemon. jitter_ns seeds the kernel's
    smoothed RTT change, which it then keeps: not a bound."""
    rtt_above_ns: int
    rtt_below_ns: int
    change_ns: int
    jitter_ns: int = 0

    def bounds(self) -> tuple[int, int, int]:
        return self.rtt_above_ns, self.rtt_below_ns, self.change_ns


# A link silent this long is down, not blinking: reading it every tick
# teaches the detectors nothing more, and nothing about it can change before
# it answers again. A shorter silence keeps the tick, so a link that blinks
# is judged reading by reading as before.
DOWN_QUIET_NS = 1_000_000_000
# Such a link wakes the daemon at its first reply after the silence: having
# lost two probes or more (multiplier >= 2), at once, by the kernel's loss
# rule. No RTT or change bound: replies that come while the daemon holds
# the link unusable for another reason (no next hop yet) wake nobody, the
# quiet reading sees them.
NO_BOUND = (1 << 63) - 1
DEAD_WAKE = WakeBounds(rtt_above_ns=NO_BOUND, rtt_below_ns=0, change_ns=NO_BOUND)


class LinkCore:
    def __init__(self, p: LinkParams, carrier: list[bool], nexthop: list[str | None], started_ns: int):
        self.p = p
        self.carriers = list(carrier)
        self.nexthops = list(nexthop)
        self.carrier_lost_ns: dict[int, int] = {}
        self.ready_by_ns = started_ns + p.ready_timeout_ns
        self.ready = False
        self.detectors = [LinkDetector(p.detection) for _ in p.names]
        self.stall = StallWatch(p.detection.stall_ns)
        self.damping = [Damping() for _ in p.names]
        # Failed since start or since its last flap: failing again is no new flap.
        self.failed = [True] * len(p.names)
        self.drained = [False] * len(p.names)
        self.predicted = [0.0] * len(p.names)   # from the "predict" input
        self.predictors = [LinkPredictor(p.model) for _ in p.names] if p.prediction.enabled and p.model else []
        self.classes = [policy.ClassState() for _ in p.class_names]
        self.seen: list[policy.LinkObservation] | None = None   # the last health reading
        self.seen_ns = 0                                            # ... and when it was taken

    def _link_effect(self, link: int) -> tuple:
        return ("link", link, self.carriers[link], self.nexthops[link])

    def carrier(self, ts_ns: int, link: int, up: bool) -> list[tuple]:
        if up == self.carriers[link]:
            return []
        self.carriers[link] = up
        out = [("carrier", {"link": self.p.names[link], "up": up}, self._link_effect(link))]
        if not up:
            self.carrier_lost_ns[link] = ts_ns
            out += self._flap(ts_ns, link)
        return out

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
        self.classes[class_id] = replace(self.classes[class_id], link=to_link, moved_ns=ts_ns)
        return [("failover", {"class": self.p.class_names[class_id], "from": self.p.names[from_link],
                              "to": self.p.names[to_link], "cause": cause,
                              "detect_us": round(detect_ns / 1000, 1),
                              "evidence": self._evidence(ts_ns, from_link, to_link)}, None),
                *self._flap(ts_ns, from_link)]

    def observations(self, links: list[list[int]]) -> list[policy.LinkObservation]:
        """links: each link's [last_reply_ns, fresh_since_ns] from tp_health."""
        return [policy.LinkObservation(c, m is not None, last, since)
                for c, m, (last, since) in zip(self.carriers, self.nexthops, links)]

    def health(self, ts_ns: int, links: list[list[int]], active: list[int],
               windows: list[list[int] | None] | None = None, sender_late_ns: int = 0) -> list[tuple]:
        """A reading of tp_health and tp_active, with (from traces that have
        them) each link's window of probes since the last reading and the
        probe sender's longest lateness since then: gray verdicts, damping,
        each class's policy, then readiness."""
        self.seen, self.seen_ns = self.observations(links), ts_ns
        out = []
        if windows is not None:
            out += self._detect(ts_ns, windows, sender_late_ns)
        for link in range(len(self.p.names)):
            if self.failed[link] and self._fresh_for_ns(link) >= 0 and not self.detectors[link].gray:
                self.failed[link] = False
            if self.damping[link].suppressed:   # only a suppressed link has anything to settle
                out += self._settle(ts_ns, link)
        views = self.views(ts_ns)
        for class_id, current in enumerate(active):
            out += self._decide(ts_ns, class_id, current, views)
        if not self.ready:
            fresh = [self._fresh_for_ns(link) >= 0 for link in range(len(self.p.names))]
            if all(fresh) or ts_ns > self.ready_by_ns:
                self.ready = True
                out.append(("ready", {"fresh": dict(zip(self.p.names, fresh))}, ("steer",)))
        return out

    def quiet(self, ts_ns: int) -> list[WakeBounds] | None:
        """Each link's bounds beyond which replies should wake the daemon,
        while no decision here waits on time or on a run of readings: ready,
        no stall held, no prediction on, every link undamped and either
        quiet (LinkDetector.quiet_wake) or down (not fresh, and silent for
        DOWN_QUIET_NS: DEAD_WAKE), every class settled (policy.settled,
        whose bounds tighten the links'). The daemon may then read seldom,
        woken by the kernel when replies go beyond a bound (ebpf/lib/wake.h).
        None otherwise: it reads every tick."""
        if not self.ready or self.p.prediction.enabled or any(self.predicted) or self.stall.held(ts_ns):
            return None
        wakes = []
        for link, detector in enumerate(self.detectors):
            if self.damping[link].suppressed:
                return None
            if self._fresh_for_ns(link) < 0:
                if self.seen_ns - self.seen[link].last_reply_ns < DOWN_QUIET_NS:
                    return None
                wakes.append(DEAD_WAKE)
                continue
            wake = detector.quiet_wake()
            if wake is None:
                return None
            rtt_above, change, jitter = wake
            wakes.append(WakeBounds(rtt_above, 0, change, jitter))
        views = self.views(ts_ns)
        for class_id, state in enumerate(self.classes):
            bounds = None if state.link is None else policy.settled(
                self.p.class_links[class_id], state.link, views, self.p.policy_of(class_id), state,
                self.p.holddown_ns)
            if bounds is None:
                return None
            for link, above, below in bounds:
                w = wakes[link]
                wakes[link] = w._replace(rtt_above_ns=w.rtt_above_ns if above is None else min(w.rtt_above_ns, above),
                                         rtt_below_ns=max(w.rtt_below_ns, below))
        return wakes

    def feed_line(self, link: int, line: str, status: str) -> None:
        """A/B arbitration's health of a market-data line carried by `link`
        ("feed/line"): evidence about the link's receive path, counted by its
        `feed` detector from the next reading on."""
        lines = self.detectors[link].feed_lines
        if status == "ok":
            lines.pop(line, None)
        else:
            lines[line] = status

    # -- operator inputs (the control socket) and the prediction hook --------
    def reconfigure(self, ts_ns: int, params: LinkParams) -> list[tuple]:
        """A reload's new parameters (appliance.core.reload applied only what
        is live: the same links and classes). Detector history, damping and
        each class's place carry over; a class whose current link left its
        list moves to its new preferred link."""
        if params.names != self.p.names or params.class_names != self.p.class_names:
            return [self._refused({"input": "reconfigure"}, "links or classes differ: restart the daemon")]
        self.p = params
        for d in self.detectors:
            d.p = params.detection
        self.stall.stall_ns = params.detection.stall_ns
        if not (params.prediction.enabled and params.model):
            self.predictors = []
        elif not self.predictors or self.predictors[0].model != params.model:
            self.predictors = [LinkPredictor(params.model) for _ in params.names]
        out = []
        for cid, links in enumerate(params.class_links):
            state = self.classes[cid]
            if state.forced is not None and state.forced not in links:
                self.classes[cid] = state = replace(state, forced=None)
            if state.link is not None and state.link not in links:
                out.append(self._switched(ts_ns, policy.Switch(cid, state.link, links[0], "reconfigured",
                                                               self._fresh_for_ns(links[0]))))
        return out

    def force(self, ts_ns: int, class_name: str, link_name: str) -> list[tuple]:
        """Pin a class to a link, moving it there now."""
        request = {"input": "force", "class": class_name, "link": link_name}
        reason = self._unknown_class(class_name) or self._unknown_link(link_name) or self._unread()
        if reason:
            return [self._refused(request, reason)]
        class_id, link = self.p.class_names.index(class_name), self.p.names.index(link_name)
        prefs = self.p.class_links[class_id]
        if link not in prefs:
            reason = f"{link_name} is not one of class {class_name}'s links ({self._named(prefs)})"
        elif self.drained[link]:
            reason = f"{link_name} is drained"
        elif self._fresh_for_ns(link) < 0:
            reason = f"{link_name} is not fresh now (no carrier, next hop or recent heartbeat reply)"
        if reason:
            return [self._refused(request, reason)]
        state = replace(self.classes[class_id], forced=link)
        self.classes[class_id] = state
        out = [("forced", {"class": class_name, "link": link_name}, None)]
        if state.link != link:
            out.append(self._switched(ts_ns, policy.Switch(class_id, state.link, link, "forced",
                                                           self._fresh_for_ns(link))))
        return out

    def release(self, ts_ns: int, class_name: str) -> list[tuple]:
        """End a force: the class's policy decides again from the next reading."""
        request = {"input": "release", "class": class_name}
        reason = self._unknown_class(class_name)
        if reason:
            return [self._refused(request, reason)]
        class_id = self.p.class_names.index(class_name)
        forced = self.classes[class_id].forced
        if forced is None:
            return [self._refused(request, f"class {class_name} is not forced")]
        self.classes[class_id] = replace(self.classes[class_id], forced=None)
        return [("released", {"class": class_name, "link": self.p.names[forced]}, None)]

    def drain(self, ts_ns: int, link_name: str) -> list[tuple]:
        """Move every class off a link now, and choose it for none until undrain."""
        request = {"input": "drain", "link": link_name}
        reason = self._unknown_link(link_name) or self._unread()
        if reason:
            return [self._refused(request, reason)]
        link = self.p.names.index(link_name)
        if self.drained[link]:
            return [self._refused(request, f"{link_name} is already drained")]
        views = self.views(ts_ns)
        for class_id, prefs in enumerate(self.p.class_links):
            name = self.p.class_names[class_id]
            if self.classes[class_id].forced == link:
                return [self._refused(request, f"class {name} is forced onto {link_name}: release it first")]
            if link in prefs and not any(views[l].usable for l in prefs if l != link):
                return [self._refused(request, f"{link_name} is the last usable link of class {name}")]
        self.drained[link] = True
        out = [("drained", {"link": link_name}, None)]
        views = self.views(ts_ns)
        for class_id, state in enumerate(self.classes):
            if state.link == link:
                out += self._decide(ts_ns, class_id, link, views)
        return out

    def undrain(self, ts_ns: int, link_name: str) -> list[tuple]:
        request = {"input": "undrain", "link": link_name}
        reason = self._unknown_link(link_name)
        if reason:
            return [self._refused(request, reason)]
        link = self.p.names.index(link_name)
        if not self.drained[link]:
            return [self._refused(request, f"{link_name} is not drained")]
        self.drained[link] = False
        return [("undrained", {"link": link_name}, None)]

    def predict(self, ts_ns: int, link: int, probability: float) -> list[tuple]:
        """The hook for a failure-prediction model: its latest probability
        that `link` fails stands until the next one for that link. Ignored
        unless prediction is enabled."""
        if not self.p.prediction.enabled:
            return []
        request = {"input": "predict", "link": link, "probability": probability}
        if not _number(link, int) or link not in range(len(self.p.names)):
            return [self._refused(request, f"no link {link!r}; links are 0..{len(self.p.names) - 1}")]
        if not _number(probability, (int, float)) or not 0 <= probability <= 1:
            return [self._refused(request, f"probability must be a number within 0..1, got {probability!r}")]
        self.predicted[link] = float(probability)
        return []

    # -- helpers -------------------------------------------------------------
    def _fresh_for_ns(self, link: int) -> int:
        """As of the last health reading (an operator's input between two
        readings is judged on what the last one showed); -1 before the first:
        nothing is known fresh."""
        return -1 if self.seen is None else policy.fresh_for_ns(self.seen[link], self.seen_ns, self.p.dead_ns)

    def views(self, ts_ns: int) -> list[policy.LinkView]:
        """Every link as the policy sees it now (also what `twinpath status` shows)."""
        compare = any(d.gray for d in self.detectors)   # symptoms serve only to leave a gray link
        return [policy.LinkView(self._fresh_for_ns(link), d.rtt_ns, d.loss, d.gray, self.damping[link].suppressed,
                                self.drained[link], self._predicted(link, ts_ns), d.symptoms() if compare else None)
                for link, d in enumerate(self.detectors)]

    def _predicted(self, link: int, ts_ns: int) -> float:
        modelled = self.predictors[link].probability(ts_ns) if self.predictors else 0.0
        return max(self.predicted[link], modelled)

    def _decide(self, ts_ns: int, class_id: int, current: int, views: list[policy.LinkView]) -> list[tuple]:
        held_before = self.classes[class_id].gray_held
        switch, self.classes[class_id] = policy.decide(
            class_id, self.p.class_links[class_id], current, views, self.p.policy_of(class_id),
            self.classes[class_id], ts_ns, self.p.holddown_ns, self.p.prediction, self.stall.held(ts_ns))
        if switch:
            return [self._switched(ts_ns, switch)]
        if self.classes[class_id].gray_held and not held_before:
            return [self._gray_held(ts_ns, class_id, current, views)]
        return []

    def _gray_held(self, ts_ns: int, class_id: int, current: int, views: list[policy.LinkView]) -> tuple:
        """Logged once per stay: the class keeps its gray link, since no
        healthy standby is clearly better on a quorum of the detectors
        tripping on it now (policy.relieves)."""
        standbys = [l for l in self.p.class_links[class_id] if l != current and views[l].healthy]
        return ("gray-held", {"class": self.p.class_names[class_id], "link": self.p.names[current],
                              "standbys": [self.p.names[l] for l in standbys],
                              "evidence": self._evidence(ts_ns, current, *standbys)}, None)

    def _switched(self, ts_ns: int, sw: policy.Switch) -> tuple:
        self.classes[sw.class_id] = replace(self.classes[sw.class_id], link=sw.to_link, moved_ns=ts_ns)
        return ("failover", {
            "class": self.p.class_names[sw.class_id], "from": self.p.names[sw.from_link],
            "to": self.p.names[sw.to_link], "cause": sw.cause, "detect_us": None,
            "fresh_for_ms": round(sw.fresh_for_ns / 1e6, 1), **sw.detail,
            "evidence": self._evidence(ts_ns, sw.from_link, sw.to_link)}, ("active", sw.class_id, sw.to_link))

    def _evidence(self, ts_ns: int, *links: int) -> dict[str, dict]:
        """What the core knew of each link: its detectors, its damping and (with a model) its prediction."""
        return {self.p.names[l]: {**self.detectors[l].evidence(),
                                  "penalty": round(merit(self.damping[l], self.p.damping, ts_ns)),
                                  "suppressed": self.damping[l].suppressed,
                                  **({"prediction": self.predictors[l].evidence(ts_ns)} if self.predictors else {})}
                for l in links}

    def _detect(self, ts_ns: int, windows: list[list[int] | None], sender_late_ns: int) -> list[tuple]:
        out = []
        hold = self.stall.reading(ts_ns, sender_late_ns)
        if hold:
            for d in self.detectors:
                d.interrupt()
            out.append(("hold", hold, None))
        if self.stall.held(ts_ns):
            return out
        for link, raw in enumerate(windows):
            if raw is None:
                continue
            window = Window(*raw)
            if self.predictors:
                self.predictors[link].observe(ts_ns, window)
            verdict = self.detectors[link].observe(ts_ns, window)
            if verdict:
                name = self.p.names[link]
                out.append(("gray" if verdict == "gray" else "gray-cleared",
                            {"link": name, "evidence": self.detectors[link].evidence()}, None))
            if verdict == "gray":
                out += self._flap(ts_ns, link)
        return out

    def _flap(self, ts_ns: int, link: int) -> list[tuple]:
        if self.failed[link]:
            return []
        self.failed[link] = True
        out = self._settle(ts_ns, link)
        p, state = self.p.damping, flap(self.damping[link], self.p.damping, ts_ns)
        self.damping[link] = state
        if state.suppressed:
            until_ns = reuse_ns(state, p)
            out.append(("damped", {"link": self.p.names[link], "penalty": round(state.merit),
                                   "suppress": p.suppress, "reuse": p.reuse, "until_ns": until_ns,
                                   "for_s": round((until_ns - ts_ns) / 1e9, 1)}, None))
        return out

    def _settle(self, ts_ns: int, link: int) -> list[tuple]:
        before = self.damping[link]
        self.damping[link] = after = settle(before, self.p.damping, ts_ns)
        if before.suppressed and not after.suppressed:
            return [("undamped", {"link": self.p.names[link], "penalty": round(after.merit),
                                  "suppressed_s": round((ts_ns - before.suppressed_ns) / 1e9, 1)}, None)]
        return []

    # Why an operator input cannot be taken (None: it can).
    def _unknown_class(self, name: Any) -> str | None:
        if name in self.p.class_names:
            return None
        return f"unknown class {name!r}; classes are {', '.join(self.p.class_names)}"

    def _unknown_link(self, name: Any) -> str | None:
        if name in self.p.names:
            return None
        return f"unknown link {name!r}; links are {', '.join(self.p.names)}"

    def _unread(self) -> str | None:
        return "no health reading yet" if self.seen is None else None

    def _named(self, links: list[int]) -> str:
        return ", ".join(self.p.names[l] for l in links)

    def _refused(self, request: dict, reason: str) -> tuple:
        return ("refused", {**request, "reason": reason}, None)
