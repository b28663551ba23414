"""Fault injection on the lab's carrier links.

The kernel has no netem, so loss and blackholes come from lab/ebpf/fault.c, TC
classifiers on both directions of each carrier's gw-facing veth (carA `gwA`,
carB `gwB`). Its config and counter maps are pinned under
/sys/fs/bpf/twinpath/<lab>/fault_<carrier>_{cfg,stats}: the TC filters keep the
program and maps alive after the loading process exits, and any process (the
scenario runner, the CLI) can flip a fault through the pins.

Faults per link ("A" or "B"):
  carrier-down  the carrier's gw-facing veth goes admin down, so gw's link loses carrier
                (clear brings it up and restores the carrier routes the kernel deleted)
  blackhole     every packet on the link is dropped, both ways; gw keeps carrier
  blackhole-tx  only what gw sends is dropped (orders, heartbeat probes): a dead send path
  blackhole-rx  only what comes to gw is dropped (replies, market data): a dead receive path
  loss          each packet is dropped with the given probability

The blackholes and loss share the link's one fault map: injecting one replaces
another, and clearing any of them restores pass-through.

inject() and clear() return time.monotonic_ns() taken just before the change
becomes visible to the kernel, so detection times measured from it are never
flattered.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

from appliance.edge import bpfsys
from appliance.edge.netlink import TC_EGRESS, TC_INGRESS, ifindex
from lab import labbpf, layout, libbpf
from lab.colo import LINKS, Lab, LinkSpec, carrier_routes_via_gw

FAULTS = ("carrier-down", "blackhole", "blackhole-tx", "blackhole-rx", "loss")
MODE_PASS, MODE_LOSS = layout.C["TP_FAULT_PASS"], layout.C["TP_FAULT_LOSS"]
BLACKHOLES = {name: layout.C["TP_FAULT_" + name.upper().replace("-", "_")]
              for name in ("blackhole", "blackhole-tx", "blackhole-rx")}
IFF_UP = 1
_ZERO_KEY = ctypes.c_uint32(0)


def cfg_pin(lab: Lab, link: str) -> Path:
    return lab.pin_dir / f"fault_{_link(link).carrier}_cfg"


def stats_pin(lab: Lab, link: str) -> Path:
    return lab.pin_dir / f"fault_{_link(link).carrier}_stats"


def attach(lab: Lab) -> None:
    """Load fault.c onto every carrier's gw-facing veth and pin its maps (done by lab up)."""
    for link in LINKS.values():
        labbpf.attach_pinned(lab, "fault.c", {TC_INGRESS: "fault_from_gw", TC_EGRESS: "fault_to_gw"},
                             {"fault_cfg": cfg_pin(lab, link.name), "fault_stats": stats_pin(lab, link.name)},
                             link.carrier, link.carrier_dev)


def inject(lab: Lab, fault: str, link: str, probability: float | None = None) -> int:
    """Start a fault on link "A" or "B"; loss needs a drop probability in [0, 1]."""
    spec = _link(link)
    if (probability is not None) != (fault == "loss"):
        raise ValueError("a probability is required for loss and only for loss")
    if fault == "carrier-down":
        return _set_carrier_admin(lab, spec, up=False)
    if fault in BLACKHOLES:
        return _write_cfg(lab, spec, layout.FaultConfig(BLACKHOLES[fault], 0))
    if fault == "loss":
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"loss probability {probability} is outside [0, 1]")
        # Drop when prandom_u32 < threshold: p * 2^32, capped to fit a u32.
        threshold = min(round(probability * 2**32), 2**32 - 1)
        return _write_cfg(lab, spec, layout.FaultConfig(MODE_LOSS, threshold))
    raise ValueError(f"unknown fault {fault!r}; expected one of {', '.join(FAULTS)}")


def clear(lab: Lab, fault: str, link: str) -> int:
    """End a fault on link "A" or "B" (clearing one that is not active is harmless)."""
    spec = _link(link)
    if fault == "carrier-down":
        return _set_carrier_admin(lab, spec, up=True)
    if fault in BLACKHOLES or fault == "loss":
        return _write_cfg(lab, spec, layout.FaultConfig(MODE_PASS, 0))
    raise ValueError(f"unknown fault {fault!r}; expected one of {', '.join(FAULTS)}")


def active(lab: Lab) -> dict[str, dict[str, bool | float]]:
    """Active faults per link, e.g. {"A": {"blackhole": True}, "B": {"loss": 0.05}}."""
    result: dict[str, dict[str, bool | float]] = {}
    for name, spec in LINKS.items():
        faults: dict[str, bool | float] = {}
        with lab.iproute(spec.carrier) as ipr:
            (carrier_dev,) = ipr.get_links(ifname=spec.carrier_dev)
        if not carrier_dev["flags"] & IFF_UP:
            faults["carrier-down"] = True
        cfg = layout.FaultConfig()
        with _pinned(cfg_pin(lab, name)) as fd:
            bpfsys.map_lookup(fd, _ZERO_KEY, cfg)
        blackhole = next((name for name, mode in BLACKHOLES.items() if mode == cfg.mode), None)
        if blackhole:
            faults[blackhole] = True
        elif cfg.mode == MODE_LOSS:
            faults["loss"] = round(cfg.loss_threshold / 2**32, 6)
        result[name] = faults
    return result


def counters(lab: Lab, link: str) -> dict[str, int]:
    """Packets the injector on a link has passed and dropped (both directions, all CPUs)."""
    per_cpu = (layout.FaultCounters * libbpf.possible_cpus())()
    with _pinned(stats_pin(lab, link)) as fd:
        bpfsys.map_lookup(fd, _ZERO_KEY, per_cpu)
    return {"passed": sum(c.passed for c in per_cpu), "dropped": sum(c.dropped for c in per_cpu)}


def _link(link: str) -> LinkSpec:
    try:
        return LINKS[link]
    except KeyError:
        raise ValueError(f"unknown link {link!r}; expected one of {', '.join(LINKS)}") from None


def _set_carrier_admin(lab: Lab, spec: LinkSpec, up: bool) -> int:
    with lab.iproute(spec.carrier) as ipr:
        index = ifindex(ipr, spec.carrier_dev)
        started_ns = time.monotonic_ns()
        ipr.link("set", index=index, state="up" if up else "down")
        if up:
            # Taking the veth down made the kernel delete the carrier's routes through it.
            for route in carrier_routes_via_gw(spec):
                ipr.route("replace", **route)
    return started_ns


def _write_cfg(lab: Lab, spec: LinkSpec, cfg: layout.FaultConfig) -> int:
    with _pinned(cfg_pin(lab, spec.name)) as fd:
        started_ns = time.monotonic_ns()
        libbpf.map_update(fd, _ZERO_KEY, cfg)
    return started_ns


def _pinned(path: Path):
    return labbpf.pinned(path, "is the lab up? (`python -m lab status`)")
