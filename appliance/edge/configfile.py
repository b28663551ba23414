"""Reading a config file: the I/O around appliance.core.config.parse."""
from __future__ import annotations

from pathlib import Path

from appliance.core.config import Config, ConfigError, parse


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
    return parse(text, str(path))
