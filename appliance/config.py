"""Daemon configuration: a TOML file validated into typed objects.

Every error names the offending key (e.g. `rules.2.ports`) so an operator can
fix the file without reading code; a bad file never reaches the data path.
"""
from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from appliance import layout
from appliance.feedproto import Protocol

PROTOCOLS = {"any": 0, "icmp": 1, "tcp": 6, "udp": 17}


class ConfigError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Heartbeat(_Strict):
    interval_us: int = Field(1000, ge=100, le=1_000_000, description="probe period per link")
    multiplier: int = Field(3, ge=2, le=255, description="missed periods that make a link stale")
    holddown_ms: int = Field(1000, ge=0, le=3_600_000,
                             description="preferred link must be fresh this long before failback")

    @property
    def dead_ns(self) -> int:
        return self.interval_us * self.multiplier * 1000


class Steer(_Strict):
    ingress: str = Field(min_length=1, max_length=15, description="trader-facing interface")


class LinkConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,15}$")
    dev: str = Field(min_length=1, max_length=15)
    target: ipaddress.IPv4Address = Field(description="heartbeat target, by default the far end")
    nexthop: ipaddress.IPv4Address | None = Field(None, description="L2 next hop; defaults to target")

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.nexthop or self.target


class ClassConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,31}$")
    links: list[str] = Field(min_length=1, max_length=layout.MAX_LINKS,
                             description="links in preference order; the first is preferred")

    @field_validator("links")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("a link appears twice")
        return v


class RuleConfig(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    class_name: str = Field(alias="class")
    dst: ipaddress.IPv4Network
    proto: Literal["any", "icmp", "tcp", "udp"] = "any"
    ports: str | int | None = Field(None, description='destination port or range "lo-hi"')

    @field_validator("dst", mode="before")
    @classmethod
    def _strict_prefix(cls, v):
        try:
            return ipaddress.IPv4Network(v, strict=True)
        except ValueError as e:
            raise ValueError(f"not an IPv4 prefix: {e}") from None

    @property
    def port_range(self) -> tuple[int, int]:
        if self.ports is None:
            return 0, 65535
        text = str(self.ports)
        lo, _, hi = text.partition("-")
        return int(lo), int(hi or lo)

    @model_validator(mode="after")
    def _ports(self):
        if self.ports is None:
            return self
        if self.proto == "icmp":
            raise ValueError("ports make no sense for icmp")
        try:
            lo, hi = self.port_range
        except ValueError:
            raise ValueError(f'ports must be "N" or "LO-HI", got {self.ports!r}') from None
        if not 0 <= lo <= hi <= 65535:
            raise ValueError(f"port range {self.ports!r} is not within 0-65535 with lo <= hi")
        return self


class Arbitration(_Strict):
    lines: list[str] = Field(["A", "B"], min_length=2, max_length=2,
                             description="links carrying line A and line B of every feed")
    grace_ms: float = Field(20.0, gt=0, le=10_000,
                            description="a gap the other line fills within this long counts as filled")
    silence_ms: float = Field(50.0, gt=0, le=60_000,
                              description="a line this quiet while its peer flows is reported silent")
    behind_seqs: int = Field(1000, ge=1, description="a line this many sequences behind its peer is reported")
    heartbeat_dedup_ms: float = Field(50.0, gt=0, le=10_000,
                                      description="a heartbeat this soon after a forwarded one is its copy")


class FeedConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,31}$")
    protocol: Protocol
    dst: ipaddress.IPv4Address = Field(description="destination address or multicast group")
    port: int = Field(ge=1, le=65535)


class Config(_Strict):
    heartbeat: Heartbeat = Heartbeat()
    steer: Steer
    links: list[LinkConfig] = Field(min_length=1, max_length=layout.MAX_LINKS)
    classes: list[ClassConfig] = Field(min_length=1, max_length=layout.MAX_CLASSES)
    rules: list[RuleConfig] = Field(default_factory=list)
    arbitration: Arbitration = Arbitration()
    feeds: list[FeedConfig] = Field(default_factory=list, max_length=layout.ARB_FEEDS)

    @model_validator(mode="after")
    def _references(self):
        for kind, names in (("link", [l.name for l in self.links]),
                            ("link dev", [l.dev for l in self.links]),
                            ("class", [c.name for c in self.classes])):
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"duplicate {kind} name(s): {', '.join(sorted(dup))}")
        if self.steer.ingress in {l.dev for l in self.links}:
            raise ValueError(f"steer.ingress {self.steer.ingress!r} is also a link")
        links = {l.name for l in self.links}
        for c in self.classes:
            unknown = [n for n in c.links if n not in links]
            if unknown:
                raise ValueError(f"class {c.name!r} names unknown link(s): {', '.join(unknown)}")
        classes = {c.name for c in self.classes}
        for i, r in enumerate(self.rules):
            if r.class_name not in classes:
                raise ValueError(f"rules[{i}] names unknown class {r.class_name!r}")
        if self.feeds:
            lines = self.arbitration.lines
            unknown = [n for n in lines if n not in links]
            if unknown or lines[0] == lines[1]:
                raise ValueError(f"arbitration.lines must name two different links, got {lines}")
            names = [f.name for f in self.feeds]
            dests = [f"{f.dst}:{f.port}" for f in self.feeds]
            for what, values in (("feed name", names), ("feed destination", dests)):
                dup = {v for v in values if values.count(v) > 1}
                if dup:
                    raise ValueError(f"duplicate {what}(s): {', '.join(sorted(dup))}")
        return self

    def link_index(self, name: str) -> int:
        return [l.name for l in self.links].index(name)

    def class_index(self, name: str) -> int:
        return [c.name for c in self.classes].index(name)


def parse(text: str, source: str = "<config>") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        lines = [f"{source}: invalid configuration:"]
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {where}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("\n".join(lines)) from None
    from appliance.classify import compile_rules  # capacity limits live with the compiler
    try:
        compile_rules(cfg)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    return parse(text, str(path))
