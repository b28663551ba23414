"""Lab only: exch answers or swallows UDP in the kernel (lab/ebpf/reflect.c).

Benchmarks through the gateway need an exchange that is not the bottleneck
and adds no scheduling noise of its own. reflect.c, a TC classifier on
ingress of exch's handoffs (hA, hB), does per UDP destination port:
  reflect  swap MACs and addresses, reply from that port to `reply_port`,
           back out of the handoff the packet came in on (the carrier then
           routes it to the trader through gw's plain kernel routing)
  sink     count and drop
  pass     untouched, not counted (as every port that was never set)

sink_xdp, the same sink as an XDP program, counts right past the gateway
for the capacity bench: attach_sink() puts it on any lab device, with its
own maps pinned as sink_<role>_<dev>_{cfg,stats}; set_sink_port() and
sink_count() drive it.

One compile per handoff, so each has its own maps (counters per handoff),
pinned under /sys/fs/bpf/twinpath/<lab>/reflect_<handoff>_{cfg,stats} like
the fault injector's. Nothing needs detaching: topology.down() deletes the
namespaces (the handoffs and their filters with them) and the pin directory.
"""
from __future__ import annotations

import ctypes
import errno
from pathlib import Path

from appliance.edge import bpfsys
from appliance.edge.netlink import TC_INGRESS
from lab import labbpf, layout, libbpf
from lab.colo import LINKS, Lab, LabError


def cfg_pin(lab: Lab, link: str) -> Path:
    return lab.pin_dir / f"reflect_{LINKS[link].handoff}_cfg"


def stats_pin(lab: Lab, link: str) -> Path:
    return lab.pin_dir / f"reflect_{LINKS[link].handoff}_stats"


def attach(lab: Lab) -> None:
    """Load reflect.c on ingress of both of exch's handoffs, every port passing."""
    for name, link in LINKS.items():
        labbpf.attach_pinned(lab, "reflect.c", {TC_INGRESS: "reflect"},
                             {"reflect_cfg": cfg_pin(lab, name), "reflect_stats": stats_pin(lab, name)},
                             "exch", link.handoff)


def attached(lab: Lab) -> bool:
    return all(cfg_pin(lab, link).exists() for link in LINKS)


def set_port(lab: Lab, port: int, action: str, reply_port: int | None = None) -> None:
    """What both handoffs do with UDP to destination `port`: "reflect" (to
    `reply_port`), "sink" or "pass". A port keeps its count across changes."""
    for link in LINKS:
        with _pinned(cfg_pin(lab, link)) as cfg_fd, _pinned(stats_pin(lab, link)) as stats_fd:
            write_port(cfg_fd, stats_fd, port, action, reply_port)


def counts(lab: Lab, port: int, link: str | None = None) -> int:
    """Packets reflected or sunk for destination `port`, over all CPUs, on
    one link's handoff ("A" or "B") or on both (None)."""
    total = 0
    for name in LINKS if link is None else (link,):
        with _pinned(stats_pin(lab, name)) as fd:
            total += read_count(fd, port)
    return total


def sink_pins(lab: Lab, role: str, dev: str) -> tuple[Path, Path]:
    return lab.pin_dir / f"sink_{role}_{dev}_cfg", lab.pin_dir / f"sink_{role}_{dev}_stats"


def attach_sink(lab: Lab, role: str, dev: str) -> None:
    """sink_xdp on `dev` in role's namespace, every port passing."""
    cfg, stats = sink_pins(lab, role, dev)
    labbpf.attach_pinned(lab, "reflect.c", {labbpf.XDP: "sink_xdp"},
                         {"reflect_cfg": cfg, "reflect_stats": stats}, role, dev)


def set_sink_port(lab: Lab, role: str, dev: str, port: int, sink: bool = True) -> None:
    """Count and drop UDP to `port` at the sink on dev (or pass it again)."""
    cfg, stats = sink_pins(lab, role, dev)
    with _pinned(cfg) as cfg_fd, _pinned(stats) as stats_fd:
        write_port(cfg_fd, stats_fd, port, "sink" if sink else "pass", None)


def sink_count(lab: Lab, role: str, dev: str, port: int) -> int:
    with _pinned(sink_pins(lab, role, dev)[1]) as fd:
        return read_count(fd, port)


def write_port(cfg_fd: int, stats_fd: int, port: int, action: str, reply_port: int | None) -> None:
    """set_port() on one program's maps."""
    if action not in layout.REFLECT_ACTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {', '.join(layout.REFLECT_ACTIONS)}")
    if (reply_port is not None) != (action == "reflect"):
        raise ValueError("a reply_port is required for reflect and only for reflect")
    for p in (port, reply_port or 0):
        if not 0 <= p <= 0xFFFF:
            raise ValueError(f"port {p} is outside 0..65535")
    key = ctypes.c_uint32(port)
    per_cpu = (ctypes.c_uint64 * libbpf.possible_cpus())()
    try:
        # The counter first (the program only counts a port that has one),
        # so that no packet the new rule acts on goes uncounted.
        try:
            bpfsys.map_lookup(stats_fd, key, per_cpu)
        except FileNotFoundError:
            libbpf.map_update(stats_fd, key, per_cpu)  # zeros
        libbpf.map_update(cfg_fd, key, layout.ReflectPort(layout.REFLECT_ACTIONS[action], reply_port or 0))
    except OSError as exc:
        if exc.errno == errno.E2BIG:
            raise LabError(f"the reflector already has {layout.REFLECT_PORTS} ports") from None
        raise


def read_count(stats_fd: int, port: int) -> int:
    """One program's count for `port`, over all CPUs (0 if never set)."""
    per_cpu = (ctypes.c_uint64 * libbpf.possible_cpus())()
    try:
        bpfsys.map_lookup(stats_fd, ctypes.c_uint32(port), per_cpu)
    except FileNotFoundError:
        return 0
    return sum(per_cpu)


def _pinned(path: Path):
    return labbpf.pinned(path, "attach the reflector (attach) or the sink (attach_sink) first")
