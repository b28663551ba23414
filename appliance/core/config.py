"""Daemon configuration: a TOML file validated into typed objects.

Every error names the file, the offending key (e.g. `rules.2.ports`) and the
reason, so an operator can fix the file without reading code; a bad file never
reaches the data path. Types are strict: TOML already has integers, floats,
booleans and strings, so `interval_us = "1000"` or `1000.0` is a mistake to
report, not to guess at. Settings that depend on this host (devices, its
addresses, the key file) are checked by appliance.edge.preflight before the daemon
attaches anything.
"""
from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from appliance import layout
from appliance.core import policy
from appliance.core.classify import compile_rules
from appliance.core.damping import DampingParams
from appliance.core.detect import DetectParams
from appliance.core.links import LinkParams
from appliance.core.predict import FEATURES, Model

# The feed protocols arbitration parses (layout.FEED_PROTOCOLS).
FeedProtocol = Literal["moldudp64", "mdp3"]
PORTS_RE = re.compile(r"[0-9]{1,5}(-[0-9]{1,5})?")   # matched whole (fullmatch), ASCII digits only
# Floats accept TOML integers (grace_ms = 20) but never strings or booleans.
StrictFloat = Annotated[float, Strict()]

_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_RESERVED = ipaddress.IPv4Network("240.0.0.0/4")
_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class ConfigError(ValueError):
    pass


class _Problems(ValueError):
    """Cross-reference problems found by a model validator, each with the
    key path it concerns (relative to the model's own location)."""

    def __init__(self, items: list[tuple[str, str]]):
        super().__init__("; ".join(f"{where}: {msg}" for where, msg in items))
        self.items = items


def _describe(value) -> str:
    """A TOML-ish rendering of a value and its type, for error messages."""
    kind = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)
    shown = str(value).lower() if isinstance(value, bool) else repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({kind})"


def unusable_unicast(addr: ipaddress.IPv4Address) -> str | None:
    """Why `addr` cannot be a heartbeat target or next hop, or None if it can."""
    if addr == _LIMITED_BROADCAST:
        return f"{addr} is the limited broadcast address: it is never one host, no reply can be attributed"
    if addr.is_unspecified:
        return f"{addr} is unspecified: no reply can come from it"
    if addr in _THIS_NETWORK:
        return f"{addr} is in 0.0.0.0/8 ('this network', RFC 1122): a source only, never a destination"
    if addr.is_loopback:
        return f"{addr} is loopback (127.0.0.0/8): it never leaves this host"
    if addr.is_multicast:
        return f"{addr} is multicast: a heartbeat target or next hop must be one unicast host"
    if addr.is_link_local:
        return f"{addr} is link-local (169.254.0.0/16): use the address the carrier assigned to the link"
    if addr in _RESERVED:
        return f"{addr} is reserved (240.0.0.0/4): no host can use it"
    return None


def _ipv4(value) -> ipaddress.IPv4Address:
    if not isinstance(value, str):
        raise ValueError(f'must be a string like "198.18.10.2", got {_describe(value)}')
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f'{value!r} is not an IPv4 address (dotted quad like "198.18.10.2")') from None


def _unicast(value) -> ipaddress.IPv4Address:
    addr = _ipv4(value)
    reason = unusable_unicast(addr)
    if reason:
        raise ValueError(reason)
    return addr


def _absolute_path(v: str | None) -> str | None:
    if v is not None and (not v or "\0" in v or not v.startswith("/")):
        raise ValueError(f"must be an absolute path, got {v!r}")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Heartbeat(_Strict):
    interval_us: StrictInt = Field(1000, ge=100, le=1_000_000, description="probe period per link")
    multiplier: StrictInt = Field(3, ge=2, le=255, description="missed periods that make a link stale")
    holddown_ms: StrictInt = Field(1000, ge=0, le=3_600_000,
                                   description="preferred link must be fresh this long before failback")
    key_file: StrictStr | None = Field(None, description="heartbeat SipHash keys (appliance.edge.keys); "
                                                         "absent: a random key per run")
    sender_priority: StrictInt = Field(10, ge=0, le=99,
                                       description="SCHED_FIFO priority of the probe sender process (with [pair], "
                                                   "the pair thread runs one below it and the daemon's other "
                                                   "threads at 1), so a busy host cannot hold them off the CPU; "
                                                   "0: normal scheduling")

    @field_validator("key_file")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        return _absolute_path(v)

    @property
    def dead_ns(self) -> int:
        return self.interval_us * self.multiplier * 1000


class Steer(_Strict):
    ingress: StrictStr = Field(min_length=1, max_length=15, description="trader-facing interface")
    xdp: StrictBool = Field(False, description="also steer at the ingress's XDP hook, before the kernel builds "
                                               "an skb, to links whose device takes XDP redirects (TC steers the "
                                               "rest). Only where frames reach the ingress with complete L4 "
                                               "checksums, as from a NIC: XDP forwards a local sender's "
                                               "offloaded (partial) checksum as it is")


class LinkConfig(_Strict):
    name: StrictStr = Field(pattern=r"^[A-Za-z0-9_.-]{1,15}$")
    dev: StrictStr = Field(min_length=1, max_length=15)
    target: ipaddress.IPv4Address = Field(description="heartbeat target, by default the far end")
    nexthop: ipaddress.IPv4Address | None = Field(None, description="L2 next hop; defaults to target")
    ttl_security: StrictBool = Field(False, description="GTSM (RFC 5082): heartbeat replies must arrive "
                                                        "with TTL 255; only for a directly connected target")

    @field_validator("target", "nexthop", mode="before")
    @classmethod
    def _usable(cls, v):
        return _unicast(v)

    @field_validator("ttl_security")
    @classmethod
    def _directly_connected(cls, v: bool, info: ValidationInfo) -> bool:
        target, nexthop = info.data.get("target"), info.data.get("nexthop")
        if v and nexthop is not None and target is not None and nexthop != target:
            raise ValueError(f"needs a directly connected target, but target {target} is reached via "
                             f"nexthop {nexthop}: its replies arrive with TTL below 255")
        return v

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.nexthop or self.target


class ClassConfig(_Strict):
    name: StrictStr = Field(pattern=r"^[A-Za-z0-9_.-]{1,31}$")
    links: list[StrictStr] = Field(min_length=1, max_length=layout.MAX_LINKS,
                                   description="links in preference order; the first is preferred")
    policy: Literal["active-backup", "lowest-latency"] = Field(
        "active-backup", description="active-backup: links in preference order; lowest-latency: the healthy "
                                     "link with the lowest RTT")
    preempt: StrictBool = Field(True, description="active-backup: fail back to a more preferred link once it has "
                                                  "held fresh for the hold-down; false: stay until the backup fails")
    hysteresis_us: StrictInt = Field(50, ge=0, le=1_000_000,
                                     description="lowest-latency: a link must be faster by more than this ...")
    hysteresis_ratio: StrictFloat = Field(0.2, ge=0, le=10, description="... and than this share of the current RTT")
    confirm: StrictInt = Field(10, ge=1, le=100_000,
                               description="lowest-latency: health readings in a row a faster link must stay faster")
    min_dwell_ms: StrictInt = Field(1000, ge=0, le=3_600_000,
                                    description="lowest-latency: never move a class sooner than this after it moved")

    @field_validator("links")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("a link appears twice")
        return v

    @model_validator(mode="after")
    def _keys_of_its_policy(self):
        only = {"preempt": policy.ACTIVE_BACKUP, "hysteresis_us": policy.LOWEST_LATENCY,
                "hysteresis_ratio": policy.LOWEST_LATENCY, "confirm": policy.LOWEST_LATENCY,
                "min_dwell_ms": policy.LOWEST_LATENCY}
        problems = [(key, f'applies only to policy = "{wanted}", and this class has policy = "{self.policy}"')
                    for key, wanted in only.items() if key in self.model_fields_set and wanted != self.policy]
        if problems:
            raise _Problems(problems)
        return self

    @property
    def params(self) -> policy.ClassPolicy:
        return policy.ClassPolicy(policy=self.policy, preempt=self.preempt, hysteresis_ns=self.hysteresis_us * 1000,
                                  hysteresis_ratio=self.hysteresis_ratio, confirm=self.confirm,
                                  min_dwell_ns=self.min_dwell_ms * 1_000_000)


class RuleConfig(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    class_name: StrictStr = Field(alias="class")
    dst: ipaddress.IPv4Network
    proto: Literal["any", "icmp", "tcp", "udp"] = "any"
    ports: int | str | None = Field(None, description='destination port N or range "LO-HI"')

    @field_validator("dst", mode="before")
    @classmethod
    def _strict_prefix(cls, v):
        if not isinstance(v, str):
            raise ValueError(f'must be a string like "198.19.0.0/24", got {_describe(v)}')
        try:
            return ipaddress.IPv4Network(v, strict=True)
        except ValueError as e:
            raise ValueError(f"not an IPv4 prefix: {e}") from None

    @field_validator("ports", mode="plain")
    @classmethod
    def _ports(cls, v, info: ValidationInfo):
        if info.data.get("proto") == "icmp":
            raise ValueError("ports make no sense for icmp")
        if isinstance(v, int) and not isinstance(v, bool):
            if not 0 <= v <= 65535:
                raise ValueError(f"port {v} is not within 0-65535")
            return v
        if not isinstance(v, str):
            raise ValueError(f'must be a port number or a string "LO-HI", got {_describe(v)}')
        if not PORTS_RE.fullmatch(v):
            raise ValueError(f'must be "N" or "LO-HI" in decimal digits (no sign, space or _), got {v!r}')
        lo, _, hi = v.partition("-")
        if not 0 <= int(lo) <= int(hi or lo) <= 65535:
            raise ValueError(f"port range {v!r} is not within 0-65535 with lo <= hi")
        return v

    @property
    def port_range(self) -> tuple[int, int]:
        if self.ports is None:
            return 0, 65535
        lo, _, hi = str(self.ports).partition("-")
        return int(lo), int(hi or lo)


class Arbitration(_Strict):
    lines: list[StrictStr] = Field(["A", "B"], min_length=2, max_length=2,
                                   description="links carrying line A and line B of every feed")
    grace_ms: StrictFloat = Field(20.0, gt=0, le=10_000,
                                  description="a gap the other line fills within this long counts as filled")
    silence_ms: StrictFloat = Field(50.0, gt=0, le=60_000,
                                    description="a line this quiet while its peer flows is reported silent")
    behind_seqs: StrictInt = Field(1000, ge=1, description="a line this many sequences behind its peer is reported")
    heartbeat_dedup_ms: StrictFloat = Field(50.0, gt=0, le=10_000,
                                            description="a heartbeat this soon after a forwarded one is its copy")


class Detection(_Strict):
    """Gray-failure detectors (appliance.core.detect); readings come every
    5 ms."""
    rtt_margin_us: StrictInt = Field(500, ge=1, le=10_000_000,
                                     description="the rtt detector trips on a window median above the link's "
                                                 "baseline by more than this ...")
    rtt_margin_ratio: StrictFloat = Field(1.0, ge=0, le=100, description="... and than this share of the baseline")
    loss_window: StrictInt = Field(200, ge=10, le=100_000, description="probes the loss fraction is taken over")
    loss_threshold: StrictFloat = Field(0.05, gt=0, lt=1, description="the loss detector trips above this fraction")
    loss_burst: StrictInt = Field(2, ge=1, le=100_000, description="... or on a run of more lost probes than this")
    jitter_threshold_us: StrictInt = Field(250, ge=1, le=10_000_000, description="the jitter detector trips above")
    quorum: StrictInt = Field(2, description="detectors (of rtt, loss, jitter, feed) that must agree")
    confirm: StrictInt = Field(4, ge=1, le=100_000, description="readings in a row they must agree to declare gray")
    clear: StrictInt = Field(200, ge=1, le=1_000_000,
                             description="readings in a row without a quorum that clear a gray link")
    stall_ms: StrictFloat = Field(10.0, gt=0, le=60_000,
                                  description="a probe sender this late is a host stall: no verdicts for as long")
    baseline_s: StrictInt = Field(60, ge=1, le=86_400, description="a link's RTT baseline is its lowest window "
                                                                   "median over this long")

    @field_validator("quorum")
    @classmethod
    def _two_to_four(cls, v: int) -> int:
        if not 2 <= v <= 4:
            raise ValueError(f"must be 2, 3 or 4 (of the detectors rtt, loss, jitter and feed; one alone is noise "
                             f"and never moves traffic), got {v}")
        return v

    @property
    def params(self) -> DetectParams:
        return DetectParams(rtt_margin_ns=self.rtt_margin_us * 1000, rtt_margin_ratio=self.rtt_margin_ratio,
                            loss_window=self.loss_window, loss_threshold=self.loss_threshold,
                            loss_burst=self.loss_burst, jitter_threshold_ns=self.jitter_threshold_us * 1000,
                            quorum=self.quorum, confirm=self.confirm, clear=self.clear,
                            stall_ns=int(self.stall_ms * 1e6), baseline_ns=self.baseline_s * 1_000_000_000)


class Damping(_Strict):
    """Flap damping (appliance.core.damping, which says what the defaults give)."""
    enabled: StrictBool = Field(True, description="false: a flapping link is never suppressed")
    penalty: StrictInt = Field(1000, ge=1, le=1_000_000, description="added to a link's figure of merit per flap")
    suppress: StrictInt = Field(2000, ge=1, le=1_000_000, description="above this the link is suppressed")
    reuse: StrictInt = Field(750, ge=1, le=1_000_000, description="below this a suppressed link is reusable")
    half_life_s: StrictFloat = Field(15.0, gt=0, le=86_400, description="the figure of merit halves this often")
    max_suppress_s: StrictFloat = Field(60.0, gt=0, le=86_400, description="no suppression lasts longer")

    @model_validator(mode="after")
    def _can_suppress_and_reuse(self):
        problems = []
        if self.reuse >= self.suppress:
            problems.append(("reuse", f"must be below suppress ({self.suppress}), got {self.reuse}"))
        half_lives = self.max_suppress_s / self.half_life_s
        if half_lives > 100:
            problems.append(("max_suppress_s", (f"at most 100 half-lives ({100 * self.half_life_s:g} s), got "
                                                f"{self.max_suppress_s:g}: the figure of merit's cap grows as "
                                                f"2^(max_suppress_s / half_life_s)")))
        elif self.reuse < self.suppress and half_lives <= math.log2(self.suppress / self.reuse):
            # The figure of merit is capped where it decays to reuse in max_suppress_s.
            needed = self.half_life_s * math.log2(self.suppress / self.reuse)
            problems.append(("max_suppress_s", (f"must be above {needed:.1f} s: the figure of merit is capped "
                                                f"where it decays to reuse in max_suppress_s, and that cap must "
                                                f"be above suppress or no link is ever suppressed")))
        if problems:
            raise _Problems(problems)
        return self

    @property
    def params(self) -> DampingParams:
        return DampingParams(enabled=self.enabled, penalty=float(self.penalty), suppress=float(self.suppress), reuse=float(self.reuse),
                             half_life_ns=int(self.half_life_s * 1e9), max_suppress_ns=int(self.max_suppress_s * 1e9))


class PredictionModel(_Strict):
    """A trained failure-prediction model (appliance.core.predict.Model):
    the "model" object of bench/predict_train.py's weights file, as a table."""
    features: list[StrictStr]
    mean: list[StrictFloat]
    scale: list[StrictFloat]
    coef: list[StrictFloat]
    intercept: StrictFloat
    threshold: StrictFloat = Field(gt=0, lt=1, description="its operating point, chosen in training")
    hold_ms: StrictInt = Field(ge=0, le=60_000, description="how long a prediction stands: its horizon")

    @model_validator(mode="after")
    def _fits(self):
        if self.features != list(FEATURES):
            raise _Problems([("features", (f"must be {list(FEATURES)} (what this twinpath computes), "
                                           f"got {self.features}"))])
        problems = [(key, f"must have {len(FEATURES)} values, got {len(getattr(self, key))}")
                    for key in ("mean", "scale", "coef") if len(getattr(self, key)) != len(FEATURES)]
        if not problems and not all(s > 0 for s in self.scale):
            problems.append(("scale", "every value must be above 0"))
        if problems:
            raise _Problems(problems)
        return self

    @property
    def params(self) -> Model:
        return Model(features=tuple(self.features), mean=tuple(self.mean), scale=tuple(self.scale),
                     coef=tuple(self.coef), intercept=self.intercept, threshold=self.threshold,
                     hold_ms=self.hold_ms)


class Prediction(_Strict):
    """Failure prediction (appliance.core.policy, appliance.core.predict):
    off unless enabled. Enabled with a model, each link's probability comes
    from its own probe windows; without one, only from the "predict" input."""
    enabled: StrictBool = Field(False, description="let a link's predicted failure move classes early")
    threshold: StrictFloat = Field(0.9, gt=0, lt=1, description="a prediction above this probability counts "
                                                                "(default with a model: the model's own)")
    model: PredictionModel | None = None

    @property
    def params(self) -> policy.Prediction:
        threshold = self.model.threshold if self.model and "threshold" not in self.model_fields_set \
            else self.threshold
        return policy.Prediction(enabled=self.enabled, threshold=threshold)


class Control(_Strict):
    """The operator's Unix socket (appliance.edge.control): root only."""
    socket: StrictStr | None = Field(None, description="its path; absent: /run/twinpath/control-<netns inode>.sock, "
                                                       "the one `twinpath status` finds from the same namespace")

    @field_validator("socket")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        _absolute_path(v)
        if v is not None and (len(v.encode()) > 107 or v.endswith("/")):
            raise ValueError(f"must be a file path of at most 107 bytes (a Unix socket's limit), got {v!r}")
        return v


class Metrics(_Strict):
    """The Prometheus endpoint (appliance.edge.metrics), on 127.0.0.1 only."""
    port: StrictInt = Field(9464, ge=0, le=65535, description="TCP port on 127.0.0.1; 0: no endpoint")


class State(_Strict):
    """Where the data path's state lives between daemons (appliance.edge.pins)."""
    pin_dir: StrictStr | None = Field(None, description="bpffs directory of the pinned programs and maps; absent: "
                                                        "/sys/fs/bpf/twinpath/gw-<netns inode>")
    on_stop: Literal["fail-static", "detach"] = Field(
        "fail-static", description="what SIGTERM leaves: the data path forwarding on its last state, "
                                   "or nothing of twinpath (as `twinpath detach`)")

    @field_validator("pin_dir")
    @classmethod
    def _under_bpffs(cls, v: str | None) -> str | None:
        _absolute_path(v)
        if v is not None and (not v.startswith("/sys/fs/bpf/") or "/." in v or v.rstrip("/") == "/sys/fs/bpf"):
            raise ValueError(f"must be a directory under /sys/fs/bpf/ (no '.' or '..' parts), got {v!r}")
        return v


class Pair(_Strict):
    """Host failover between two gateways (appliance.core.pair): the active
    owns the virtual address; etcd is the witness and issues fencing tokens."""
    node: StrictStr = Field(pattern=r"^[A-Za-z0-9_.-]{1,31}$", description="this gateway's name in the pair")
    peer: StrictStr = Field(pattern=r"^[A-Za-z0-9_.-]{1,31}$", description="the other gateway's name")
    vip: ipaddress.IPv4Interface = Field(description="virtual gateway address/prefix the active owns on "
                                                     "steer.ingress, e.g. 198.18.1.254/24")
    peer_links: list[StrictStr] = Field(min_length=2, max_length=4, description=(
        "heartbeat-only links to the peer on independent paths (LAN, crosslink): the peer is dead only "
        "when every one of them is"))
    lan_links: list[StrictStr] = Field(min_length=1, max_length=4, description=(
        "links whose freshness proves this gateway is on the trader LAN (the peer's LAN path, an anchor): "
        "with none fresh it steps down and is never eligible"))
    witness: list[StrictStr] = Field(min_length=1, max_length=5, description="etcd client URLs")
    prefix: StrictStr = Field(pattern=r"^/[A-Za-z0-9_./-]{1,200}$", description="the pair's etcd key prefix")
    lease_s: StrictInt = Field(2, ge=1, le=60, description="etcd lease of this node's published state")
    preempt: StrictBool = Field(False, description="take ownership back from a healthy peer (the node is "
                                                   "primary) after hold_down_ms of being eligible")
    hold_down_ms: StrictInt = Field(5000, ge=0, le=3_600_000,
                                    description="preempt only after this long eligible and owning nothing")

    @field_validator("vip", mode="before")
    @classmethod
    def _vip(cls, v):
        if not isinstance(v, str):
            raise ValueError(f'must be an address with its prefix length as a string (e.g. "198.18.1.254/24"), '
                             f"got {_describe(v)}")
        try:
            iface = ipaddress.IPv4Interface(v)
        except ValueError:
            raise ValueError(f"{v!r} is not an IPv4 address with a prefix length") from None
        if "/" not in v or iface.network.prefixlen > 30:
            raise ValueError(f"{v!r}: give the LAN's prefix length (/30 or shorter), as on the interface")
        reason = unusable_unicast(iface.ip)
        if reason or iface.ip in (iface.network.network_address, iface.network.broadcast_address):
            raise ValueError(reason or f"{iface.ip} is the network or broadcast address of {iface.network}")
        return iface

    @field_validator("witness")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if not re.fullmatch(r"https?://[A-Za-z0-9.:\[\]-]+(:[0-9]{1,5})?/?", url):
                raise ValueError(f"{url!r} is not an etcd client URL like http://198.18.41.100:2379")
        return v

    @model_validator(mode="after")
    def _two_nodes(self):
        if self.node == self.peer:
            raise ValueError(f"node and peer are both {self.node!r}")
        if len(set(self.peer_links)) != len(self.peer_links):
            raise ValueError("peer_links: a link appears twice")
        return self


class FeedConfig(_Strict):
    name: StrictStr = Field(pattern=r"^[A-Za-z0-9_.-]{1,31}$")
    protocol: FeedProtocol
    dst: ipaddress.IPv4Address = Field(description="destination address or multicast group")
    port: StrictInt = Field(ge=1, le=65535)

    @field_validator("dst", mode="before")
    @classmethod
    def _address(cls, v):
        return _ipv4(v)


def _duplicates(values: list, first_path) -> list[tuple[str, str]]:
    """(path of each repeat, what it repeats) for values seen before."""
    seen: dict = {}
    found = []
    for i, v in enumerate(values):
        if v in seen:
            found.append((first_path(i), v, first_path(seen[v])))
        else:
            seen[v] = i
    return found


class Config(_Strict):
    heartbeat: Heartbeat = Heartbeat()
    steer: Steer
    links: list[LinkConfig] = Field(min_length=1, max_length=layout.MAX_LINKS)
    classes: list[ClassConfig] = Field(min_length=1, max_length=layout.MAX_CLASSES)
    rules: list[RuleConfig] = Field(default_factory=list)
    arbitration: Arbitration = Arbitration()
    feeds: list[FeedConfig] = Field(default_factory=list, max_length=layout.ARB_FEEDS)
    detection: Detection = Detection()
    damping: Damping = Damping()
    prediction: Prediction = Prediction()
    control: Control = Control()
    metrics: Metrics = Metrics()
    state: State = State()
    pair: Pair | None = None
    _source: str = PrivateAttr("<config>")

    @property
    def source(self) -> str:
        """The file this configuration came from, for error messages."""
        return self._source

    @model_validator(mode="after")
    def _references(self):
        problems: list[tuple[str, str]] = []
        for field, kind, values in (("name", "link name", [l.name for l in self.links]),
                                    ("dev", "link dev", [l.dev for l in self.links])):
            for where, v, first in _duplicates(values, lambda i, f=field: f"links.{i}.{f}"):
                problems.append((where, f"duplicate {kind} {v!r} (also {first})"))
        for where, v, first in _duplicates([c.name for c in self.classes], lambda i: f"classes.{i}.name"):
            problems.append((where, f"duplicate class name {v!r} (also {first})"))
        for i, l in enumerate(self.links):
            if l.dev == self.steer.ingress:
                problems.append(("steer.ingress", f"{l.dev!r} is also a link (links.{i}.dev)"))
        links = list(dict.fromkeys(l.name for l in self.links))
        for ci, c in enumerate(self.classes):
            for li, n in enumerate(c.links):
                if n not in links:
                    problems.append((f"classes.{ci}.links.{li}",
                                     f"unknown link {n!r}; links are {', '.join(links)}"))
        classes = list(dict.fromkeys(c.name for c in self.classes))
        for i, r in enumerate(self.rules):
            if r.class_name not in classes:
                problems.append((f"rules.{i}.class",
                                 f"unknown class {r.class_name!r}; classes are {', '.join(classes)}"))
        if self.pair:
            in_class = {n for c in self.classes for n in c.links}
            for key in ("peer_links", "lan_links"):
                for i, n in enumerate(getattr(self.pair, key)):
                    if n not in links:
                        problems.append((f"pair.{key}.{i}", f"unknown link {n!r}; links are {', '.join(links)}"))
                    elif n in in_class:
                        problems.append((f"pair.{key}.{i}", f"{n!r} carries class traffic; pair paths are "
                                                            f"heartbeat-only links"))
            if not set(self.pair.lan_links) - set(self.pair.peer_links):
                problems.append(("pair.lan_links", "needs a link that is not a peer link (an anchor on the LAN): "
                                                   "without one, a gateway cut off the LAN cannot tell that from "
                                                   "its peer's death"))
            if not in_class - set(self.pair.peer_links) - set(self.pair.lan_links):
                problems.append(("pair", "no order link: some class must use a link that is not a pair path"))
        if self.feeds:
            lines = self.arbitration.lines
            if any(n not in links for n in lines) or lines[0] == lines[1]:
                problems.append(("arbitration.lines",
                                 f"must name two different links (of {', '.join(links)}), got {lines}"))
            for where, v, first in _duplicates([f.name for f in self.feeds], lambda i: f"feeds.{i}.name"):
                problems.append((where, f"duplicate feed name(s): {v} (also {first})"))
            for where, v, first in _duplicates([f"{f.dst}:{f.port}" for f in self.feeds], lambda i: f"feeds.{i}"):
                problems.append((where, f"duplicate feed destination(s): {v} (also {first})"))
        if problems:
            raise _Problems(problems)
        return self

    def link_index(self, name: str) -> int:
        return [l.name for l in self.links].index(name)

    def class_index(self, name: str) -> int:
        return [c.name for c in self.classes].index(name)

    def link_params(self, ready_timeout_ns: int) -> LinkParams:
        """What the link core decides with (appliance.core.links)."""
        hb = self.heartbeat
        return LinkParams(names=[l.name for l in self.links], gateways=[str(l.gateway) for l in self.links],
                          class_names=[c.name for c in self.classes],
                          class_links=[[self.link_index(n) for n in c.links] for c in self.classes],
                          dead_ns=hb.dead_ns, holddown_ns=hb.holddown_ms * 1_000_000,
                          ready_timeout_ns=ready_timeout_ns, class_policies=[c.params for c in self.classes],
                          detection=self.detection.params, damping=self.damping.params,
                          prediction=self.prediction.params,
                          model=self.prediction.model.params if self.prediction.model else None)


_PLAIN_MESSAGES = {
    "int_type": "must be an integer (TOML integer: no quotes, no decimal point)",
    "float_type": "must be a number (no quotes)",
    "string_type": "must be a string (in quotes)",
    "bool_type": "must be true or false (no quotes)",
    "list_type": "must be an array",
    "model_type": "must be a table",
    "extra_forbidden": "unknown key (not part of the configuration format)",
    "missing": "required key is missing",
}


def _error_lines(e: ValidationError) -> list[str]:
    lines = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _Problems):
            lines += [f"  {'.'.join(p for p in (where, sub) if p)}: {msg}" for sub, msg in cause.items]
            continue
        msg = _PLAIN_MESSAGES.get(err["type"]) or err["msg"].removeprefix("Value error, ")
        if err["type"].endswith("_type") or err["type"] == "literal_error":
            msg += f", got {_describe(err['input'])}"
        lines.append(f"  {where or '(top level)'}: {msg}")
    return lines


def parse(text: str, source: str = "<config>") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError("\n".join([f"{source}: invalid configuration:", *_error_lines(e)])) from None
    try:
        compile_rules(cfg)
    except ValueError as e:
        raise ConfigError(f"{source}: rules: {e}") from None
    cfg._source = source
    return cfg

