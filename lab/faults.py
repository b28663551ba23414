"""Fault injection on the lab's carrier links.

The kernel has no netem, so loss and blackholes come from lab/ebpf/fault.c, TC
classifiers on both directions of each carrier's gw-facing veth (carA `gwA`,
carB `gwB`). Its config and counter maps are pinned under
/sys/fs/bpf/twinpath/<lab>/fault_<carrier>_{cfg,stats}: the TC filters keep the
program and maps alive after the loading process exits, and any process (the
scenario runner, the CLI) can flip a fault through the pins.

Faults per link ("A" or "B"), with their parameters:
  carrier-down  the carrier's gw-facing veth goes admin down, so gw's link loses carrier
                (clear brings it up and restores the carrier routes the kernel deleted)
  blackhole     every packet on the link is dropped, both ways; gw keeps carrier
  blackhole-tx  only what gw sends is dropped (orders, heartbeat probes): a dead send path
  blackhole-rx  only what comes to gw is dropped (replies, market data): a dead receive path
  loss          probability: each packet is dropped with it; burst N (optional): a
                dropped packet starts a burst that also drops the next N-1 of its direction
The gray faults below run a helper process in the carrier's namespace:
  delay         delay_us: added one-way latency on what comes to gw (heartbeat replies,
                market data, acks); ramp_to_us and ramp_s (optional, together): the
                delay moves linearly to ramp_to_us over ramp_s seconds, then stays
  jitter        jitter_us: a uniform 0..jitter_us on top of delay_us (default 0) per
                packet, never reordering (a packet waits for the one before it)
  flap          down_ms, up_ms: blackhole for down_ms, pass for up_ms, again; count
                (cycles) and duration_s (optional) end it, in the up state; carrier
                (optional, bool): take the veth admin down instead of black-holing
  creep-then-blackhole  creep_s, creep_delay_us, creep_loss: what comes to gw is
                delayed from 0 up to creep_delay_us and lost from 0 up to creep_loss,
                linearly over creep_s, then the link black-holes both ways until cleared
Every gray fault takes max_s (default HELPER_MAX_S): its helper's longest life.
delay, jitter and creep-then-blackhole hand what goes to gw to lab.delayline,
through a veth pair in the carrier namespace (DELAY mode in fault.c); flap is
lab.flapper writing the fault map (or the veth's admin state) on a schedule.
Both record their transitions, CLOCK_MONOTONIC, in events(): flap's "down"
and "up", creep's "blackhole", and every helper's "exit" with its counts.

Everything but carrier-down shares the link's one fault map: injecting one
replaces another (stopping the helper of a gray fault), and clearing any of
them restores pass-through.

inject() and clear() return time.monotonic_ns() taken just before the change
becomes visible to the kernel, so detection times measured from it are never
flattered.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from pyroute2 import IPRoute

from appliance.edge import bpfsys
from appliance.edge.netlink import TC_EGRESS, TC_INGRESS, ifindex
from lab import labbpf, layout, libbpf
from lab.colo import LINKS, Lab, LabError, LinkSpec, carrier_routes_via_gw

FAULTS = ("carrier-down", "blackhole", "blackhole-tx", "blackhole-rx", "loss",
          "delay", "jitter", "flap", "creep-then-blackhole")
MODE_PASS, MODE_LOSS, MODE_DELAY = layout.C["TP_FAULT_PASS"], layout.C["TP_FAULT_LOSS"], layout.C["TP_FAULT_DELAY"]
BLACKHOLES = {name: layout.C["TP_FAULT_" + name.upper().replace("-", "_")]
              for name in ("blackhole", "blackhole-tx", "blackhole-rx")}
MODE_BLACKHOLE = BLACKHOLES["blackhole"]
DELAY_MARK = layout.C["TP_FAULT_DELAY_MARK"]
# The gray faults' helper processes.
HELPERS = {"delay": "lab.delayline", "jitter": "lab.delayline", "creep-then-blackhole": "lab.delayline",
           "flap": "lab.flapper"}
HELPER_MAX_S = 600.0
HELPER_READY_S = 20.0   # a helper starts in about 0.5 s, several on a loaded 2-core machine
HELPER_STOP_S = 5.0
# fault -> (required parameters, optional ones with their defaults)
PARAMS: dict[str, tuple[tuple[str, ...], dict]] = {
    "loss": (("probability",), {"burst": 1}),
    "delay": (("delay_us",), {"ramp_to_us": None, "ramp_s": None, "max_s": HELPER_MAX_S}),
    "jitter": (("jitter_us",), {"delay_us": 0, "max_s": HELPER_MAX_S}),
    "flap": (("down_ms", "up_ms"), {"count": None, "duration_s": None, "carrier": False, "max_s": HELPER_MAX_S}),
    "creep-then-blackhole": (("creep_s", "creep_delay_us", "creep_loss"), {"max_s": HELPER_MAX_S}),
}
# parameter -> (accepts the value, what it must be)
_VALID = {
    **dict.fromkeys(("probability", "creep_loss"), (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]")),
    **dict.fromkeys(("delay_us", "ramp_to_us", "creep_delay_us"),
                    (lambda v: _integer(v) and v >= 0, "an integer >= 0")),
    **dict.fromkeys(("burst", "jitter_us", "down_ms", "up_ms", "count"),
                    (lambda v: _integer(v) and v >= 1, "an integer >= 1")),
    **dict.fromkeys(("ramp_s", "duration_s", "creep_s", "max_s"), (lambda v: _number(v) and v > 0, "a number > 0")),
    "carrier": (lambda v: isinstance(v, bool), "True or False"),
}
IFF_UP = 1
PR_SET_TIMERSLACK = 29
HELPER_PRIORITY = 5     # SCHED_FIFO; the daemon's probe sender runs at 10
_ZERO_KEY = ctypes.c_uint32(0)


def cfg_pin(lab: Lab, link: str) -> Path:
    return lab.pin_dir / f"fault_{_link(link).carrier}_cfg"


def stats_pin(lab: Lab, link: str) -> Path:
    return lab.pin_dir / f"fault_{_link(link).carrier}_stats"


def helper_state_path(lab: Lab, link: str) -> Path:
    """The running gray fault's record (fault, params, pid), for clear(), active() and status."""
    return lab.dir / f"fault-{_link(link).name}.json"


def events_path(lab: Lab, link: str) -> Path:
    return lab.dir / f"fault-{_link(link).name}.events.jsonl"


def attach(lab: Lab) -> None:
    """Load fault.c onto every carrier's gw-facing veth and pin its maps (done by lab up)."""
    for link in LINKS.values():
        labbpf.attach_pinned(lab, "fault.c", {TC_INGRESS: "fault_from_gw", TC_EGRESS: "fault_to_gw"},
                             {"fault_cfg": cfg_pin(lab, link.name), "fault_stats": stats_pin(lab, link.name)},
                             link.carrier, link.carrier_dev)


def inject(lab: Lab, fault: str, link: str, probability: float | None = None, **params) -> int:
    """Start a fault on link "A" or "B" with its parameters (see the module
    docstring); loss needs a drop probability in [0, 1]."""
    spec = _link(link)
    if probability is not None:
        params["probability"] = probability
    params = _checked_params(fault, params)
    if fault == "carrier-down":
        return _set_carrier_admin(lab, spec, up=False)
    _stop_helper(lab, spec)
    events_path(lab, spec.name).unlink(missing_ok=True)
    if fault in BLACKHOLES:
        return _write_cfg(lab, spec, layout.FaultConfig(BLACKHOLES[fault]))
    if fault == "loss":
        # Drop when prandom_u32 < threshold: p * 2^32, capped to fit a u32.
        threshold = min(round(params["probability"] * 2**32), 2**32 - 1)
        return _write_cfg(lab, spec, layout.FaultConfig(MODE_LOSS, threshold, params["burst"]))
    return _start_helper(lab, spec, fault, params)


def clear(lab: Lab, fault: str, link: str) -> int:
    """End a fault on link "A" or "B" (clearing one that is not active is harmless)."""
    spec = _link(link)
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; expected one of {', '.join(FAULTS)}")
    if fault == "carrier-down":
        return _set_carrier_admin(lab, spec, up=True)
    stopping_ns = time.monotonic_ns()
    stopped = _stop_helper(lab, spec)
    cleared_ns = _write_cfg(lab, spec, layout.FaultConfig(MODE_PASS))
    if stopped and stopped["params"].get("carrier"):
        _set_carrier_admin(lab, spec, up=True)
    # A stopping delay line restores pass-through itself, before clear's own write.
    return stopping_ns if stopped else cleared_ns


def active(lab: Lab) -> dict[str, dict[str, bool | float | dict]]:
    """Active faults per link, e.g. {"A": {"blackhole": True}, "B": {"loss": 0.05}};
    loss with bursts as {"probability": p, "burst": n}, a gray fault as its
    parameters plus "running" (its helper is alive) and for flap "down", for
    creep-then-blackhole "blackhole_ns" (None until the blackhole began)."""
    result: dict[str, dict[str, bool | float | dict]] = {}
    for name, spec in LINKS.items():
        faults: dict[str, bool | float | dict] = {}
        with lab.iproute(spec.carrier) as ipr:
            (carrier_dev,) = ipr.get_links(ifname=spec.carrier_dev)
        carrier_up = bool(carrier_dev["flags"] & IFF_UP)
        if not carrier_up:
            faults["carrier-down"] = True
        cfg = read_cfg(lab, name)
        helper = _helper_state(lab, spec)
        running = helper is not None and _running(helper)
        blackhole = next((name for name, mode in BLACKHOLES.items() if mode == cfg.mode), None)
        if helper and (running or cfg.mode != MODE_PASS):
            report = {**helper["params"], "running": running}
            if helper["fault"] == "flap":
                report["down"] = not carrier_up if helper["params"]["carrier"] else cfg.mode == MODE_BLACKHOLE
            if helper["fault"] == "creep-then-blackhole":
                report["blackhole_ns"] = next((e["mono_ns"] for e in events(lab, name)
                                               if e["event"] == "blackhole"), None)
            faults[helper["fault"]] = report
        elif blackhole:
            faults[blackhole] = True
        elif cfg.mode == MODE_LOSS:
            probability = round(cfg.loss_threshold / 2**32, 6)
            faults["loss"] = {"probability": probability, "burst": cfg.burst_len} if cfg.burst_len > 1 \
                else probability
        result[name] = faults
    return result


def counters(lab: Lab, link: str) -> dict[str, int]:
    """Packets the injector on a link has passed, dropped and handed to the
    delay line (both directions, all CPUs; the delay line's own sends count
    as passed)."""
    per_cpu = (layout.FaultCounters * libbpf.possible_cpus())()
    with _pinned(stats_pin(lab, link)) as fd:
        bpfsys.map_lookup(fd, _ZERO_KEY, per_cpu)
    return {field: sum(getattr(c, field) for c in per_cpu) for field, _ in layout.FaultCounters._fields_}


def events(lab: Lab, link: str) -> list[dict]:
    """What the link's latest fault recorded, in order: {"mono_ns", "event", ...}
    (kept after clear, until the next fault on the link; only gray faults record)."""
    try:
        text = events_path(lab, link).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines()]


def read_cfg(lab: Lab, link: str) -> layout.FaultConfig:
    cfg = layout.FaultConfig()
    with _pinned(cfg_pin(lab, link)) as fd:
        bpfsys.map_lookup(fd, _ZERO_KEY, cfg)
    return cfg


def write_cfg(lab: Lab, link: str, cfg: layout.FaultConfig) -> int:
    """Replace the link's fault config; returns the time just before."""
    return _write_cfg(lab, _link(link), cfg)


def set_carrier_admin(ipr: IPRoute, spec: LinkSpec, up: bool) -> int:
    """Set the carrier's gw-facing veth admin up or down through ipr, a handle
    in the carrier's namespace; returns the time just before."""
    index = ifindex(ipr, spec.carrier_dev)
    started_ns = time.monotonic_ns()
    ipr.link("set", index=index, state="up" if up else "down")
    if up:
        # Taking the veth down made the kernel delete the carrier's routes through it.
        for route in carrier_routes_via_gw(spec):
            ipr.route("replace", **route)
    return started_ns


def helper_argv(fault: str, params: dict) -> list[str]:
    """The helper's options for a gray fault (lab.delayline's or lab.flapper's)."""
    if fault == "creep-then-blackhole":
        line = {"delay_us": 0, "ramp_to_us": params["creep_delay_us"], "ramp_s": params["creep_s"],
                "ramp_loss": params["creep_loss"], "blackhole_after_ramp": True}
    else:
        line = params
    argv = ["--max-s", str(params["max_s"])]
    for name, value in line.items():
        if name == "max_s" or value is None or value is False:
            continue
        argv += [f"--{name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return argv


# ---------------------------------------------------------------- the helpers' side

class HelperStop:
    """Set by SIGTERM/SIGINT in a helper process: its loop ends at the next wake-up."""
    requested = False


def helper_setup() -> None:
    """A helper process's first step: SIGTERM/SIGINT set HelperStop, and its
    sleeps end on time (timer slack 1 ns, not the default 50 µs) and are not
    stretched by a loaded host (SCHED_FIFO, below the probe sender's): a
    carrier's delay does not wait for a CPU, and a delay line that did would
    turn a 1 ms delay into an occasional 4 ms silence, a dead link."""
    def request_stop(_signum, _frame) -> None:
        HelperStop.requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(HELPER_PRIORITY))


def record_event(lab: Lab, link: str, event: str, mono_ns: int, **fields) -> None:
    with events_path(lab, link).open("a") as out:
        out.write(json.dumps({"mono_ns": mono_ns, "event": event, **fields}) + "\n")


def announce(started_ns: int) -> None:
    """A helper's one line to inject(): the fault is visible since started_ns.
    Then stdout goes nowhere: inject() has stopped listening."""
    print(json.dumps({"ready": True, "pid": os.getpid(), "started_ns": started_ns}), flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# ---------------------------------------------------------------- internals

def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_params(fault: str, params: dict) -> dict:
    """params with the fault's defaults filled in; ValueError names what is wrong."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; expected one of {', '.join(FAULTS)}")
    required, optional = PARAMS.get(fault, ((), {}))
    unknown = set(params) - set(required) - set(optional)
    missing = [name for name in required if name not in params]
    if unknown or missing:
        takes = ", ".join([*required, *(f"{name} (optional)" for name in optional)]) or "no parameters"
        raise ValueError(f"{fault} takes {takes}; got {', '.join(sorted(params)) or 'none'}")
    for name, value in params.items():
        accepts, expected = _VALID[name]
        if not accepts(value):
            raise ValueError(f"{fault}: {name} must be {expected}, got {value!r}")
    if ("ramp_to_us" in params) != ("ramp_s" in params):
        raise ValueError("delay: ramp_to_us and ramp_s go together")
    if fault == "creep-then-blackhole" and params.get("max_s", HELPER_MAX_S) <= params["creep_s"]:
        raise ValueError("creep-then-blackhole: max_s must exceed creep_s")
    return {**optional, **params}


def _start_helper(lab: Lab, spec: LinkSpec, fault: str, params: dict) -> int:
    """Start the gray fault's helper in the carrier's namespace and return the
    time it reports, taken just before its first change to the link."""
    argv = [sys.executable, "-m", HELPERS[fault], "--lab", lab.name, "--link", spec.name,
            *helper_argv(fault, params)]
    log_path = lab.dir / f"fault-{spec.name}.log"
    with open(log_path, "w") as log:
        # setsid -f: the helper outlives this process and is never its child to reap.
        proc = lab.spawn(spec.carrier, ["setsid", "-f", *argv], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=log, text=True)
    with proc:
        line = proc.stdout.readline() if select.select([proc.stdout], [], [], HELPER_READY_S)[0] else ""
    reply = json.loads(line) if line.startswith("{") else {}
    if not reply.get("ready"):
        raise LabError(f"{fault} on link {spec.name}: its helper did not start "
                       f"({reply.get('error') or line.strip() or 'no answer'}): {log_path.read_text()[-2000:]}")
    state = {"fault": fault, "params": params, "pid": reply["pid"], "start_ticks": _start_ticks(reply["pid"]),
             "started_ns": reply["started_ns"]}
    path = helper_state_path(lab, spec.name)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(state) + "\n")
    tmp.replace(path)
    return reply["started_ns"]


def _helper_state(lab: Lab, spec: LinkSpec) -> dict | None:
    try:
        return json.loads(helper_state_path(lab, spec.name).read_text())
    except FileNotFoundError:
        return None


def _stop_helper(lab: Lab, spec: LinkSpec) -> dict | None:
    """SIGTERM the link's helper, if any, and wait until it is gone (SIGKILL
    if it takes longer than HELPER_STOP_S); returns its record."""
    state = _helper_state(lab, spec)
    if state is None:
        return None
    for sig, wait_s in ((signal.SIGTERM, HELPER_STOP_S), (signal.SIGKILL, 1.0)):
        if not _running(state):
            break
        os.kill(state["pid"], sig)
        deadline = time.monotonic() + wait_s
        while _running(state) and time.monotonic() < deadline:
            time.sleep(0.01)
    if _running(state):
        raise LabError(f"link {spec.name}: helper pid {state['pid']} survived SIGKILL")
    helper_state_path(lab, spec.name).unlink(missing_ok=True)
    return state


def _running(state: dict) -> bool:
    # The start time tells the helper from a later process that reused its pid.
    return state["start_ticks"] is not None and _start_ticks(state["pid"]) == state["start_ticks"]


def _start_ticks(pid: int) -> int | None:
    """A live process's start time (clock ticks since boot); None once it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    state, *rest = stat[stat.rindex(")") + 2:].split()
    return None if state in ("Z", "X") else int(rest[18])


def _link(link: str) -> LinkSpec:
    try:
        return LINKS[link]
    except KeyError:
        raise ValueError(f"unknown link {link!r}; expected one of {', '.join(LINKS)}") from None


def _set_carrier_admin(lab: Lab, spec: LinkSpec, up: bool) -> int:
    with lab.iproute(spec.carrier) as ipr:
        return set_carrier_admin(ipr, spec, up)


def _write_cfg(lab: Lab, spec: LinkSpec, cfg: layout.FaultConfig) -> int:
    with _pinned(cfg_pin(lab, spec.name)) as fd:
        started_ns = time.monotonic_ns()
        libbpf.map_update(fd, _ZERO_KEY, cfg)
    return started_ns


def _pinned(path: Path):
    return labbpf.pinned(path, "is the lab up? (`python -m lab status`)")
