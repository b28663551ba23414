"""libbpf calls only the lab, the bench and the tests make: running a program
on a packet without attaching it (BPF_PROG_TEST_RUN). Pinning, map writes and
per-CPU sizes are the product's (appliance.edge.bpfsys), re-exported here for
the lab's loaders."""
from __future__ import annotations

import ctypes

from appliance.edge.bpfsys import LIBBPF, check, map_update, obj_get, obj_pin, possible_cpus

__all__ = ["prog_test_run", "map_update", "obj_get", "obj_pin", "possible_cpus"]


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
