"""The lab's own BPF programs (the fault injector, the exchange's reflector,
the capacity sinks): TC filters or XDP programs whose maps are pinned under the lab's bpffs directory, so that any
process (scenario runner, CLI, bench) can drive them after the loader exits."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from appliance.edge.bpfsource import assemble
from appliance.edge.netlink import attach_bpf, attach_xdp
from ebpf import EBPF_DIR
from lab import libbpf
from lab.colo import Lab, LabError

FILTER_PRIO = 1
XDP = "xdp"   # in attach_pinned's programs: the device's XDP hook instead of a TC parent
# The lab's programs first; they share the product's parsers in ebpf/lib.
BPF_ROOTS = (Path(__file__).parent / "ebpf", EBPF_DIR)


def attach_pinned(lab: Lab, source: str, programs: dict[str, str], pins: dict[str, Path], role: str,
                  *devs: str) -> None:
    """Compile `source`, pin its maps (name -> path) and attach its programs
    (TC parent or XDP -> function) to each of devs in role's namespace. One compile
    per call: its devices share one set of maps (a BCC module owns one set),
    and so do the programs attached to them."""
    from bcc import BPF  # BCC (and LLVM) only for loading, not for driving

    lab.pin_dir.mkdir(parents=True, exist_ok=True)
    with BPF(text=assemble([source], roots=BPF_ROOTS).encode()) as bpf:
        progs = {parent: bpf.load_func(func.encode(), BPF.XDP if parent == XDP else BPF.SCHED_CLS)
                 for parent, func in programs.items()}
        for name, path in pins.items():
            libbpf.obj_pin(bpf[name.encode()].map_fd, str(path))
        with lab.iproute(role) as ipr:
            for dev in devs:
                for parent, prog in progs.items():
                    if parent == XDP:
                        attach_xdp(ipr, dev, prog)
                    else:
                        attach_bpf(ipr, dev, parent, prog, FILTER_PRIO)


@contextlib.contextmanager
def pinned(path: Path, missing: str) -> Iterator[int]:
    """An fd for a pinned map, closed on exit; LabError(missing) if there is none."""
    try:
        fd = libbpf.obj_get(str(path))
    except FileNotFoundError:
        raise LabError(f"no map at {path}; {missing}") from None
    try:
        yield fd
    finally:
        os.close(fd)
