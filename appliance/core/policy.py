"""Where each class runs, as pure functions of (observations, state, clock):
no I/O, so they replay from a recorded trace and test without root.

The data path already moves a class off a dead link on its own (reflex
failover, ebpf/lib/reflex.h). What is decided here, per class, every health
reading:

- an operator's force pins the class to a link (the reflex remains the
  backstop: if that link dies the class leaves it, and returns once the link
  has held fresh for the hold-down); a drained link is left at once;
- a class on a gray-failed link (still answering, so the reflex keeps it)
  moves to a healthy standby that relieves it (`relieves`): one that reads
  clearly lower than the gray link on a quorum of the detectors that trip
  on it now.
  A standby that shares the symptoms shares their cause (the gateway's own
  receive path overloaded, the far end), and a gray link that trips nothing
  now is clearing: moving would fix nothing, so the class stays and
  `ClassState.gray_held` says so;
- a link predicted to fail (when prediction is on) may be left early, but
  only for a healthy standby that is no worse in RTT and loss;
- active-backup (the default): with preempt, a class returns to a more
  preferred link once that link has held fresh for the hold-down, so a
  flapping link cannot pull traffic back and forth; without, it stays on the
  backup until the backup fails;
- lowest-latency: a class runs on the healthy link with the lowest RTT, and
  moves only when a candidate is better by more than the hysteresis margin
  for `confirm` readings in a row and the class has not moved for
  min_dwell.

No policy moves a class onto a link that is not fresh or is drained, nor
(with two exceptions) onto a suppressed (damped), gray or predicted-to-fail
one: the operator's force is obeyed, and leaving a drained link falls back
to any fresh link when no healthy one is left.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

from appliance.core.detect import Symptoms

ACTIVE_BACKUP = "active-backup"
LOWEST_LATENCY = "lowest-latency"


class LinkObservation(NamedTuple):
    """One link as the daemon sees it at one instant (netlink + tp_health)."""
    carrier: bool
    nexthop: bool
    last_reply_ns: int
    fresh_since_ns: int


def fresh_for_ns(link: LinkObservation, now_ns: int, dead_ns: int) -> int:
    """How long the link has been continuously usable, or -1 if it is not now.
    The same test as tp_link_fresh() in the data path."""
    if not (link.carrier and link.nexthop and link.last_reply_ns):
        return -1
    if now_ns - link.last_reply_ns > dead_ns:
        return -1
    return max(0, now_ns - link.fresh_since_ns)


@dataclass(frozen=True)
class ClassPolicy:
    policy: str = ACTIVE_BACKUP
    preempt: bool = True                  # active-backup: fail back to a more preferred link
    hysteresis_ns: int = 50_000           # lowest-latency: a candidate must be better by more than
    hysteresis_ratio: float = 0.2         # max(hysteresis_ns, hysteresis_ratio x current RTT)
    confirm: int = 10                     # ... for this many readings in a row
    min_dwell_ns: int = 1_000_000_000     # ... and the class must have stayed put this long


@dataclass(frozen=True)
class Prediction:
    """The hook through which a model marks links predicted to fail: off
    unless enabled; a link marked above `threshold` may be left early."""
    enabled: bool = False
    threshold: float = 0.9


class LinkView(NamedTuple):
    """One link as the policy sees it at one reading (a tuple: every link's
    is made anew at every reading)."""
    fresh_for_ns: int                 # -1: not fresh now
    rtt_ns: int | None = None         # median of its last window with answers
    loss: float | None = None         # over its sliding loss window
    gray: bool = False
    suppressed: bool = False
    drained: bool = False
    predicted: float = 0.0            # probability of failure, from the prediction hook
    symptoms: Symptoms | None = None  # its detectors, made only while some link is gray

    @property
    def usable(self) -> bool:
        """Could carry the class now (the reflex's fresh, and not drained)."""
        return self.fresh_for_ns >= 0 and not self.drained

    @property
    def healthy(self) -> bool:
        return self.usable and not self.gray and not self.suppressed


@dataclass(frozen=True)
class ClassState:
    link: int | None = None           # where the core last saw or put the class
    moved_ns: int | None = None       # when it last moved, for min_dwell
    better_link: int | None = None    # lowest-latency: the candidate beating the current link ...
    better_readings: int = 0          # ... for this many readings in a row
    forced: int | None = None         # the link an operator pinned the class to
    gray_held: bool = False           # on a gray link that no healthy standby relieved, since it went gray


@dataclass(frozen=True)
class Switch:
    class_id: int
    from_link: int
    to_link: int
    cause: str
    fresh_for_ns: int                               # how long the target has been fresh
    detail: dict = field(default_factory=dict)      # cause-specific figures for the log


def predicted(view: LinkView, prediction: Prediction) -> bool:
    return prediction.enabled and view.predicted > prediction.threshold


# A standby relieves a detector that trips on the gray link when it reads at
# most this share of the gray link's severity there: clearly better, not
# just below the threshold (under a common cause both sit near it).
RELIEF_RATIO = 0.5


def relieves(standby: LinkView, gray: LinkView) -> bool:
    """Whether the gray link is gray on evidence the standby does not
    share: at least the quorum of its detectors trip now with the standby
    reading at most RELIEF_RATIO of their severity. A detector both links
    show is a common cause, and one detector alone can be noise (the
    quorum's reason). No symptoms (none measured yet): no evidence that a
    move helps."""
    cur, alt = gray.symptoms, standby.symptoms
    if cur is None or alt is None:
        return False
    relieved = sum(1 for tripped, severity, other in zip(cur.tripped, cur.severity, alt.severity)
                   if tripped and other <= RELIEF_RATIO * severity)
    return relieved >= cur.quorum


def not_worse(candidate: LinkView, current: LinkView) -> bool:
    """No higher RTT and no higher loss, on evidence for both."""
    return (None not in (candidate.rtt_ns, current.rtt_ns, candidate.loss, current.loss)
            and candidate.rtt_ns <= current.rtt_ns and candidate.loss <= current.loss)


def _ranked(rule: ClassPolicy, prefs: list[int], links: list[LinkView], candidates: list[int]) -> list[int]:
    """Candidates best first: by preference, or for lowest-latency by RTT
    (preference breaks ties), links without an RTT last."""
    if rule.policy == LOWEST_LATENCY:
        return sorted(candidates, key=lambda l: (links[l].rtt_ns is None, links[l].rtt_ns or 0, prefs.index(l)))
    return sorted(candidates, key=prefs.index)


def decide(class_id: int, prefs: list[int], current: int, links: list[LinkView], rule: ClassPolicy,
           state: ClassState, now_ns: int, holddown_ns: int, prediction: Prediction = Prediction(),
           held: bool = False) -> tuple[Switch | None, ClassState]:
    """The class's move at this reading, if any, and its state after it.
    `held`: the host stalled, so RTTs are not evidence and lowest-latency
    keeps its count where it was."""
    if state.link != current:   # the reflex (or a restart) moved it; None: the first reading
        state = replace(state, link=current, moved_ns=now_ns if state.link is not None else state.moved_ns)
    target, cause, detail, state = _choose(prefs, current, links, rule, state, now_ns, holddown_ns, prediction,
                                           held)
    if target is None:
        return None, state
    switch = Switch(class_id, current, target, cause, links[target].fresh_for_ns, detail)
    return switch, replace(state, link=target, moved_ns=now_ns, better_link=None, better_readings=0,
                           gray_held=False)


def settled(prefs: list[int], current: int, links: list[LinkView], rule: ClassPolicy, state: ClassState,
            holddown_ns: int) -> list[tuple[int, int | None, int]] | None:
    """None while a move of the class may wait on time or on a run of
    readings (a hold-down, lowest-latency's count); else the RTT bounds
    (link, above, below; None or 0: none) beyond which replies could start
    one. Settled: on its forced link; active-backup on its most
    preferred link or without preempt; lowest-latency with no candidate
    beating the current link by the hysteresis margin, and the bounds the
    RTTs at which one would. A link that is not usable (dead, drained)
    takes no class until a reply or an input says otherwise, and either
    wakes the daemon: it holds nothing up, so a class on its backup while
    its first link is down for hours is settled too. A class still on a
    dead link is the data path's to move (the reflex, at its next packet,
    which wakes the daemon); one on a drained link is the next reading's."""
    cur = links[current]
    if cur.drained and any(links[l].usable for l in prefs if l != current):
        return None   # the next reading moves it
    if state.forced is not None:
        return [] if current == state.forced or not links[state.forced].usable else None
    if rule.policy != LOWEST_LATENCY:
        ahead = prefs[:prefs.index(current)] if current in prefs else prefs
        return [] if not rule.preempt or not any(links[l].usable for l in ahead) else None
    others = [l for l in prefs if l != current and links[l].usable]
    if not others or not cur.usable:
        return []   # no candidate; or on a dead link, which the reflex leaves at the class's next packet
    if state.better_readings or cur.rtt_ns is None or any(links[l].rtt_ns is None for l in others):
        return None
    # The margin at the current RTT: it only grows as that RTT rises, so this waking bound is the lower.
    margin_ns = max(rule.hysteresis_ns, int(rule.hysteresis_ratio * cur.rtt_ns))
    if any(cur.rtt_ns - links[l].rtt_ns > margin_ns for l in others):   # one beats it: its hold-down may run
        return None
    return [(current, min(links[l].rtt_ns for l in others) + margin_ns, 0),
            *((l, None, max(0, cur.rtt_ns - margin_ns)) for l in others)]


def _choose(prefs, current, links, rule, state, now_ns, holddown_ns, prediction, held):
    cur = links[current]
    standbys = [l for l in prefs if l != current]
    nothing = None, None, {}, state
    if state.forced is not None:
        back = links[state.forced]
        if current != state.forced and back.usable and back.fresh_for_ns >= holddown_ns:
            return state.forced, "forced", {}, state
        if not cur.drained:   # pinned; but the reflex may have put it on a drained link meanwhile
            return nothing
    if cur.drained:
        usable = _ranked(rule, prefs, links, [l for l in standbys if links[l].usable])
        healthy = [l for l in usable if links[l].healthy]
        return ((healthy or usable)[0], "drained", {}, state) if usable else nothing
    eligible = [l for l in standbys if links[l].healthy and not predicted(links[l], prediction)
                and (rule.policy != LOWEST_LATENCY or links[l].rtt_ns is not None)]
    # One stay on a gray link is one hold, though a standby may blink out
    # of eligibility (a late heartbeat under load) within it.
    gray_held = state.gray_held and cur.gray
    if cur.gray and cur.usable and eligible:
        relieving = [l for l in eligible if relieves(links[l], cur)]
        if relieving:
            return _ranked(rule, prefs, links, relieving)[0], "gray", {}, state
        gray_held = True
    if gray_held != state.gray_held:
        state = replace(state, gray_held=gray_held)
    if predicted(cur, prediction) and cur.usable:
        safer = [l for l in eligible if not_worse(links[l], cur)]
        if safer:
            return _ranked(rule, prefs, links, safer)[0], "predicted", {
                "probability": cur.predicted, "threshold": prediction.threshold}, state
    if rule.policy == LOWEST_LATENCY:
        return _lower_latency(current, links, rule, state, now_ns, holddown_ns, held, prefs, eligible)
    if rule.preempt:
        rank = prefs.index(current) if current in prefs else len(prefs)
        for l in prefs[:rank]:
            if l in eligible and links[l].fresh_for_ns >= holddown_ns:
                return l, "failback", {}, state
    return None, None, {}, state


def _no_better(state: ClassState) -> ClassState:
    """No candidate beats the current link: the count restarts (a new state only if it changes)."""
    return state if state.better_link is None and not state.better_readings else \
        replace(state, better_link=None, better_readings=0)


def _lower_latency(current, links, rule, state, now_ns, holddown_ns, held, prefs, eligible):
    if held:
        return None, None, {}, state
    cur = links[current]
    # A link back from failure proves itself for the hold-down, as for failback.
    proven = [l for l in eligible if links[l].fresh_for_ns >= holddown_ns]
    if not (cur.usable and cur.rtt_ns is not None and proven):
        return None, None, {}, _no_better(state)
    best = _ranked(rule, prefs, links, proven)[0]
    margin_ns = max(rule.hysteresis_ns, int(rule.hysteresis_ratio * cur.rtt_ns))
    if cur.rtt_ns - links[best].rtt_ns <= margin_ns:
        return None, None, {}, _no_better(state)
    readings = state.better_readings + 1 if state.better_link == best else 1
    state = replace(state, better_link=best, better_readings=readings)
    dwelt = state.moved_ns is None or now_ns - state.moved_ns >= rule.min_dwell_ns
    if readings < rule.confirm or not dwelt:
        return None, None, {}, state
    return best, "lower-latency", {"rtt_from_us": round(cur.rtt_ns / 1000, 1),
                                   "rtt_to_us": round(links[best].rtt_ns / 1000, 1),
                                   "margin_us": round(margin_ns / 1000, 1), "better_readings": readings}, state
