"""Failure prediction: how likely a link is to hard-fail (stop answering
altogether) within the next two seconds, from the trend of its recent probe
windows. Pure, like the rest of the core: the same windows give the same
probabilities, so a recorded trace replays its predicted moves.

A LinkPredictor takes every window the link core's detectors take (held
readings of a host stall excepted) and gathers them into 50 ms buckets. At
the first reading of each new bucket it evaluates FEATURES over the last
2 s, cut into four 0.5 s segments (oldest first, S1..S4), with RTTs against
the link's baseline (its lowest bucket median over the last 30 s):

  rtt_rise        median RTT of S4 above the baseline
  rtt_climb       the smallest of the three rises of the median RTT from one
                  segment to the next: above 0 only when the RTT went up
                  through all of the 2 s. A step (a reroute that stays) rises
                  once; a creep towards failure rises every time
  loss_sustained  the lowest fraction of probes lost in S2, S3 and S4: loss
                  throughout the last 1.5 s, which a short burst does not
                  have (the loss of S4 alone made every burst an alarm)
  jitter          mean window jitter of S4
  jitter_rise     that minus the mean of S1..S3
  spread          mean p90 - p50 of the windows of S4

RTT, jitter and spread are in units of the baseline, but never of less than
RTT_FLOOR_NS: on a 6 us lab veth a 30 us hiccup would otherwise look like a
fivefold rise; they then go through asinh (about linear near 0, logarithmic
beyond), so that a 50 ms stall does not dwarf a steady creep. Loss fractions
stay as they are. A stretch without answers gives its RTT features 0: no
evidence (the loss features carry it).

A link silent for SILENT_NS (no probe answered) is down: the data path's
reflex has left it, and its history says nothing about its next failure.
The predictor forgets it and starts afresh when answers return, so a link
back from an outage is judged on what it does after, not on the outage.

The model is a logistic regression over the standardized features (trained
by bench/predict_train.py, shipped as predict_weights.json beside this
file). A link's probability is the highest the model gave over the last
`hold_ms`: a prediction says "within the horizon", so it stands that long,
and a class moved early does not return the moment one bucket looks calmer.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from appliance.core.detect import Window

FEATURES = ("rtt_rise", "rtt_climb", "loss_sustained", "jitter", "jitter_rise", "spread")
MS = 1_000_000
BUCKET_NS = 50 * MS
SEGMENT_NS = 500 * MS
SEGMENTS = 4
HISTORY_NS = SEGMENTS * SEGMENT_NS
SILENT_NS = 100 * MS
BASELINE_NS = 30_000 * MS
BASELINE_SLOT_NS = 1000 * MS      # the baseline keeps one lowest median per second
RTT_FLOOR_NS = 100_000


@dataclass(frozen=True)
class Model:
    """A trained logistic regression: p = 1 / (1 + exp(-(intercept + sum
    coef_i (x_i - mean_i) / scale_i))) over FEATURES in that order."""
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    threshold: float          # the operating point chosen in training (the config's default threshold)
    hold_ms: int              # how long a probability stands: the training horizon

    def __post_init__(self):
        if tuple(self.features) != FEATURES:
            raise ValueError(f"a model over features {list(self.features)}; this twinpath computes {list(FEATURES)}")
        if not len(self.mean) == len(self.scale) == len(self.coef) == len(FEATURES):
            raise ValueError(f"mean, scale and coef must each have {len(FEATURES)} values")
        if not all(s > 0 for s in self.scale):
            raise ValueError("every scale must be above 0")
        if not 0 < self.threshold < 1 or self.hold_ms < 0:
            raise ValueError("threshold must be within (0, 1) and hold_ms at least 0")

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Model:
        return cls(features=tuple(raw["features"]), mean=tuple(raw["mean"]), scale=tuple(raw["scale"]),
                   coef=tuple(raw["coef"]), intercept=raw["intercept"], threshold=raw["threshold"],
                   hold_ms=raw["hold_ms"])


def probability(features: dict[str, float], model: Model) -> float:
    z = model.intercept + sum(c * (features[name] - m) / s
                              for name, m, s, c in zip(FEATURES, model.mean, model.scale, model.coef))
    # exp of a large positive number overflows; of a large negative one, underflows to 0 harmlessly.
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


@dataclass(frozen=True)
class Bucket:
    """The windows of one 50 ms stretch."""
    mid_ns: int
    rtt_ns: int | None        # median of the windows' medians; None without answers
    answered: int
    lost: int
    jitter_ns: float | None   # mean jitter of windows with two answers or more
    spread_ns: float | None   # mean p90 - p50 of windows with answers


def _median(values: list[int]) -> int:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def _loss(buckets: list[Bucket]) -> float:
    judged = sum(b.answered + b.lost for b in buckets)
    return sum(b.lost for b in buckets) / judged if judged else 0.0


def features(buckets: list[Bucket], baseline_ns: int, now_ns: int) -> dict[str, float]:
    """FEATURES over the buckets (oldest first) as of now_ns."""
    unit = max(baseline_ns, RTT_FLOOR_NS)
    segments: list[list[Bucket]] = [[] for _ in range(SEGMENTS)]
    for b in buckets:
        age = (now_ns - b.mid_ns) // SEGMENT_NS
        if 0 <= age < SEGMENTS:
            segments[SEGMENTS - 1 - age].append(b)
    medians = [_median(rtts) if (rtts := [b.rtt_ns for b in seg if b.rtt_ns is not None]) else None
               for seg in segments]
    rises = [later - earlier for earlier, later in zip(medians, medians[1:]) if None not in (earlier, later)]
    recent = segments[-1]
    jitter_now = _mean([b.jitter_ns for b in recent if b.jitter_ns is not None])
    jitter_before = _mean([b.jitter_ns for seg in segments[:-1] for b in seg if b.jitter_ns is not None])
    spread = _mean([b.spread_ns for b in recent if b.spread_ns is not None])
    return {
        "rtt_rise": math.asinh((medians[-1] - baseline_ns) / unit) if medians[-1] is not None else 0.0,
        "rtt_climb": math.asinh(min(rises) / unit) if len(rises) == SEGMENTS - 1 else 0.0,
        "loss_sustained": min(_loss(seg) for seg in segments[1:]),
        "jitter": math.asinh(jitter_now / unit) if jitter_now is not None else 0.0,
        "jitter_rise": math.asinh((jitter_now - jitter_before) / unit)
        if None not in (jitter_now, jitter_before) else 0.0,
        "spread": math.asinh(spread / unit) if spread is not None else 0.0,
    }


class LinkPredictor:
    """One link's buckets, baseline and latest prediction. With no model it
    only computes features (for training)."""

    def __init__(self, model: Model | None):
        self.model = model
        self.buckets: deque[Bucket] = deque()
        self.features: dict[str, float] | None = None     # as of the last evaluation
        self.raw: float | None = None                     # the model's output at the last evaluation
        self._outputs: deque[tuple[int, float]] = deque()  # (ns, output) over the hold
        self._floors: deque[tuple[int, int]] = deque()     # (slot, lowest bucket median in it)
        self._slot: int | None = None
        self._windows: list[Window] = []
        self._answered_ns: int | None = None               # the last window with an answer

    @property
    def baseline_ns(self) -> int | None:
        return min(f for _, f in self._floors) if self._floors else None

    def probability(self, now_ns: int) -> float:
        """The highest output within the hold before now_ns; 0 without one
        (a link whose windows stopped coming keeps no stale prediction)."""
        hold_ns = self.model.hold_ms * MS if self.model else 0
        return max((p for t, p in self._outputs if t >= now_ns - hold_ns), default=0.0)

    def observe(self, ts_ns: int, w: Window) -> bool:
        """Takes one window; returns True when it started a new bucket, so
        the features (and the probability) were evaluated afresh."""
        if w.answered:
            self._answered_ns = ts_ns
        elif self._answered_ns is not None and ts_ns - self._answered_ns >= SILENT_NS:
            self._forget()
            return False
        slot = ts_ns // BUCKET_NS
        evaluated = False
        if self._slot is not None and slot != self._slot and self._windows:
            self._close(self._slot)
            evaluated = self._evaluate(ts_ns)
        self._slot = slot
        self._windows.append(w)
        return evaluated

    def _forget(self) -> None:
        """The link is down: drop its history and predictions (not its baseline: the path is the same)."""
        self.buckets.clear()
        self._outputs.clear()
        self._windows, self._slot = [], None
        self.features = self.raw = None

    def _close(self, slot: int) -> None:
        ws, self._windows = self._windows, []
        answered = [w for w in ws if w.answered]
        rtt = _median([w.rtt_p50_ns for w in answered]) if answered else None
        bucket = Bucket(mid_ns=slot * BUCKET_NS + BUCKET_NS // 2, rtt_ns=rtt, answered=sum(w.answered for w in ws),
                        lost=sum(w.lost for w in ws),
                        jitter_ns=_mean([w.jitter_ns for w in ws if w.answered >= 2]),
                        spread_ns=_mean([w.rtt_p90_ns - w.rtt_p50_ns for w in answered]))
        self.buckets.append(bucket)
        while self.buckets[0].mid_ns < bucket.mid_ns - HISTORY_NS:
            self.buckets.popleft()
        if rtt is not None:
            floor_slot = bucket.mid_ns // BASELINE_SLOT_NS
            if self._floors and self._floors[-1][0] == floor_slot:
                self._floors[-1] = (floor_slot, min(self._floors[-1][1], rtt))
            else:
                self._floors.append((floor_slot, rtt))
            while self._floors[0][0] <= floor_slot - BASELINE_NS // BASELINE_SLOT_NS:
                self._floors.popleft()

    def _evaluate(self, ts_ns: int) -> bool:
        baseline = self.baseline_ns
        # A trend needs its whole history: none before 2 s of buckets (at start, or after an outage).
        if baseline is None or self.buckets[-1].mid_ns - self.buckets[0].mid_ns < HISTORY_NS - BUCKET_NS:
            return False
        self.features = features(list(self.buckets), baseline, ts_ns)
        if self.model is None:
            return True
        self.raw = probability(self.features, self.model)
        self._outputs.append((ts_ns, self.raw))
        while self._outputs[0][0] < ts_ns - self.model.hold_ms * MS:
            self._outputs.popleft()
        return True

    def evidence(self, now_ns: int) -> dict:
        """For the log: the probability that stands, the last output and its features."""
        return {"probability": round(self.probability(now_ns), 3),
                "last": None if self.raw is None else round(self.raw, 3),
                "features": None if self.features is None else {k: round(v, 3) for k, v in self.features.items()}}
