"""Failure prediction (appliance.core.predict) and its place in the core:
features on synthetic windows, the shipped model on a creep and on noise,
prediction off changes nothing, replay reproduces predicted moves, and a
prediction never moves a class onto a worse link."""
import json
import random
from dataclasses import replace

import numpy as np
import pytest

from appliance.core.config import ConfigError, parse
from appliance.core.decision import Core, Start, replay
from appliance.core.detect import Window
from appliance.core.feeds import FeedParams
from appliance.core.links import LinkParams
from appliance.core.policy import Prediction
from appliance.core.predict import FEATURES, Bucket, LinkPredictor, Model, features, probability
from appliance.edge import trace
from bench.predict_benefit import prediction_table
from bench.predict_train import WEIGHTS, fit, shipped_model
from lab.topology import render_config

MS = 1_000_000
TICK = 5 * MS
T0 = 1_000 * MS
QUIET_S, CREEP_S = 4.0, 3.0


def window(rng: random.Random, rtt_us: float, loss: float = 0.0, jitter_us: float = 3.0) -> list[int]:
    """One 5 ms reading of a link probed every 1 ms: five probes."""
    lost = sum(rng.random() < loss for _ in range(5))
    rtts = sorted(max(1.0, rtt_us + rng.gauss(0, jitter_us)) * 1000 for _ in range(5 - lost))
    if not rtts:
        return [5, 0, 5, 0, 0, 0, 0, 0, 5]
    spread = rtts[-1] - rtts[0]
    return [5, len(rtts), lost, int(rtts[len(rtts) // 2]), int(rtts[-1]), int(rtts[0]), int(rtts[-1]),
            int(spread / 2), min(lost, 2)]


def creep(seed: int = 1, to_us: float = 1500, to_loss: float = 0.2) -> list[tuple[int, list[int]]]:
    """(ts, link A's window): quiet at 10 us, then RTT and loss creep for CREEP_S."""
    rng, out = random.Random(seed), []
    for i in range(int((QUIET_S + CREEP_S) * 1e9 / TICK)):
        t_s = i * TICK / 1e9
        k = max(0.0, (t_s - QUIET_S) / CREEP_S)
        out.append((T0 + (i + 1) * TICK, window(rng, 10 + k * to_us, k * to_loss)))
    return out


def noisy(seed: int = 2, seconds: float = 20.0) -> list[tuple[int, list[int]]]:
    """Flat 10 us with noise, and now and then a 200 us spike or a lost probe."""
    rng, out = random.Random(seed), []
    for i in range(int(seconds * 1e9 / TICK)):
        spike = 200 if rng.random() < 0.01 else 0
        out.append((T0 + (i + 1) * TICK, window(rng, 10 + spike, 0.002, jitter_us=4)))
    return out


def outputs(series, model=None) -> list[tuple[int, float | None, dict | None]]:
    predictor = LinkPredictor(model)
    return [(ts, predictor.raw, predictor.features) for ts, w in series if predictor.observe(ts, Window(*w))]


# -- features ------------------------------------------------------------------------------
def test_flat_windows_give_flat_features():
    rng = random.Random(3)
    predictor = LinkPredictor(None)
    for i in range(500):
        predictor.observe(T0 + i * TICK, Window(*window(rng, 10, jitter_us=0.0)))
    f = predictor.features
    assert set(f) == set(FEATURES)
    assert predictor.baseline_ns == 10_000
    assert f["rtt_rise"] == f["rtt_climb"] == f["loss_sustained"] == f["jitter"] == f["spread"] == 0.0


def test_a_creep_shows_in_the_rtt_and_loss_trends_and_a_flat_link_does_not():
    (_, _, crept), (_, _, flat) = outputs(creep())[-1], outputs(noisy())[-1]
    assert crept["rtt_rise"] > 2 and crept["rtt_climb"] > 1 and crept["loss_sustained"] > 0.05
    assert abs(flat["rtt_rise"]) < 0.2 and abs(flat["rtt_climb"]) < 0.1 and flat["loss_sustained"] < 0.02


def test_a_step_that_stays_does_not_climb_and_a_burst_is_not_sustained_loss():
    rng = random.Random(4)
    step = [(T0 + (i + 1) * TICK, window(rng, 10 if i < 600 else 800)) for i in range(1000)]
    climbs = [f["rtt_climb"] for _, _, f in outputs(step)]
    assert max(climbs) < 0.1 and outputs(step)[-1][2]["rtt_rise"] > 2
    burst = [(T0 + (i + 1) * TICK, window(rng, 10, 0.3 if 600 <= i < 700 else 0.0)) for i in range(1000)]
    assert max(f["loss_sustained"] for _, _, f in outputs(burst)) == 0.0


def test_a_link_that_goes_silent_is_forgotten_until_it_has_a_new_past():
    series = noisy(seconds=4)
    down = [(series[-1][0] + (i + 1) * TICK, [5, 0, 5, 0, 0, 0, 0, 0, 5]) for i in range(100)]
    back = noisy(seed=5, seconds=2.5)
    back = [(down[-1][0] + ts - T0, w) for ts, w in back]
    model = Model(FEATURES, (0.0,) * len(FEATURES), (1.0,) * len(FEATURES), (0.0,) * len(FEATURES), 1.0, 0.5, 2000)
    predictor = LinkPredictor(model)
    for ts, w in series + down[:19]:
        predictor.observe(ts, Window(*w))
    assert predictor.probability(down[18][0]) > 0.5           # 95 ms silent: still counted
    predictor.observe(down[19][0], Window(*down[19][1]))
    assert predictor.probability(down[19][0]) == 0.0 and not predictor.buckets
    evaluated = [ts for ts, w in back if predictor.observe(ts, Window(*w))]
    assert evaluated and evaluated[0] - back[0][0] >= 1950 * MS


def test_the_rtt_is_in_units_of_the_baseline_but_never_of_less_than_the_floor():
    bucket = {"answered": 5, "lost": 0, "jitter_ns": None, "spread_ns": None}
    flat = [Bucket(mid_ns=T0 + i * 50 * MS, rtt_ns=r, **bucket) for i, r in enumerate([10_000] * 30 + [60_000] * 10)]
    # 50 us above a 10 us baseline: half of the 100 us floor, not five baselines.
    assert features(flat, 10_000, T0 + 40 * 50 * MS)["rtt_rise"] == pytest.approx(0.4812, abs=1e-3)   # asinh(0.5)


def test_no_prediction_before_the_link_has_a_past():
    assert all(ts - T0 >= 2000 * MS for ts, _, _ in outputs(noisy(seconds=3)))


def test_the_logistic_model_is_standardized_and_numerically_safe():
    n = len(FEATURES)
    model = Model(FEATURES, (0.0,) * n, (2.0,) * n, (1.0,) + (0.0,) * (n - 1), -1.0, 0.5, 2000)
    x = dict.fromkeys(FEATURES, 0.0)
    assert probability(x, model) == pytest.approx(1 / (1 + 2.718281828 ** 1))
    assert probability({**x, "rtt_rise": 2.0}, model) == pytest.approx(0.5)
    assert probability({**x, "rtt_rise": 1e6}, model) == 1.0 and probability({**x, "rtt_rise": -1e6}, model) == 0.0
    with pytest.raises(ValueError, match="features"):
        replace(model, features=FEATURES[:-1])


def test_fit_separates_a_separable_set():
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(0, 1, (200, 6)), rng.normal(0, 1, (20, 6)) + 3])
    y = np.concatenate([np.zeros(200), np.ones(20)])
    mean, scale, coef, intercept = fit(x, y)
    z = intercept + ((x - mean) / scale) @ coef
    assert (z[y == 1] > 0).mean() > 0.95 and (z[y == 0] < 0).mean() > 0.95


# -- the shipped model ---------------------------------------------------------------------
def test_the_shipped_model_rises_on_a_creep_and_stays_low_on_noise():
    model = shipped_model()
    assert model.hold_ms == 2000 and json.loads(WEIGHTS.read_text())["training"]["held_out_runs"]
    crept = [p for ts, p, _ in outputs(creep(), model)]
    flat = [p for _, p, _ in outputs(noisy(), model)]
    quiet = [p for ts, p, _ in outputs(creep(), model) if ts < T0 + QUIET_S * 1e9]
    assert max(flat) < model.threshold and max(quiet) < model.threshold
    assert crept[-1] > model.threshold


# -- in the core ---------------------------------------------------------------------------
LINKS = LinkParams(names=["A", "B"], gateways=["198.18.10.2", "198.18.11.2"], class_names=["orders"],
                   class_links=[[0, 1]], dead_ns=3 * MS, holddown_ns=300 * MS, ready_timeout_ns=5000 * MS)
FEEDS = FeedParams(names=[], dsts=[], grace_ns=50 * MS, silence_ns=200 * MS, behind_seqs=100)


def start(links: LinkParams) -> Start:
    return Start(links=links, feeds=FEEDS, carrier=[True, True], nexthop=["02:00:00:00:0a:02", "02:00:00:00:0b:02"],
                 receivers=[], started_ns=T0)


def drive(links: LinkParams, a_series, b_rtt_us: float = 10.0, seed: int = 9, core: Core | None = None):
    """Health readings into a core, A's windows as given, B flat at b_rtt_us,
    orders where the core last put them (as the data path would have it);
    returns (inputs, decisions)."""
    rng, core = random.Random(seed), core or Core(start(links))
    inputs, decisions = [], []
    for ts, w in a_series:
        active = [core.links.classes[0].link or 0]
        inputs.append(("health", ts, {"links": [[ts, T0], [ts, T0]], "active": active,
                                      "windows": [w, window(rng, b_rtt_us)], "sender_late_ns": 0}))
        decisions += core.consume(*inputs[-1])
    return inputs, decisions


def moves(decisions) -> list[tuple[str, str, str]]:
    return [(d.fields["from"], d.fields["to"], d.fields["cause"]) for d in decisions if d.event == "failover"]


# A creep under every gray threshold (0.5 ms, 5 % loss): only a prediction can see it.
GENTLE = creep(to_us=450, to_loss=0.04)
ON = replace(LINKS, prediction=Prediction(enabled=True, threshold=0.5),
             model=Model(FEATURES, (0.0,) * len(FEATURES), (1.0,) * len(FEATURES),
                         tuple(8.0 if f == "rtt_climb" else 0.0 for f in FEATURES), -2.0, 0.5, 2000))


def test_with_prediction_on_a_creeping_link_is_left_early():
    _, decisions = drive(ON, GENTLE)
    assert moves(decisions) == [("A", "B", "predicted")]
    [moved] = [d for d in decisions if d.event == "failover"]
    assert moved.fields["probability"] > 0.5 and moved.ts_ns < GENTLE[-1][0]
    assert set(moved.fields["evidence"]["A"]["prediction"]) == {"probability", "last", "features"}
    assert moves(drive(LINKS, GENTLE)[1]) == []   # reactive: the gray detectors see nothing


def test_prediction_off_changes_no_decision():
    for series in (GENTLE, creep(), noisy(seconds=6)):
        inputs, without = drive(LINKS, series)
        off = list(replay(start(replace(ON, prediction=Prediction(enabled=False))), inputs))
        assert [d.record() for d in off] == [d.record() for d in without]
    assert moves(without) == [] and moves(drive(LINKS, creep())[1]) == [("A", "B", "gray")]


def test_replay_of_a_recorded_trace_reproduces_its_predicted_moves(tmp_path):
    inputs, live = drive(ON, GENTLE)
    path = tmp_path / "trace.jsonl"
    recorder = trace.Recorder(path, start(ON))
    for kind, ts, fields in inputs:
        recorder.input(kind, ts, fields)
    recorder.close()
    recorded_start, recorded = trace.read(path)
    assert recorded_start.links.model == ON.model   # the weights travel with the trace
    again = list(replay(recorded_start, recorded))
    assert [d.record() for d in again] == [d.record() for d in live] and moves(live) == [("A", "B", "predicted")]


def test_a_prediction_never_moves_a_class_onto_a_worse_link():
    # B is slower than A ever gets: a predicted failure of A is no reason to go there.
    assert moves(drive(ON, GENTLE, b_rtt_us=2000)[1]) == []


def test_an_outside_prediction_still_counts_beside_the_model():
    core = Core(start(ON))
    assert moves(drive(ON, GENTLE[:400], b_rtt_us=5, core=core)[1]) == []   # quiet: the model sees nothing
    assert core.consume("predict", GENTLE[399][0], {"link": 0, "probability": 0.99}) == []
    assert moves(drive(ON, GENTLE[400:401], b_rtt_us=5, core=core)[1]) == [("A", "B", "predicted")]


# -- configuration -------------------------------------------------------------------------
def model_table(model: Model, **changes) -> str:
    raw = {**model.to_json(), **changes}
    return "[prediction.model]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in raw.items())


def test_the_config_takes_a_model_and_its_threshold():
    model = ON.model
    cfg = parse(render_config() + "\n[prediction]\nenabled = true\n" + model_table(model))
    params = cfg.link_params(5000 * MS)
    assert params.model == model and params.prediction == Prediction(enabled=True, threshold=model.threshold)
    explicit = parse(render_config() + "\n[prediction]\nenabled = true\nthreshold = 0.7\n" + model_table(model))
    assert explicit.link_params(5000 * MS).prediction.threshold == 0.7
    assert parse(render_config()).link_params(5000 * MS).model is None


@pytest.mark.parametrize("changes, where", [
    ({"features": ["rtt_rise"]}, "prediction.model.features"),
    ({"coef": [1.0]}, "prediction.model.coef"),
    ({"scale": [0.0] * len(FEATURES)}, "prediction.model.scale"),
])
def test_the_config_refuses_a_model_that_does_not_fit(changes, where):
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        parse(render_config() + "\n[prediction]\nenabled = true\n" + model_table(ON.model, **changes))


def test_the_shipped_weights_load_as_the_benchs_config_table():
    cfg = parse(render_config() + prediction_table(shipped_model()))
    assert cfg.link_params(5000 * MS).model == shipped_model() and cfg.prediction.enabled
