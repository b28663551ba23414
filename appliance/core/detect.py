"""Gray failures: a link that still answers heartbeats, so the data path's
reflex keeps it, but answers slowly, loses some probes or jitters.

Each health reading brings, per link, a Window: a summary of the probes the
link sent since the last reading. Three detectors read it against what the
link keeps:

- rtt: the window's median (a window without answers leaves the last one
  standing: that is the loss detector's case) above the link's baseline by
  more than max(rtt_margin, rtt_margin_ratio x baseline). The baseline is
  the lowest window median over the last `baseline` stretch (kept per 1/30
  of it). A path's floor is propagation and serialisation, and queueing only adds to
  it, so the lowest median is the path itself. A slow EWMA would instead
  learn a link that degrades slowly as its new normal, and would need a
  health gate to keep bad windows out. The min forgets a real path change
  after one horizon. While a link is declared gray it does not learn, so it
  cannot talk itself healthy.
- loss: the fraction of the last loss_window probes lost (judged only once
  that many have been answered or lost: five probes are no rate), or a run
  of consecutive losses longer than loss_burst among them.
- jitter: the window's jitter (of windows with two answers or more),
  smoothed with gain 1/4, above its threshold.
- feed: a market-data line this link carries is silent or behind while its
  peer line flows (A/B arbitration's line health, appliance.core.feeds).

One detector can be noise: a link is declared gray only when at least
`quorum` agree for `confirm` consecutive readings, and cleared once fewer
than `quorum` agree for `clear` consecutive readings.

Symptoms compare links: each detector's value over its threshold (above 1
trips), which the policy reads to tell a link's own failure from one its
standby shares (appliance.core.policy.relieves).

A host that stalls (the probe sender held off the CPU) makes every link
look slow and lossy at once. Such a stretch is not
evidence against any link: StallWatch holds every verdict for as long as the
stall lasted, and the readings either side of a stall do not count as
consecutive.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

BASELINE_BUCKETS = 30
# A link is quiet while every detector reads at most this share of its
# threshold (one lost probe is half of the default burst threshold): the
# daemon may then read it seldom, and the kernel wakes it at the first reply
# beyond the same share (quiet_wake, ebpf/lib/wake.h).
QUIET_SEVERITY = 0.5
JITTER_GAIN_SHIFT = 2   # smoothing gain 1/4: one jumpy window of ~5 probes moves it a quarter


class Window(NamedTuple):
    """The probes one link sent since the last health reading, as
    fastpath's summary of the kernel's RTT ring gives them, in this order
    (None instead when the link sent nothing). RTTs cover the answered
    probes; longest_gap is the longest run of consecutive lost probes."""
    sent: int
    answered: int
    lost: int
    rtt_p50_ns: int
    rtt_p90_ns: int
    rtt_min_ns: int
    rtt_max_ns: int
    jitter_ns: int
    longest_gap: int


class Symptoms(NamedTuple):
    """A link's detectors at the last reading: each one's severity (its
    value over its threshold; feed: 1.0 when its lines are behind), whether
    it tripped, and how many must agree for gray. Order: rtt, loss, jitter, feed."""
    severity: tuple[float, float, float, float]
    tripped: tuple[bool, bool, bool, bool]
    quorum: int


@dataclass(frozen=True)
class DetectParams:
    rtt_margin_ns: int = 500_000
    rtt_margin_ratio: float = 1.0
    loss_window: int = 200            # probes
    loss_threshold: float = 0.05
    loss_burst: int = 2               # probes; longer runs trip
    jitter_threshold_ns: int = 250_000
    quorum: int = 2
    confirm: int = 4                  # readings
    clear: int = 200                  # readings
    stall_ns: int = 10_000_000
    baseline_ns: int = 60_000_000_000


def _us(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1000, 1)


class LinkDetector:
    """One link's detectors and verdict."""

    def __init__(self, p: DetectParams):
        self.p = p
        self.gray = False
        self.rtt_ns: int | None = None      # median of the last window with answers
        self.jitter_ns: int | None = None
        self._floors: deque[tuple[int, int]] = deque()          # (bucket, lowest median in it)
        self._baseline_ns: int | None = None                    # the lowest of them
        self._probes: deque[tuple[int, int, int]] = deque()     # per window: (judged, lost, longest loss run)
        # The windows' loss runs that no later window's run equals or
        # exceeds, longest first: the first is the longest in the sliding
        # window (a sliding maximum, without a scan of every window).
        self._longest: deque[tuple[int, int]] = deque()         # (window number, run)
        self._windows = 0        # windows counted so far
        self._judged = self._lost = 0
        self._run = 0            # consecutive losses at the end of the windows so far
        self._agree = self._healthy = 0
        # The last reading's detectors (None before the first): the
        # parameters they ran with, the rtt threshold, and what tripped.
        self._measured_p = p
        self._rtt_limit: int | None = None
        self._tripped: tuple[bool, bool, bool, bool] | None = None   # rtt, loss, jitter, feed
        # Market-data lines this link carries that are silent or behind while
        # their peer line flows ("feed/line" -> status): its receive path.
        self.feed_lines: dict[str, str] = {}

    @property
    def baseline_ns(self) -> int | None:
        return self._baseline_ns

    @property
    def loss(self) -> float | None:
        """Lost fraction of the probes in the sliding window."""
        return self._lost / self._judged if self._judged else None

    def observe(self, ts_ns: int, w: Window) -> str | None:
        """Takes one window; returns "gray" when this reading declares the
        link gray, "cleared" when it clears it, else None."""
        if w.answered:
            self.rtt_ns = w.rtt_p50_ns
        if w.answered >= 2:
            self.jitter_ns = w.jitter_ns if self.jitter_ns is None else \
                self.jitter_ns + ((w.jitter_ns - self.jitter_ns) >> JITTER_GAIN_SHIFT)
        self._count_losses(w)
        if self._measure() >= self.p.quorum:
            self._agree, self._healthy = self._agree + 1, 0
        else:
            self._agree, self._healthy = 0, self._healthy + 1
        verdict = None
        if not self.gray and self._agree >= self.p.confirm:
            self.gray, verdict = True, "gray"
        elif self.gray and self._healthy >= self.p.clear:
            self.gray, verdict = False, "cleared"
        if w.answered and not self.gray:
            self._learn(ts_ns, w.rtt_p50_ns)
        return verdict

    def interrupt(self) -> None:
        """The host stalled: readings either side of it are not consecutive
        evidence, and neither is a loss run across it."""
        self._agree = self._healthy = self._run = 0

    def _count_losses(self, w: Window) -> None:
        # A run of losses continues across windows without answers; where a
        # window has answers, where its losses lie is unknown, so the run
        # restarts (an undercount: the safe side).
        if w.answered:
            self._run = 0
            burst = w.longest_gap
        else:
            self._run += w.lost
            burst = max(w.longest_gap, self._run)
        judged = w.answered + w.lost
        if not judged:   # every probe still in flight: nothing to count, and the deque stays bounded
            return
        self._probes.append((judged, w.lost, burst))
        longest = self._longest
        while longest and longest[-1][1] <= burst:
            longest.pop()
        longest.append((self._windows, burst))
        self._windows += 1
        self._judged += judged
        self._lost += w.lost
        while self._judged - self._probes[0][0] >= self.p.loss_window:
            old_judged, old_lost, _ = self._probes.popleft()
            self._judged -= old_judged
            self._lost -= old_lost
        first = self._windows - len(self._probes)   # the oldest window still in the sliding window
        while longest[0][0] < first:
            longest.popleft()

    def _learn(self, ts_ns: int, median_ns: int) -> None:
        bucket = ts_ns // max(1, self.p.baseline_ns // BASELINE_BUCKETS)
        if self._floors and self._floors[-1][0] == bucket:
            self._floors[-1] = (bucket, min(self._floors[-1][1], median_ns))
        else:
            self._floors.append((bucket, median_ns))
        aged = False
        while self._floors[0][0] <= bucket - BASELINE_BUCKETS:
            self._floors.popleft()
            aged = True
        if aged or self._baseline_ns is None:
            self._baseline_ns = min([f for _, f in self._floors])
        else:
            self._baseline_ns = min(self._baseline_ns, median_ns)

    @property
    def burst(self) -> int:
        """The longest run of losses among the sliding window's probes."""
        return self._longest[0][1] if self._longest else 0

    def _measure(self) -> int:
        """Runs the detectors on the link as it now stands; returns how many tripped.
        (Every link, every reading: it keeps what evidence() needs, no more.)"""
        p, base, rtt = self.p, self._baseline_ns, self.rtt_ns
        if base is None or rtt is None:
            self._rtt_limit, slow = None, False
        else:
            self._rtt_limit = limit = base + max(p.rtt_margin_ns, int(p.rtt_margin_ratio * base))
            slow = rtt > limit
        judged = self._judged
        lossy = (judged >= p.loss_window and self._lost / judged > p.loss_threshold) or self.burst > p.loss_burst
        jittery = self.jitter_ns is not None and self.jitter_ns > p.jitter_threshold_ns
        feed = bool(self.feed_lines)
        self._measured_p, self._tripped = p, (slow, lossy, jittery, feed)
        return slow + lossy + jittery + feed

    def symptoms(self) -> Symptoms | None:
        """None before the first reading with windows."""
        if self._tripped is None:
            return None
        p, base, rtt, jitter = self._measured_p, self._baseline_ns, self.rtt_ns, self.jitter_ns
        slow = 0.0 if self._rtt_limit is None else max(0, rtt - base) / max(1, self._rtt_limit - base)
        rate = self._lost / self._judged / p.loss_threshold if self._judged >= p.loss_window else 0.0
        lossy = max(rate, self.burst / p.loss_burst)
        jittery = 0.0 if jitter is None else jitter / p.jitter_threshold_ns
        return Symptoms((slow, lossy, jittery, float(self._tripped[3])), self._tripped, p.quorum)

    def quiet_wake(self) -> tuple[int, int, int] | None:
        """While the link is quiet (not gray, no feed line behind, every
        detector at most QUIET_SEVERITY of its threshold at the last
        reading): the RTT, and the smoothed change from one RTT to the
        next, above which replies should wake the daemon, and the smoothed
        change so far. None otherwise, and before the first reading with answers."""
        symptoms = self.symptoms()
        if self.gray or self.feed_lines or symptoms is None or self._rtt_limit is None or \
                max(symptoms.severity) > QUIET_SEVERITY:
            return None
        base = self._baseline_ns
        return (base + int(QUIET_SEVERITY * (self._rtt_limit - base)),
                int(QUIET_SEVERITY * self._measured_p.jitter_threshold_ns), self.jitter_ns or 0)

    def evidence(self) -> dict:
        """For the log: each detector's value, threshold and whether it
        tripped, the baseline, and the verdict."""
        if self._tripped is None:
            return {"gray": self.gray, "baseline_us": None, "rtt": None, "loss": None, "jitter": None}
        slow, lossy, jittery, feed = self._tripped
        p, loss = self._measured_p, self.loss
        return {
            "gray": self.gray, "baseline_us": _us(self.baseline_ns),
            "rtt": {"value_us": _us(self.rtt_ns), "threshold_us": _us(self._rtt_limit), "tripped": slow},
            "loss": {"value": None if loss is None else round(loss, 4), "threshold": p.loss_threshold,
                     "probes": self._judged, "burst": self.burst, "burst_threshold": p.loss_burst,
                     "tripped": lossy},
            "jitter": {"value_us": _us(self.jitter_ns), "threshold_us": _us(p.jitter_threshold_ns),
                       "tripped": jittery},
            "feed": {"lines": dict(sorted(self.feed_lines.items())), "tripped": feed},
        }


class StallWatch:
    """Whether the host stalled: the probe sender late by more than the
    bound. Verdicts are held for as long as the stall lasted, counted from
    the reading that showed it. A late reading alone is no stall: windows
    come from the kernel's ring by sequence, whenever they are read
    (appliance.edge.probewindows), so the daemon's own lateness changes no
    verdict (the gap is still logged with a hold)."""

    def __init__(self, stall_ns: int):
        self.stall_ns = stall_ns
        self.until_ns = 0
        self._last_reading_ns: int | None = None

    def reading(self, ts_ns: int, sender_late_ns: int) -> dict | None:
        """Takes one reading; returns the 'hold' log fields when it shows a
        new stall (one that does not extend a hold already running)."""
        gap_ns = 0 if self._last_reading_ns is None else ts_ns - self._last_reading_ns
        self._last_reading_ns = ts_ns
        stall_ns = sender_late_ns
        if stall_ns <= self.stall_ns:
            return None
        new = not self.held(ts_ns)
        self.until_ns = max(self.until_ns, ts_ns + stall_ns)
        if not new:
            return None
        return {"sender_late_ms": round(sender_late_ns / 1e6, 1), "reading_gap_ms": round(gap_ns / 1e6, 1),
                "held_ms": round(stall_ns / 1e6, 1), "until_ns": self.until_ns}

    def held(self, ts_ns: int) -> bool:
        return ts_ns < self.until_ns
