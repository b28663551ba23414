"""Flap damping after RFC 2439: a link that keeps failing is kept out of use
for a while, however good it looks between failures.

Each flap (the link went from usable to failed: a reflex failover away from
it, carrier loss, a gray declaration) adds `penalty` to the link's figure of
merit, which halves every `half_life`. Above `suppress` the link is
suppressed: never a failback or policy target. It is reusable once the
figure has decayed below `reuse`, and at the latest `max_suppress` after its
suppression began. As in RFC 2439 the figure is capped at the ceiling from
which it decays to `reuse` in exactly `max_suppress`, so a link that flapped
a hundred times is not held for hours after its last flap.

The defaults (penalty 1000, suppress 2000, reuse 750, half-life 15 s, max
suppress 60 s) are more careful than Junos BFD's back-off after more than 3
flaps in 15 s: two flaps never suppress (2000 is not above 2000); three
flaps less than 15 s from first to last always do (the weakest case, two at
once and the third 15 s later, leaves 1000 + 2 x 500 = 2000), and so do
three evenly spaced within 20.8 s; four within 15 s always do (at least
1000 + 3 x 500). A link suppressed by three
flaps in a row (merit 3000) is reusable 30 s later (15 s x log2(3000 / 750));
one just over 2000 after about 21 s; none later than 60 s.

Pure functions of (state, ts_ns).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class DampingParams:
    enabled: bool = True            # off: no flap counts, no link is ever suppressed
    penalty: float = 1000.0
    suppress: float = 2000.0
    reuse: float = 750.0
    half_life_ns: int = 15_000_000_000
    max_suppress_ns: int = 60_000_000_000

    @property
    def ceiling(self) -> float:
        """The highest figure of merit: it decays to `reuse` in max_suppress."""
        return self.reuse * 2 ** (self.max_suppress_ns / self.half_life_ns)


@dataclass(frozen=True)
class Damping:
    """One link's figure of merit as of at_ns, and since when it has been
    suppressed (None: it is usable)."""
    merit: float = 0.0
    at_ns: int = 0
    suppressed_ns: int | None = None

    @property
    def suppressed(self) -> bool:
        return self.suppressed_ns is not None


def merit(s: Damping, p: DampingParams, ts_ns: int) -> float:
    """The figure of merit at ts_ns, decayed since it was last updated."""
    return s.merit * 2 ** (-max(0, ts_ns - s.at_ns) / p.half_life_ns)


def flap(s: Damping, p: DampingParams, ts_ns: int) -> Damping:
    """The state after one flap at ts_ns (settle first, so a suppression that
    has run out is not extended)."""
    if not p.enabled:
        return s
    s = settle(s, p, ts_ns)
    m = min(merit(s, p, ts_ns) + p.penalty, p.ceiling)
    suppressed_ns = s.suppressed_ns if s.suppressed else (ts_ns if m > p.suppress else None)
    return Damping(m, ts_ns, suppressed_ns)


def reuse_ns(s: Damping, p: DampingParams) -> int | None:
    """When a suppressed link becomes reusable, unless it flaps again: when
    its merit has decayed below `reuse`, or max_suppress after suppression
    began, whichever is first. None for a link that is not suppressed."""
    if not s.suppressed:
        return None
    decayed_ns = s.at_ns + math.ceil(p.half_life_ns * math.log2(s.merit / p.reuse))
    return min(decayed_ns, s.suppressed_ns + p.max_suppress_ns)


def settle(s: Damping, p: DampingParams, ts_ns: int) -> Damping:
    """The state at ts_ns: a suppressed link whose time is up is reusable."""
    if s.suppressed and ts_ns >= reuse_ns(s, p):
        return replace(s, merit=merit(s, p, ts_ns), at_ns=ts_ns, suppressed_ns=None)
    return s
