"""Thin ctypes access to libbpf (Debian's libbpf1) for what BCC lacks:
BPF_PROG_TEST_RUN, pinning objects in bpffs, opening pinned maps and a
loaded program's kernel id."""
from __future__ import annotations

import ctypes
import os

_libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)


class _TestRunOpts(ctypes.Structure):
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


_libbpf.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.POINTER(_TestRunOpts)]
_libbpf.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
_libbpf.bpf_obj_get.argtypes = [ctypes.c_char_p]
_libbpf.bpf_map_update_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]
_libbpf.bpf_map_lookup_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno() or -rc
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def prog_test_run(prog_fd: int, packet: bytes, repeat: int = 1,
                  out_size: int = 4096) -> tuple[int, bytes, int]:
    """Runs a program on `packet` in the kernel without attaching it.
    Returns (verdict, packet as the program left it, mean ns per run)."""
    data_in = ctypes.create_string_buffer(packet, len(packet))
    data_out = ctypes.create_string_buffer(max(out_size, len(packet) + 256))
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts),
                        data_in=ctypes.addressof(data_in), data_size_in=len(packet),
                        data_out=ctypes.addressof(data_out), data_size_out=len(data_out),
                        repeat=repeat)
    _check(_libbpf.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return opts.retval, data_out.raw[:opts.data_size_out], opts.duration


def obj_pin(fd: int, path: str) -> None:
    _check(_libbpf.bpf_obj_pin(fd, path.encode()), f"pin {path}")


def obj_get(path: str) -> int:
    """A new fd for a pinned object; the caller closes it."""
    return _check(_libbpf.bpf_obj_get(path.encode()), f"open pinned {path}")


def map_update(fd: int, key: ctypes._SimpleCData | ctypes.Structure,
               value: ctypes._SimpleCData | ctypes.Structure) -> None:
    _check(_libbpf.bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), 0), "map update")


def map_lookup(fd: int, key, value) -> None:
    """Reads the element into `value` (for per-CPU maps, an array of
    possible_cpus() elements)."""
    _check(_libbpf.bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value)), "map lookup")


def possible_cpus() -> int:
    return _check(_libbpf.libbpf_num_possible_cpus(), "counting possible CPUs")


class _ProgInfo(ctypes.Structure):
    # The head of the kernel's struct bpf_prog_info (linux/bpf.h), up to the
    # ids of the maps the program uses. The kernel copies back only
    # min(info_len, its own size) bytes, so a prefix is a valid request.
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),      # user pointer to u32[nr_map_ids]
    ]


class _MapInfo(ctypes.Structure):
    # The head of struct bpf_map_info (linux/bpf.h).
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


# bpf_obj_get_info_by_fd is in every libbpf 1.x; bpf_prog_get_info_by_fd only from 1.2.
_libbpf.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]


def prog_id(prog_fd: int) -> int:
    """The kernel-wide id of the loaded program behind `prog_fd` (what tc
    and `ip link` report as the attached program's id)."""
    info = _ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_libbpf.bpf_obj_get_info_by_fd(prog_fd, ctypes.byref(info), ctypes.byref(size)), "BPF_OBJ_GET_INFO_BY_FD")
    if size.value < _ProgInfo.id.offset + ctypes.sizeof(ctypes.c_uint32) or not info.id:
        raise OSError(f"BPF_OBJ_GET_INFO_BY_FD: fd {prog_fd} returned no program id")
    return info.id


_libbpf.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]


def prog_fd_by_id(prog_id: int) -> int:
    """A new fd for the loaded program with this id (needs CAP_SYS_ADMIN);
    FileNotFoundError once the program is gone. The caller closes it."""
    return _check(_libbpf.bpf_prog_get_fd_by_id(prog_id), f"open program id {prog_id}")


_libbpf.bpf_map_get_fd_by_id.argtypes = [ctypes.c_uint32]
MAX_PROG_MAPS = 64


def _info(fd: int, info: ctypes.Structure) -> None:
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_libbpf.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "BPF_OBJ_GET_INFO_BY_FD")


def prog_maps(prog_fd: int) -> dict[str, tuple[int, int, int]]:
    """The maps a loaded program uses: name -> (fd, key size, value size).
    The caller closes the fds."""
    ids = (ctypes.c_uint32 * MAX_PROG_MAPS)()
    info = _ProgInfo(nr_map_ids=MAX_PROG_MAPS, map_ids=ctypes.addressof(ids))
    _info(prog_fd, info)
    maps = {}
    for map_id in ids[:min(info.nr_map_ids, MAX_PROG_MAPS)]:
        fd = _check(_libbpf.bpf_map_get_fd_by_id(map_id), f"open map id {map_id}")
        minfo = _MapInfo()
        _info(fd, minfo)
        maps[minfo.name.decode(errors="replace")] = (fd, minfo.key_size, minfo.value_size)
    return maps
