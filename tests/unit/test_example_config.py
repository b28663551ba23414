"""The shipped example config (examples/twinpath.toml) cannot drift from the
format: it loads as the daemon loads a config, it has every section of
Config and shows every key of each (set, or commented out), and every
"(default: X)" it states is the model's real default."""
import ipaddress
import re
import tomllib
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from appliance.core.config import Config
from appliance.edge.configfile import load

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "twinpath.toml"
# A table header, also commented out ("# [prediction.model]").
HEADER = re.compile(r"^#?\s*\[(\[?)([A-Za-z_][A-Za-z0-9_.]*)\]\]?\s*(#.*)?$")
# A key line at column 0, also commented out ("# key_file = ..."), with its comment.
KEY = re.compile(r"^(#\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*([^#]*?)\s*(?:#\s*(.*))?$")
CONTINUATION = re.compile(r"^\s+#\s?(.*)$")  # an indented comment line continues the key line above it
DEFAULT = re.compile(r"\(default: ([^()]*)\)")


def _model(annotation) -> type[BaseModel] | None:
    """The model a field holds: X, list[X] or X | None."""
    candidates = [annotation, *typing.get_args(annotation)]
    for a in candidates:
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
        for b in typing.get_args(a):
            if isinstance(b, type) and issubclass(b, BaseModel):
                return b
    return None


def _section_model(dotted: str) -> type[BaseModel]:
    model: type[BaseModel] = Config
    for part in dotted.split("."):
        assert part in model.model_fields, f"[{dotted}] is not a section of the format"
        model = _model(model.model_fields[part].annotation)
        assert model is not None, f"[{dotted}] is a key, not a table"
    return model


def _fields(model: type[BaseModel]) -> dict[str, object]:
    """Key name as written in TOML (the alias, e.g. rules' `class`) -> field."""
    return {f.alias or name: f for name, f in model.model_fields.items()}


def _key_lines() -> list[tuple[str, str, bool, str, int]]:
    """(section, key, commented out, its comment with continuation lines, line number)."""
    found: list[list] = []
    section, continues = None, False
    for n, line in enumerate(EXAMPLE.read_text().splitlines(), start=1):
        if m := HEADER.match(line):
            section, continues = m.group(2), False
        elif continues and (m := CONTINUATION.match(line)):
            found[-1][3] = f"{found[-1][3]} {m.group(1)}".strip()
        elif (m := KEY.match(line)) and section is not None:
            found.append([section, m.group(2), bool(m.group(1)), (m.group(4) or "").strip(), n])
            continues = True
        else:
            continues = False
    return [tuple(f) for f in found]


def _headers(active_only: bool) -> set[str]:
    return {m.group(2) for line in EXAMPLE.read_text().splitlines()
            if (m := HEADER.match(line)) and not (active_only and line.startswith("#"))}


def test_example_loads_as_the_daemon_loads_it():
    cfg = load(EXAMPLE)
    assert cfg.source == str(EXAMPLE)
    assert [l.name for l in cfg.links] == ["A", "B"]
    assert {c.name: (c.policy, c.links) for c in cfg.classes} == {
        "orders": ("active-backup", ["A", "B"]), "marketdata": ("active-backup", ["B", "A"]),
        "quotes": ("lowest-latency", ["A", "B"])}
    assert {(f.name, f.protocol) for f in cfg.feeds} == {("itch", "moldudp64"), ("mdp3", "mdp3")}
    assert cfg.arbitration.lines == ["A", "B"]
    assert cfg.rules and all(r.class_name in {c.name for c in cfg.classes} for r in cfg.rules)
    assert not cfg.prediction.enabled
    assert cfg.state.on_stop == "fail-static"   # what the systemd unit's stop behaviour relies on


def test_every_top_level_section_of_the_format_is_in_the_example():
    """Set, or commented out where the section is absent by default ([pair])."""
    optional = {name for name, f in Config.model_fields.items() if not f.is_required() and f.default is None}
    raw = tomllib.loads(EXAMPLE.read_text())
    assert set(Config.model_fields) - optional - set(raw) == set(), \
        "sections of Config missing from examples/twinpath.toml"
    assert set(Config.model_fields) - _headers(active_only=False) == set()
    assert optional - _headers(active_only=True) == optional, "an optional section is set in the example"


def test_every_key_of_every_section_is_shown():
    shown: dict[str, set[str]] = {}
    for section, key, _, _, _ in _key_lines():
        shown.setdefault(section, set()).add(key)
    headers = _headers(active_only=False)
    for section in headers:
        model = _section_model(section)
        nested = {name for name, f in _fields(model).items() if _model(f.annotation) is not None}
        missing = set(_fields(model)) - nested - shown.get(section, set())
        assert not missing, f"[{section}] in examples/twinpath.toml does not show {sorted(missing)}"
        for name in nested:
            assert f"{section}.{name}" in headers, f"[{section}.{name}] is not shown"


def test_every_key_line_is_a_key_of_its_section_and_says_its_default():
    lines = _key_lines()
    assert lines
    for section, key, commented, comment, n in lines:
        where = f"examples/twinpath.toml:{n} [{section}] {key}"
        fields = _fields(_section_model(section))
        assert key in fields, f"{where}: not a key of the format"
        field = fields[key]
        stated = DEFAULT.search(comment)
        if field.is_required():
            assert "(required)" in comment and not stated, f"{where}: a required key must say (required)"
            continue
        assert stated, f"{where}: the comment must state the default as (default: X)"
        text = stated.group(1).strip()
        if text.startswith("absent"):
            assert field.default is None, f"{where}: says absent by default, but the default is {field.default!r}"
        else:
            assert tomllib.loads(f"v = {text}")["v"] == field.default, \
                f"{where}: says default {text}, but the default is {field.default!r}"


@pytest.mark.parametrize("address", sorted(set(re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", EXAMPLE.read_text()))))
def test_example_addresses_are_benchmarking_space(address):
    """Only RFC 2544 space (198.18.0.0/15), as everywhere in this project;
    127.0.0.1 is named only as where the metrics endpoint listens."""
    ip = ipaddress.ip_address(address)
    assert ip in ipaddress.ip_network("198.18.0.0/15") or str(ip) == "127.0.0.1"
