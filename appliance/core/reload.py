"""What `twinpath reload` (and SIGHUP) changes, and whether it can be applied
live: plan(old, new) compares two validated configurations, no I/O.

A reload is all or nothing: an invalid file never gets here (parse refuses it
and the old configuration keeps running), and a plan with one change that
cannot be applied live is refused whole, naming the key and saying why.

Each change is applied one of these ways, lightest first; each includes what
the lighter ones do:

  core      nothing in the data path changes: the decision core gets its new
            parameters, the daemon its own settings
  maps      map contents are rewritten: a link's entry, classes, rules, keys,
            feeds
  programs  a compile-time constant changed: the programs are recompiled and
            replace the attached ones
  restart   cannot be applied live

Differences are found generically: both configurations as dumped, walked into
dotted paths as pydantic names errors (classes.0.links), each looked up in
_RULES. The rules name every key explicitly, so a key added to the
configuration later is refused ("no live rule for this key") until it gets a
rule here, never applied live by accident.

The heartbeat key file's contents are not part of the configuration: a reload
re-reads the file whatever this plan says (rotating keys keeps its path).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from appliance.core.config import Config

How = Literal["core", "maps", "programs", "restart"]

RESTART = "restart the daemon (fail static keeps forwarding meanwhile)"
NO_RULE = "no live rule for this key"


def _show(value: Any) -> str:
    """A dumped value as the file writes it (strings unquoted), cut to fit a log line."""
    if isinstance(value, bool):
        shown = "true" if value else "false"
    elif isinstance(value, list):
        shown = "[" + ", ".join(map(_show, value)) + "]"
    elif isinstance(value, dict):  # TOML has no null: unset keys are left out
        shown = "{" + ", ".join(f"{k} = {_show(v)}" for k, v in value.items() if v is not None) + "}"
    else:
        shown = str(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


@dataclass(frozen=True)
class Change:
    path: str      # as pydantic names errors: "classes.0.links", "detection.confirm"
    old: Any       # as dumped (JSON types); None: absent (an item added, a key unset)
    new: Any
    how: How
    reason: str    # what applying it does, or why it cannot be applied live
    item: str = ""  # the named item the path is in: "link B", "class orders"

    @property
    def where(self) -> str:
        return f"{self.path} ({self.item})" if self.item else self.path

    @property
    def what(self) -> str:
        if self.old is None:
            return f"added {_show(self.new)}"
        if self.new is None:
            return f"removed {_show(self.old)}"
        return f"changed {_show(self.old)} -> {_show(self.new)}"


@dataclass(frozen=True)
class ReloadPlan:
    changes: list[Change]
    refused: list[str]  # one line per "restart" change: the key, what changed, why

    @property
    def live(self) -> bool:
        return all(c.how != "restart" for c in self.changes)

    @property
    def empty(self) -> bool:
        return not self.changes

    def summary(self) -> str:
        """One line per change, for the CLI and the log."""
        return "\n".join(f"{c.where}: {c.what} [{c.how}: {c.reason}]" for c in self.changes) or "no changes"


@dataclass(frozen=True)
class _Rule:
    paths: tuple[str, ...]  # dotted; "*" matches any one segment (a list index)
    how: How
    reason: str
    appended: bool = False  # only for an item appended to a list


def _keys(table: str, *names: str) -> tuple[str, ...]:
    return tuple(f"{table}.{n}" for n in names)


_LINK_IDS = ("links are added, removed, renamed and reordered only by a restart: a link's id (its place in the list) "
             "indexes the data path's maps and the sender's probes, and each link has its own heartbeat programs "
             "and probe socket")
_CLASS_IDS = ("classes are added, removed, renamed and reordered only by a restart: a class's id (its place in the "
              "list) indexes the classes, active and counters maps, the compiled rules and the core's class state")
_FEED_IDS = ("feeds are removed, changed and reordered only by a restart: a feed's id (its place in the list) "
             "indexes its sequence state and counters, which a removed feed's successor would inherit")

# First match wins.
_RULES = (
    # Heartbeat timing is compiled into the steer program and every link's
    # heartbeat programs, which are separate filters, and is fixed in the
    # probe sender (its period) and the core (dead interval, probe windows).
    # They cannot all change at one instant; in between, the reflex would
    # judge one period's replies by the other's dead interval and missed
    # probes. Replacing them live would be a restart's whole sequence (new
    # maps, sender and windows; steering once the links answer) off its
    # tested path, so it is a restart, which adopts where each class runs.
    _Rule(_keys("heartbeat", "interval_us", "multiplier"), "restart",
          "heartbeat timing is compiled into the steer and every link's heartbeat programs and fixed in the probe "
          "sender, which cannot all change at one instant"),
    _Rule(("heartbeat.holddown_ms",), "core", "the failback hold-down is the decision core's"),
    _Rule(("heartbeat.key_file",), "maps",
          "the keys map is rewritten from the file: the first key signs, all verify, so keep the old key second "
          "for replies to probes signed before the reload"),
    # sched_setscheduler works on another thread by its id; refused, it is a
    # warning, as at start.
    _Rule(("heartbeat.sender_priority",), "core", "the daemon sets the running probe sender process's scheduling, and with [pair] its own threads'"),
    _Rule(("steer.ingress",), "restart", "the steer program is attached to the ingress device"),
    _Rule(("steer.xdp",), "restart", "XDP steering is attached, or not, with the steer program at start"),
    _Rule(("links.*", "links.*.name"), "restart", _LINK_IDS),
    _Rule(("links.*.dev",), "restart",
          "a link's device cannot change live (its programs and probe socket are bound to it)"),
    _Rule(("links.*.target",), "restart",
          "the link's probe socket is connected to the target, from the source address routed to it"),
    _Rule(("links.*.nexthop",), "maps",
          "the link's map entry gets the new next hop's MAC, and the core watches the new address"),
    _Rule(("links.*.ttl_security",), "maps", "a flag in the link's map entry"),
    _Rule(("classes.*", "classes.*.name"), "restart", _CLASS_IDS),
    _Rule(("classes.*.links",), "maps", "the class's map entry is rewritten and the core decides with the new links"),
    _Rule(_keys("classes.*", "policy", "preempt", "hysteresis_us", "hysteresis_ratio", "confirm", "min_dwell_ms"),
          "core", "a class's policy is the decision core's (the data path knows only its links)"),
    _Rule(("rules.*", *_keys("rules.*", "class", "dst", "proto", "ports")), "maps",
          "the rule trie is rewritten from the compiled rules"),
    _Rule(("arbitration.lines",), "restart",
          "the arbitration programs are attached to the lines' devices, and line A and B index every feed's state"),
    _Rule(_keys("arbitration", "grace_ms", "silence_ms", "behind_seqs"), "core",
          "the feed core's judgement of gaps and lines"),
    # A line's XDP program is replaced in one step, but the two lines one
    # after the other: meanwhile a packet may pass on both, which the
    # trader's handler skips as when a feed passes to kernel routing.
    _Rule(("arbitration.heartbeat_dedup_ms",), "programs",
          "compiled into the arbitration programs: recompiled, the feeds rewritten, and replaced line by line"),
    _Rule(("feeds.0",), "restart",
          "the first feed loads and attaches the arbitration programs on both lines: that is a start",
          appended=True),
    _Rule(("feeds.*",), "maps", "the appended feed takes the next id: its map entry is written, no id moves",
          appended=True),
    _Rule(("feeds.*", *_keys("feeds.*", "name", "protocol", "dst", "port")), "restart", _FEED_IDS),
    _Rule(_keys("detection", "rtt_margin_us", "rtt_margin_ratio", "loss_window", "loss_threshold", "loss_burst",
                "jitter_threshold_us", "quorum", "confirm", "clear", "stall_ms", "baseline_s"), "core",
          "gray-failure detection is the decision core's"),
    _Rule(_keys("damping", "enabled", "penalty", "suppress", "reuse", "half_life_s", "max_suppress_s"), "core",
          "flap damping is the decision core's"),
    _Rule(("prediction.enabled", "prediction.threshold", "prediction.model",
           *_keys("prediction.model", "features", "mean", "scale", "coef", "intercept", "threshold", "hold_ms")),
          "core", "failure prediction is the decision core's"),
    _Rule(("control.socket",), "restart", "operators' commands, this reload among them, reach the daemon through it"),
    # A reload applies all or nothing; a port in use would fail it after the
    # data path had changed.
    _Rule(("metrics.port",), "restart", "the endpoint is bound once, at start"),
    _Rule(("state.pin_dir",), "restart", "the running data path's programs and maps are pinned there"),
    _Rule(("state.on_stop",), "core", "the daemon reads it only when it stops"),
    _Rule(("pair", "pair.*"), "restart",
          "the pair's names, paths and witness are fixed for a daemon's run; a restart keeps the gate and the "
          "virtual address as they are (fail static) and reads the witness again"),
)

_IDLE_ARBITRATION = "arbitration does not run without feeds; the value applies when feeds are added (by a restart)"
_NAMED_ITEMS = {"links": "link", "classes": "class", "feeds": "feed"}


def _matches(pattern: str, path: str) -> bool:
    want, have = pattern.split("."), path.split(".")
    return len(want) == len(have) and all(w in ("*", h) for w, h in zip(want, have))


def _rule(path: str, old: Any) -> _Rule | None:
    """The first rule for path; old is None for an item appended to a list."""
    for rule in _RULES:
        if (old is None or not rule.appended) and any(_matches(p, path) for p in rule.paths):
            return rule
    return None


def _dump(cfg: Config) -> dict[str, Any]:
    """The configuration as plain values, keys as the file spells them (a rule's "class")."""
    raw = cfg.model_dump(mode="json", by_alias=True)
    # The threshold in effect: a model's own unless the file sets one, which
    # the dumped value (the default either way) cannot tell apart.
    raw["prediction"]["threshold"] = cfg.prediction.params.threshold
    return raw


def _diff(old: Any, new: Any, path: str = "", item: str = ""):
    """(path, old, new, item) for each difference. Tables and arrays of tables
    are walked (an item added or removed is one difference, None on its
    missing side); any other value, e.g. a class's links, differs whole."""
    if old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in dict.fromkeys([*old, *new]):
            yield from _diff(old.get(key), new.get(key), f"{path}.{key}" if path else key, item)
    elif isinstance(old, list) and isinstance(new, list) and any(isinstance(v, dict) for v in old + new):
        kind = path.rpartition(".")[2]
        for i in range(max(len(old), len(new))):
            a, b = (old[i] if i < len(old) else None), (new[i] if i < len(new) else None)
            name = (a or b).get("name")  # the running one's, if it has the item
            yield from _diff(a, b, f"{path}.{i}", f"{_NAMED_ITEMS.get(kind, kind)} {name}" if name else item)
    else:
        yield path, old, new, item


def plan(old: Config, new: Config) -> ReloadPlan:
    """How going from the running configuration `old` to `new` is applied."""
    changes = []
    for path, a, b, item in _diff(_dump(old), _dump(new)):
        rule = _rule(path, a)
        if rule is None:
            how, reason = "restart", NO_RULE
        elif path.startswith("arbitration.") and not old.feeds:
            how, reason = "core", _IDLE_ARBITRATION
        else:
            how, reason = rule.how, rule.reason
        changes.append(Change(path, a, b, how, reason, item))
    refused = [f"{c.where}: {c.what}: {c.reason}; {RESTART}" for c in changes if c.how == "restart"]
    return ReloadPlan(changes, refused)
