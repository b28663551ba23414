"""Thin ctypes access to libbpf (Debian's libbpf1) for what BCC lacks and the
daemon needs: a loaded program's kernel id, the maps it uses, reading and
writing them, pinning (appliance.edge.pins). (The lab's and tests' own call,
BPF_PROG_TEST_RUN, is in lab/libbpf.py on the same library handle.)"""
from __future__ import annotations

import ctypes
import errno
import os

LIBBPF = ctypes.CDLL("libbpf.so.1", use_errno=True)
LIBBPF.bpf_map_lookup_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
LIBBPF.bpf_map_update_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]
LIBBPF.bpf_map_delete_elem.argtypes = [ctypes.c_int, ctypes.c_void_p]
LIBBPF.bpf_map_get_next_key.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
LIBBPF.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
LIBBPF.bpf_obj_get.argtypes = [ctypes.c_char_p]
LIBBPF.bpf_map_create.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32,
                                  ctypes.c_uint32, ctypes.c_void_p]
BPF_MAP_TYPE_HASH = 1

# The same lookup without handing the GIL over: the syscall takes a
# microsecond or two, while a CDLL call releases the GIL and then waits for
# it, up to sys.getswitchinterval(), behind whichever thread took it. A
# daemon thread reading a map element by element paid that at every element
# (up to a millisecond per reading with the pair's threads busy).
_LIBBPF_KEEPING_GIL = ctypes.PyDLL("libbpf.so.1", use_errno=True)
_LOOKUP_KEEPING_GIL = _LIBBPF_KEEPING_GIL.bpf_map_lookup_elem
_LOOKUP_KEEPING_GIL.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_LOOKUP_BATCH_KEEPING_GIL = _LIBBPF_KEEPING_GIL.bpf_map_lookup_batch
_LOOKUP_BATCH_KEEPING_GIL.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                      ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p]
_UPDATE_KEEPING_GIL = _LIBBPF_KEEPING_GIL.bpf_map_update_elem
_UPDATE_KEEPING_GIL.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]
_UPDATE_BATCH_KEEPING_GIL = _LIBBPF_KEEPING_GIL.bpf_map_update_batch
_UPDATE_BATCH_KEEPING_GIL.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                      ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p]


def check(rc: int, what: str) -> int:
    """rc, or OSError with errno and what failed."""
    if rc < 0:
        err = ctypes.get_errno() or -rc
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def map_lookup(fd: int, key, value) -> None:
    """Reads the element into `value` (for per-CPU maps, an array of one
    element per possible CPU)."""
    check(LIBBPF.bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value)), "map lookup")


class ArrayMap:
    """Elements 0..n-1 of an array map, read and written without releasing
    the GIL (see _LOOKUP_KEEPING_GIL): for the maps the daemon reads every
    probe period and the pair gate a takeover writes. value_type may be
    shorter than the map's values: a later layout appends fields (as the
    lab's upgrade does), and this code reads and writes the ones it knows,
    leaving the rest as they are."""

    def __init__(self, fd: int, value_type: type, n: int, value_size: int):
        """value_size: the map's own."""
        if ctypes.sizeof(value_type) > value_size:
            raise ValueError(f"{value_type.__name__} is {ctypes.sizeof(value_type)} bytes, "
                             f"the map's values {value_size}")
        self._fd, self._key, self._type, self._size, self._n = fd, ctypes.c_uint32(), value_type, value_size, n
        self._raw = ctypes.create_string_buffer(value_size * n)
        self._pointers = [ctypes.byref(self._raw, i * value_size) for i in range(n)]
        self._keys, self._batch, self._count = (ctypes.c_uint32 * n)(), ctypes.c_uint32(), ctypes.c_uint32()

    def _lookup(self, index: int) -> None:
        self._key.value = index
        if _LOOKUP_KEEPING_GIL(self._fd, ctypes.byref(self._key), self._pointers[index]) < 0:
            check(-1, "map lookup")

    def read(self) -> list:
        """Every element, each a value_type of its own: one batched lookup
        (one syscall for the whole array, not one per element)."""
        self._count.value = self._n
        if _LOOKUP_BATCH_KEEPING_GIL(self._fd, None, ctypes.byref(self._batch), self._keys, self._raw,
                                     ctypes.byref(self._count), None) < 0 and ctypes.get_errno() != errno.ENOENT:
            check(-1, "map lookup batch")
        if self._count.value != self._n:   # ENOENT ends a batch that reached the last element, and only that
            raise OSError(errno.EIO, f"map lookup batch: {self._count.value} of {self._n} elements")
        return [self._type.from_buffer_copy(self._raw, i * self._size) for i in range(self._n)]

    def write_all(self, values: list) -> None:
        """Elements 0..len(values)-1 in one batched update; value_type must
        be the map's whole value (nothing to keep of the old ones)."""
        if ctypes.sizeof(self._type) != self._size or not 0 < len(values) <= self._n:
            raise ValueError(f"{len(values)} whole values of {self._size} bytes for a map of {self._n}")
        for i, value in enumerate(values):
            self._keys[i] = i
            ctypes.memmove(self._pointers[i], ctypes.byref(value), self._size)
        self._count.value = len(values)
        if _UPDATE_BATCH_KEEPING_GIL(self._fd, self._keys, self._raw, ctypes.byref(self._count), None) < 0:
            check(-1, "map update batch")

    def write(self, index: int, value) -> None:
        if not 0 <= index < self._n:
            raise OSError(errno.E2BIG, f"map update: element {index} of {self._n}")
        self._lookup(index)   # the fields value_type does not know keep their values
        ctypes.memmove(self._pointers[index], ctypes.byref(value), ctypes.sizeof(value))
        if _UPDATE_KEEPING_GIL(self._fd, ctypes.byref(self._key), self._pointers[index], 0) < 0:
            check(-1, "map update")


def map_update(fd: int, key, value) -> None:
    check(LIBBPF.bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), 0), "map update")


def map_delete(fd: int, key) -> None:
    """Deletes the element; one already gone is fine."""
    rc = LIBBPF.bpf_map_delete_elem(fd, ctypes.byref(key))
    if rc < 0 and (ctypes.get_errno() or -rc) != errno.ENOENT:
        check(rc, "map delete")


def map_keys(fd: int, key_size: int) -> list[bytes]:
    """Every key of a map, as raw bytes (arrays: every index)."""
    keys, prev, key = [], None, ctypes.create_string_buffer(key_size)
    while True:
        rc = LIBBPF.bpf_map_get_next_key(fd, prev, key)
        if rc < 0:
            if (ctypes.get_errno() or -rc) == errno.ENOENT:
                return keys
            check(rc, "map get next key")
        keys.append(key.raw)
        prev = ctypes.create_string_buffer(key.raw, key_size)


def map_create_hash(name: str, key_size: int, value_size: int, max_entries: int) -> int:
    """A new hash map's fd; the caller closes (or pins) it."""
    return check(LIBBPF.bpf_map_create(BPF_MAP_TYPE_HASH, name.encode(), key_size, value_size, max_entries, None),
                 f"create map {name}")


def obj_pin(fd: int, path: str) -> None:
    check(LIBBPF.bpf_obj_pin(fd, path.encode()), f"pin {path}")


def obj_get(path: str) -> int:
    """A new fd for a pinned object; the caller closes it."""
    return check(LIBBPF.bpf_obj_get(path.encode()), f"open pinned {path}")


def possible_cpus() -> int:
    return check(LIBBPF.libbpf_num_possible_cpus(), "counting possible CPUs")


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
LIBBPF.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]


def prog_id(prog_fd: int) -> int:
    """The kernel-wide id of the loaded program behind `prog_fd` (what tc
    and `ip link` report as the attached program's id)."""
    info = _ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    check(LIBBPF.bpf_obj_get_info_by_fd(prog_fd, ctypes.byref(info), ctypes.byref(size)), "BPF_OBJ_GET_INFO_BY_FD")
    if size.value < _ProgInfo.id.offset + ctypes.sizeof(ctypes.c_uint32) or not info.id:
        raise OSError(f"BPF_OBJ_GET_INFO_BY_FD: fd {prog_fd} returned no program id")
    return info.id


LIBBPF.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]


def prog_fd_by_id(prog_id: int) -> int:
    """A new fd for the loaded program with this id (needs CAP_SYS_ADMIN);
    FileNotFoundError once the program is gone. The caller closes it."""
    return check(LIBBPF.bpf_prog_get_fd_by_id(prog_id), f"open program id {prog_id}")


LIBBPF.bpf_map_get_fd_by_id.argtypes = [ctypes.c_uint32]
MAX_PROG_MAPS = 64


def _info(fd: int, info: ctypes.Structure) -> None:
    size = ctypes.c_uint32(ctypes.sizeof(info))
    check(LIBBPF.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "BPF_OBJ_GET_INFO_BY_FD")


def map_info(fd: int) -> tuple[int, int, int, int, int]:
    """(type, id, key size, value size, max entries) of the map behind fd."""
    info = _MapInfo()
    _info(fd, info)
    return info.type, info.id, info.key_size, info.value_size, info.max_entries


def prog_tag(prog_fd: int) -> bytes:
    """The kernel's hash of the program's instructions (map references
    zeroed): equal for the same program loaded twice."""
    info = _ProgInfo()
    _info(prog_fd, info)
    return bytes(info.tag)


def prog_maps(prog_fd: int) -> dict[str, tuple[int, int, int]]:
    """The maps a loaded program uses: name -> (fd, key size, value size).
    The caller closes the fds."""
    ids = (ctypes.c_uint32 * MAX_PROG_MAPS)()
    info = _ProgInfo(nr_map_ids=MAX_PROG_MAPS, map_ids=ctypes.addressof(ids))
    _info(prog_fd, info)
    maps = {}
    for map_id in ids[:min(info.nr_map_ids, MAX_PROG_MAPS)]:
        fd = check(LIBBPF.bpf_map_get_fd_by_id(map_id), f"open map id {map_id}")
        minfo = _MapInfo()
        _info(fd, minfo)
        maps[minfo.name.decode(errors="replace")] = (fd, minfo.key_size, minfo.value_size)
    return maps
