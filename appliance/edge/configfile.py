"""Reading a config file: the I/O around appliance.core.config.parse, and
the shipped failure-prediction weights a config that enables prediction
without its own model gets."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from appliance.core.config import Config, ConfigError, PredictionModel, parse

SHIPPED_MODEL = "predict_weights.json"   # in appliance/core, written by bench/predict_train.py


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}): TOML files are UTF-8") from None
    return with_shipped_model(parse(text, str(path)))


def with_shipped_model(cfg: Config) -> Config:
    """cfg, with the shipped model if prediction is enabled without one."""
    if not cfg.prediction.enabled or cfg.prediction.model is not None:
        return cfg
    raw = json.loads(resources.files("appliance.core").joinpath(SHIPPED_MODEL).read_text())
    prediction = cfg.prediction.model_copy(update={"model": PredictionModel(**raw["model"])})
    return cfg.model_copy(update={"prediction": prediction})
