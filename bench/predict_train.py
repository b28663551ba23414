"""Train the failure-prediction model on labelled traces and evaluate it on
held-out ones (issue #11 item 5).

    .venv/bin/python -m bench.predict_train TRACEDIR [--weights FILE] [--no-write]

fresh() is the bench's entry: the shipped model on traces recorded there and then.

TRACEDIR is bench/predict_traces.py's output. Every health reading of every
link goes through appliance.core.predict.LinkPredictor exactly as the core
feeds it (readings held by a host stall skipped), giving one row of FEATURES
per 50 ms bucket, labelled by predict_traces.label(). The split is by run,
never by reading: the last run of each kind is held out, the others train.

Training: numpy logistic regression by Newton's method, features
standardized on the training rows, L2 penalty L2 on the coefficients, the
classes weighted to equal total weight (positives are a few percent of the
rows). The threshold is the one of THRESHOLDS with the best event-level F1
on the training runs (ties: the higher).

Evaluation replays each held-out trace through the real core
(appliance.core.decision.Core) with prediction on and the trained model,
reading the probability the policy would see at every reading:

  failure   a blackhole of a link; predicted when that link's probability
            was above the threshold at some reading within the horizon H
            before it; its lead is how long before the blackhole the first
            such reading came (at most H)
  alarm     a stretch of readings above the threshold on one link (readings
            of a link that is down, or just back, excluded); true when it
            overlaps the H before one of that link's blackholes
  precision true alarms / alarms; recall: predicted failures / failures
  false_alarms_per_hour   alarms on the held-out runs that never fail, per
            hour of those runs (both links watched)

For comparison, gray_moved_early counts the failures where the gray
detectors had already moved orders off the link before the blackhole (what
reactive switching does without any model), with their lead.

The weights file (by default the shipped appliance/core/predict_weights.json)
gets {"model": appliance.core.predict.Model, "training": how and on what it
was trained, with this evaluation}. The evaluation is printed as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import appliance.core
from appliance.core.decision import Core
from appliance.core.detect import StallWatch, Window
from appliance.core.predict import FEATURES, LinkPredictor, Model
from appliance.edge import trace
from bench import predict_traces
from bench.progress import Advance, ignore
from lab import topology

WEIGHTS = Path(appliance.core.__file__).resolve().parent / "predict_weights.json"
L2 = 1.0
NEWTON_STEPS = 50
# Class weights put the model's even odds where positives are as heavy as the
# far more numerous negatives, so useful thresholds sit high.
THRESHOLDS = (*(round(t, 2) for t in np.arange(0.50, 0.991, 0.01)), 0.995, 0.998, 0.999)


def shipped_model() -> Model:
    return Model.from_json(json.loads(WEIGHTS.read_text())["model"])


# -- the data ------------------------------------------------------------------------------
def load_runs(trace_dir: Path) -> list[dict]:
    """The manifest's runs, each with its labels."""
    runs = json.loads((trace_dir / "manifest.json").read_text())
    for run in runs:
        run["labels"] = json.loads((trace_dir / f"{run['name']}.labels.json").read_text())
        run["trace"] = trace_dir / f"{run['name']}.trace.jsonl"
    return runs


def split(runs: list[dict]) -> tuple[list[dict], list[dict]]:
    """(train, held out): the last run of each kind is held out."""
    last = {}
    for run in runs:
        last[run["kind"]] = max(last.get(run["kind"], -1), run["index"])
    held = [r for r in runs if r["index"] == last[r["kind"]]]
    return [r for r in runs if r["index"] != last[r["kind"]]], held


def link_labels(run: dict, link: str) -> dict:
    return run["labels"]["links"].get(link, {"positive": [], "excluded": []})


def rows(run: dict) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of a run's buckets, both links; readings excluded
    from learning (label -1) left out. The core's own gating: no readings
    while the host is held for a stall (LinkCore._detect)."""
    start, inputs = trace.read(run["trace"])
    names = start.links.names
    stall = StallWatch(start.links.detection.stall_ns)
    predictors = [LinkPredictor(None) for _ in names]
    xs, ys = [], []
    for kind, ts_ns, fields in inputs:
        if kind != "health" or fields.get("windows") is None:
            continue
        stall.reading(ts_ns, fields.get("sender_late_ns", 0))
        if stall.held(ts_ns):
            continue
        for link, raw in enumerate(fields["windows"]):
            if raw is None or not predictors[link].observe(ts_ns, Window(*raw)):
                continue
            y = predict_traces.label(ts_ns, link_labels(run, names[link]))
            if y >= 0:
                xs.append([predictors[link].features[f] for f in FEATURES])
                ys.append(y)
    return np.array(xs, dtype=float).reshape(-1, len(FEATURES)), np.array(ys, dtype=float)


# -- the model -----------------------------------------------------------------------------
def fit(x: np.ndarray, y: np.ndarray, l2: float = L2) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(mean, scale, coef, intercept) of an L2-penalized, class-weighted
    logistic regression, by Newton's method."""
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    z = np.hstack([np.ones((len(x), 1)), (x - mean) / scale])
    pos = y.sum()
    weight = np.where(y == 1, len(y) / (2 * pos), len(y) / (2 * (len(y) - pos)))
    penalty = np.full(z.shape[1], l2)
    penalty[0] = 0.0    # the intercept is not shrunk
    w = np.zeros(z.shape[1])
    for _ in range(NEWTON_STEPS):
        p = 1 / (1 + np.exp(-z @ w))
        grad = z.T @ (weight * (p - y)) + penalty * w
        hess = (z * (weight * p * (1 - p))[:, None]).T @ z + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return mean, scale, w[1:], float(w[0])


# -- evaluation ----------------------------------------------------------------------------
def probabilities(run: dict, model: Model) -> dict[str, list[tuple[int, float]]]:
    """Per link, (ts_ns, probability the policy sees) at every health reading
    with windows, from the real core replaying the run's trace."""
    start, inputs = trace.read(run["trace"])
    links = replace(start.links, prediction=replace(start.links.prediction, enabled=True,
                                                    threshold=model.threshold), model=model)
    core = Core(replace(start, links=links))
    out: dict[str, list[tuple[int, float]]] = {name: [] for name in links.names}
    for kind, ts_ns, fields in inputs:
        core.consume(kind, ts_ns, fields)
        if kind == "health" and fields.get("windows") is not None:
            for link, name in enumerate(links.names):
                out[name].append((ts_ns, core.links.predictors[link].probability(ts_ns)))
    return out


def alarms(series: list[tuple[int, float]], threshold: float, link_labels: dict) -> list[tuple[int, int]]:
    """[first, last] reading times of each stretch above the threshold,
    readings the labels exclude left out."""
    out: list[list[int]] = []
    above_before = False
    for ts_ns, p in series:
        if predict_traces.label(ts_ns, link_labels) < 0:
            above_before = False
            continue
        above = p > threshold
        if above and above_before:
            out[-1][1] = ts_ns
        elif above:
            out.append([ts_ns, ts_ns])
        above_before = above
    return [tuple(a) for a in out]


def score(runs: list[dict], series: dict[str, dict[str, list[tuple[int, float]]]], threshold: float,
          horizon_ms: int) -> dict:
    """The event-level figures of the module docstring over `runs`, from
    each run's per-link probability series."""
    horizon_ns = horizon_ms * 1_000_000
    leads_ms, failures, true_alarms, all_alarms, benign_alarms, benign_ns = [], 0, 0, 0, 0, 0
    for run in runs:
        if not run["fails"]:   # both links are watched over the same stretch: its time counts once
            watched = next(iter(series[run["name"]].values()))
            benign_ns += watched[-1][0] - watched[0][0] if watched else 0
        for link, s in series[run["name"]].items():
            labels = link_labels(run, link)
            blackholes = [hi for _, hi in labels["positive"]]
            for bh in blackholes:
                failures += 1
                early = [ts for ts, p in s if bh - horizon_ns <= ts < bh and p > threshold]
                if early:
                    leads_ms.append((bh - early[0]) / 1e6)
            found = alarms(s, threshold, labels)
            all_alarms += len(found)
            true_alarms += sum(1 for a, b in found if any(lo <= b and a < hi for lo, hi in labels["positive"]))
            if not run["fails"]:
                benign_alarms += len(found)
    benign_hours = benign_ns / 3.6e12
    return {
        "precision": round(true_alarms / all_alarms, 3) if all_alarms else None,
        "recall": round(len(leads_ms) / failures, 3) if failures else None,
        "median_lead_ms": round(float(np.median(leads_ms)), 1) if leads_ms else None,
        "false_alarms_per_hour": round(benign_alarms / benign_hours, 1) if benign_hours else None,
        "failures": failures, "predicted": len(leads_ms), "alarms": all_alarms, "true_alarms": true_alarms,
        "benign_alarms": benign_alarms, "benign_hours": round(benign_hours, 4),
        "lead_ms": sorted(round(v, 1) for v in leads_ms),
    }


def gray_moved_early(runs: list[dict]) -> dict:
    """Failures the gray detectors (no model) moved orders away from before
    the blackhole, and how long before."""
    leads_ms, failures = [], 0
    for run in runs:
        for episode in run["labels"]["episodes"]:
            if not episode.get("blackhole_ns"):
                continue
            failures += 1
            moves = [m["mono_ns"] for m in run["labels"]["failovers"]
                     if m["class"] == "orders" and m["from"] == predict_traces.LINK and m["cause"] == "gray"
                     and episode["start_ns"] <= m["mono_ns"] < episode["blackhole_ns"]]
            if moves:
                leads_ms.append((episode["blackhole_ns"] - moves[0]) / 1e6)
    return {"failures": failures, "moved_early": len(leads_ms),
            "median_lead_ms": round(float(np.median(leads_ms)), 1) if leads_ms else None}


def evaluate(runs: list[dict], model: Model, series: dict | None = None) -> dict:
    """The figures of `model` on `runs`, replayed through the core (or from
    `series`, their probabilities under this model at any threshold)."""
    series = series or {run["name"]: probabilities(run, model) for run in runs}
    return {**score(runs, series, model.threshold, model.hold_ms), "threshold": model.threshold,
            "horizon_ms": model.hold_ms, "runs": len(runs), "gray_moved_early": gray_moved_early(runs)}


def fresh(lab: topology.Lab, work: Path, fail_runs: int = 1, benign_runs: int = 1, seed: int = 2,
          kinds: list[str] | None = None, advance: Advance = ignore) -> dict:
    """The shipped model on traces recorded now in `lab` (bench/predict_traces.py,
    advance() after each run), from seeds its training never used: the
    bench's detection.model."""
    model, trained = shipped_model(), json.loads(WEIGHTS.read_text())["training"]
    runs = predict_traces.plan(fail_runs, benign_runs, seed, kinds)
    seen = {r["seed"] for r in runs} & {*trained["train_runs"].values(), *trained["held_out_runs"].values()}
    if seen:
        raise ValueError(f"seed {seed} makes runs the shipped model was trained or evaluated on (seeds {sorted(seen)})")
    predict_traces.generate(lab, work, runs, advance)
    return evaluate(load_runs(work), model)


def choose_threshold(runs: list[dict], series: dict, horizon_ms: int) -> float:
    """The threshold of THRESHOLDS with the best event-level F1 on `runs`."""
    best, best_f1 = THRESHOLDS[0], -1.0
    for t in THRESHOLDS:
        s = score(runs, series, t, horizon_ms)
        p, r = s["precision"] or 0.0, s["recall"] or 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        if f1 >= best_f1:
            best, best_f1 = t, f1
    return best


def train(trace_dir: Path, l2: float = L2) -> dict:
    """Train on the training runs, evaluate on the held-out ones; returns
    {"model": Model, "training": ..., "evaluation": ...}."""
    began = time.monotonic()
    runs = load_runs(trace_dir)
    train_runs, held = split(runs)
    horizons = {r["labels"]["horizon_ms"] for r in runs}
    if len(horizons) != 1:
        raise ValueError(f"{trace_dir}: runs labelled with different horizons {sorted(horizons)}")
    (horizon_ms,) = horizons
    data = [rows(r) for r in train_runs]
    x, y = np.vstack([d[0] for d in data]), np.concatenate([d[1] for d in data])
    mean, scale, coef, intercept = fit(x, y, l2)
    model = Model(features=FEATURES, mean=tuple(mean.round(6)), scale=tuple(scale.round(6)),
                  coef=tuple(coef.round(6)), intercept=round(intercept, 6), threshold=0.5, hold_ms=horizon_ms)
    # The probabilities do not depend on the threshold: one replay serves the choice and the fit's figures.
    series = {run["name"]: probabilities(run, model) for run in train_runs}
    model = replace(model, threshold=choose_threshold(train_runs, series, horizon_ms))
    train_fit = evaluate(train_runs, model, series)
    trained_s = time.monotonic() - began
    evaluation = evaluate(held, model)
    return {"model": model, "training": {
        # bench.predict_traces makes each run from its seed (the traces themselves are not shipped).
        "train_runs": {r["name"]: r["seed"] for r in train_runs}, "held_out_runs": {r["name"]: r["seed"] for r in held},
        "rows": len(y), "positive_rows": int(y.sum()), "l2": l2, "class_weights": "balanced",
        "horizon_ms": horizon_ms, "train_fit": train_fit, "seconds": round(trained_s, 1),
        "evaluation_seconds": round(time.monotonic() - began - trained_s, 1)},
        "evaluation": evaluation}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace_dir", type=Path)
    ap.add_argument("--weights", type=Path, default=WEIGHTS, help=f"where to write the weights (default {WEIGHTS})")
    ap.add_argument("--no-write", action="store_true", help="evaluate only; write no weights")
    args = ap.parse_args(argv)
    result = train(args.trace_dir)
    if not args.no_write:
        args.weights.write_text(json.dumps({"model": result["model"].to_json(),
                                            "training": {**result["training"], "evaluation": result["evaluation"]}},
                                           indent=1) + "\n")
    print(json.dumps({**result["evaluation"], "training": result["training"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
