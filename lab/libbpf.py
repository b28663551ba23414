"""libbpf calls only the lab, the bench and the tests make: running a program
on a packet without attaching it (BPF_PROG_TEST_RUN). Pinning, map writes and
per-CPU sizes are the product's (appliance.edge.bpfsys), re-exported here for
the lab's loaders."""
from __future__ import annotations

import ctypes
import errno

from appliance.edge.bpfsys import LIBBPF, check, map_update, obj_get, obj_pin, possible_cpus

__all__ = ["map_update", "obj_get", "obj_pin", "possible_cpus", "prog_test_run", "prog_test_run_live"]


class TestRunOpts(ctypes.Structure):
    # libbpf's struct bpf_test_run_opts (bpf/bpf.h, libbpf 1.x).
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


LIBBPF.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.POINTER(TestRunOpts)]
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1   # uapi/linux/bpf.h


def prog_test_run(prog_fd: int, packet: bytes, repeat: int = 1,
                  out_size: int = 4096) -> tuple[int, bytes, int]:
    """Runs a program on `packet` in the kernel without attaching it.
    Returns (verdict, packet as the program left it, mean ns per run)."""
    data_in = ctypes.create_string_buffer(packet, len(packet))
    data_out = ctypes.create_string_buffer(max(out_size, len(packet) + 256))
    opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts),
                       data_in=ctypes.addressof(data_in), data_size_in=len(packet),
                       data_out=ctypes.addressof(data_out), data_size_out=len(data_out),
                       repeat=repeat)
    check(LIBBPF.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return opts.retval, data_out.raw[:opts.data_size_out], opts.duration


def prog_test_run_live(prog_fd: int, packet: bytes, repeat: int, batch_size: int = 64) -> bool:
    """Runs an XDP program `repeat` times in live-frames mode: each run gets
    a real frame initialised from `packet`, and what it redirects or sends
    back is transmitted, `batch_size` frames per flush. False if a signal
    ended the runs early (the kernel checks between batches), else True."""
    data_in = ctypes.create_string_buffer(packet, len(packet))
    opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts), data_in=ctypes.addressof(data_in),
                       data_size_in=len(packet), repeat=repeat, flags=BPF_F_TEST_XDP_LIVE_FRAMES,
                       batch_size=batch_size)
    rc = LIBBPF.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts))
    if rc == -errno.EINTR:
        return False
    check(rc, "BPF_PROG_TEST_RUN (live frames)")
    return True
