"""The data path's state between daemons: pinned, versioned maps.

Every map the programs keep state in is declared with TP_MAP (ebpf/lib/pin.h)
and pinned as <pin dir>/<name>_v<version>. A starting daemon compiles its
programs against the pins it finds, so steering state, link health, the
arbitration claims and windows, and every counter carry over a restart.

Layouts are guarded twice. The version in the name changes with the layout
(whoever changes a struct bumps it at the map's declaration), so a new build
never opens an old map by the name it uses. And the registry map
(<pin dir>/tp_registry) records the layout, as BCC compiled it, of every map
pinned here: a pin whose recorded layout differs from this build's (a struct
changed without its version) is refused before anything is attached. An
older version of a map is migrated: the new map is created, every entry is
copied field by field (fields matched by name, type and size; new fields
start at zero; removed fields are dropped), and the old pin is retired once
the new programs are attached. A newer version (a downgrade) is refused.

The registry also records each clsact qdisc twinpath created, so that
`twinpath detach` removes those and nothing else.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from appliance.edge import bpfsys, gatelock

PIN_ROOT = Path("/sys/fs/bpf/twinpath")
REGISTRY = "tp_registry"
REGISTRY_KEY = 64
REGISTRY_VALUE = 8192
REGISTRY_ENTRIES = 256
BPF_FS_MAGIC = 0xCAFE4A11
PERCPU_TYPES = {5, 6, 10}   # BPF_MAP_TYPE_PERCPU_HASH, _PERCPU_ARRAY, _LRU_PERCPU_HASH
_DECLARATION = re.compile(r"^\s*TP_MAP\((.*)\);", re.MULTILINE)
_PIN_NAME = re.compile(r"(tp_\w+?)_v(\d+)")


class PinError(RuntimeError):
    """Pinned state this build must not use; nothing was attached."""


def default_pin_dir() -> Path:
    """One directory per gateway (network namespace), as gatelock locks it."""
    return PIN_ROOT / f"gw-{gatelock.netns_inode()}"


def declared_maps(source: str) -> dict[str, int]:
    """name -> version of every TP_MAP declaration in assembled BPF source."""
    maps = {}
    for m in _DECLARATION.finditer(source):
        args = [a.strip() for a in m.group(1).split(",")]
        if len(args) != 7:
            raise ValueError(f"TP_MAP takes 7 arguments (type, key, value, name, entries, version, flags): {m.group(0)}")
        maps[args[3]] = int(args[5])
    return maps


def describe(ctype) -> list[list]:
    """A ctypes type as [path, offset, size, type] leaves: what two builds
    must agree on to share a map, and what migration copies by."""
    leaves: list[list] = []

    def walk(t, path: str, offset: int) -> None:
        if issubclass(t, (ctypes.Structure, ctypes.Union)):
            for name, ft, *_ in t._fields_:
                walk(ft, f"{path}.{name}" if path else name, offset + getattr(t, name).offset)
        elif issubclass(t, ctypes.Array):
            elem = describe(t._type_)
            leaves.append([path, offset, ctypes.sizeof(t), f"{json.dumps(elem)}[{t._length_}]"])
        else:
            leaves.append([path, offset, ctypes.sizeof(t), t._type_ if hasattr(t, "_type_") else t.__name__])
    walk(ctype, "", 0)
    return leaves


def table_layout(table) -> dict:
    """The layout of a BCC table as this build compiled it."""
    fd = table.map_fd
    mtype, _, key_size, value_size, max_entries = bpfsys.map_info(fd)
    return {"type": mtype, "key_size": key_size, "value_size": value_size, "max_entries": max_entries,
            "key": describe(table.Key), "value": describe(table.Leaf)}


def layout_differences(recorded: dict, ours: dict) -> list[str]:
    diffs = [f"{k} {recorded.get(k)} -> {ours[k]}" for k in ("type", "key_size", "value_size", "max_entries")
             if recorded.get(k) != ours[k]]
    for part in ("key", "value"):
        theirs = {leaf[0]: leaf[1:] for leaf in recorded.get(part, [])}
        mine = {leaf[0]: leaf[1:] for leaf in ours[part]}
        diffs += [f"{part} field {p or '(whole)'} {'added' if p not in theirs else 'removed' if p not in mine else 'changed'}"
                  for p in sorted(set(theirs) | set(mine)) if theirs.get(p) != mine.get(p)]
    return diffs


@dataclass
class Plan:
    """What a start does with each declared map of one module."""
    reuse: list[str] = field(default_factory=list)            # same version pinned: opened as is
    create: list[str] = field(default_factory=list)           # none pinned: created empty
    migrate: dict[str, str] = field(default_factory=dict)     # name -> older pin to copy from


class PinDir:
    """A gateway's pin directory and its registry."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._registry_fd: int | None = None
        self._pending: list[tuple] = []     # (old pin, new BCC table) of each migration, until retire()

    # -- registry ---------------------------------------------------------
    def open(self) -> None:
        """Creates the directory (0700) and the registry if missing."""
        if self._registry_fd is not None:
            return
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self._on_bpffs():
            raise PinError(f"{self.path} is not on a bpffs mount: mount -t bpf bpf /sys/fs/bpf")
        pin = str(self.path / REGISTRY)
        try:
            self._registry_fd = bpfsys.obj_get(pin)
        except FileNotFoundError:
            fd = bpfsys.map_create_hash(REGISTRY, REGISTRY_KEY, REGISTRY_VALUE, REGISTRY_ENTRIES)
            bpfsys.obj_pin(fd, pin)
            self._registry_fd = fd

    def _on_bpffs(self) -> bool:
        class StatFs(ctypes.Structure):
            _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112)]
        libc = ctypes.CDLL(None, use_errno=True)
        buf = StatFs()
        if libc.statfs(str(self.path).encode(), ctypes.byref(buf)) != 0:
            return False
        return buf.f_type & 0xFFFFFFFF == BPF_FS_MAGIC

    def close(self) -> None:
        if self._registry_fd is not None:
            os.close(self._registry_fd)
            self._registry_fd = None

    def _key(self, name: str):
        raw = name.encode()
        if len(raw) >= REGISTRY_KEY:
            raise ValueError(f"registry key too long: {name}")
        return ctypes.create_string_buffer(raw, REGISTRY_KEY)

    def get(self, name: str) -> str | None:
        value = ctypes.create_string_buffer(REGISTRY_VALUE)
        try:
            bpfsys.map_lookup(self._registry_fd, self._key(name), value)
        except FileNotFoundError:
            return None
        return value.value.decode()

    def put(self, name: str, text: str) -> None:
        raw = text.encode()
        if len(raw) >= REGISTRY_VALUE:
            raise ValueError(f"registry value for {name} is {len(raw)} bytes, at most {REGISTRY_VALUE - 1}")
        bpfsys.map_update(self._registry_fd, self._key(name), ctypes.create_string_buffer(raw, REGISTRY_VALUE))

    def delete(self, name: str) -> None:
        bpfsys.map_delete(self._registry_fd, self._key(name))

    def keys(self) -> list[str]:
        return [k.rstrip(b"\0").decode() for k in bpfsys.map_keys(self._registry_fd, REGISTRY_KEY)]

    # -- maps -------------------------------------------------------------
    def pins(self) -> list[str]:
        return sorted(os.listdir(self.path)) if self.path.is_dir() else []

    def plan(self, declared: dict[str, int]) -> Plan:
        """Before compiling: which maps are reused, created or migrated.
        PinError for a pin newer than this build (a downgrade)."""
        self.open()
        found: dict[str, list[int]] = {}
        for pin in self.pins():
            m = _PIN_NAME.fullmatch(pin)
            if m:
                found.setdefault(m.group(1), []).append(int(m.group(2)))
        plan = Plan()
        for name, version in declared.items():
            versions = found.get(name, [])
            newer = [v for v in versions if v > version]
            if newer:
                raise PinError(f"{self.path}/{name}_v{max(newer)} is newer than this build's {name}_v{version}: "
                               f"a downgrade across a layout change is not supported. Install the newer build, or "
                               f"run `twinpath detach` (forwarding falls back to kernel routing) and start again")
            if version in versions:
                plan.reuse.append(name)
            elif versions:
                plan.migrate[name] = f"{name}_v{max(versions)}"
            else:
                plan.create.append(name)
        return plan

    def adopt(self, bpf, declared: dict[str, int], plan: Plan) -> dict[str, int]:
        """After compiling (BCC opened the reused pins and pinned the new
        maps): check every reused map against its recorded layout, record the
        new ones, migrate the older ones. Returns entries migrated per map.
        On PinError the maps this start created are unpinned again."""
        created = [*plan.create, *plan.migrate]
        try:
            for name in plan.reuse:
                pin = f"{name}_v{declared[name]}"
                recorded, ours = self.get(f"layout/{pin}"), table_layout(bpf[name])
                if recorded is None:
                    raise PinError(f"{self.path}/{pin} has no recorded layout (pinned by something other than "
                                   f"twinpath?): run `twinpath detach` and start again")
                diffs = layout_differences(json.loads(recorded), ours)
                if diffs:
                    raise PinError(f"{self.path}/{pin} was pinned with another layout than this build's "
                                   f"({'; '.join(diffs)}): the struct changed without a new version in its TP_MAP "
                                   f"declaration. Refusing to reuse it; nothing was attached")
            migrated = {}
            for name in created:
                self.put(f"layout/{name}_v{declared[name]}", json.dumps(table_layout(bpf[name])))
            for name, old in plan.migrate.items():
                migrated[name] = self._migrate(old, bpf[name])
                self._pending.append((old, bpf[name]))
            return migrated
        except BaseException:
            for name in created:
                self._unpin(f"{name}_v{declared[name]}")
            raise

    def _migrate(self, old_pin: str, table) -> int:
        recorded = self.get(f"layout/{old_pin}")
        if recorded is None:
            raise PinError(f"{self.path}/{old_pin} has no recorded layout to migrate from: "
                           f"run `twinpath detach` and start again")
        old, new = json.loads(recorded), table_layout(table)
        if old["key"] != new["key"] or old["type"] != new["type"]:
            raise PinError(f"{self.path}/{old_pin}: its key or map type changed ({'; '.join(layout_differences(old, new))}): "
                           f"entries cannot be carried over")
        moves = _field_moves(old["value"], new["value"])
        percpu = new["type"] in PERCPU_TYPES
        ncpu = bpfsys.possible_cpus() if percpu else 1
        old_stride, new_stride = _stride(old["value_size"], percpu), _stride(new["value_size"], percpu)
        fd = bpfsys.obj_get(str(self.path / old_pin))
        try:
            count = 0
            for key in bpfsys.map_keys(fd, old["key_size"]):
                src = ctypes.create_string_buffer(old_stride * ncpu)
                bpfsys.map_lookup(fd, ctypes.create_string_buffer(key, len(key)), src)
                dst = ctypes.create_string_buffer(new_stride * ncpu)
                for cpu in range(ncpu):
                    for src_off, dst_off, size in moves:
                        s, d = cpu * old_stride + src_off, cpu * new_stride + dst_off
                        dst[d:d + size] = src.raw[s:s + size]
                bpfsys.map_update(table.map_fd, ctypes.create_string_buffer(key, len(key)), dst)
                count += 1
            return count
        finally:
            os.close(fd)

    def resync(self) -> None:
        """Copies every migrated map again, right before the programs that
        use the new one are attached: the old programs kept writing the old
        map since the first copy (made when compiling, seconds earlier)."""
        for old, table in self._pending:
            self._migrate(old, table)

    def retire(self) -> list[str]:
        """Unpins the maps migrated from, once no attached program uses them."""
        retired, self._pending = [old for old, _ in self._pending], []
        for pin in retired:
            self._unpin(pin)
            self.delete(f"layout/{pin}")
        return retired

    def _unpin(self, pin: str) -> None:
        try:
            os.unlink(self.path / pin)
        except FileNotFoundError:
            pass

    # -- programs and qdiscs ---------------------------------------------
    def _pin_replacing(self, name: str, fd: int) -> None:
        """Pins fd as name in one step: the pin it replaces is there until then."""
        # bpffs refuses names with dots (EPERM): the staging name has none.
        tmp = f"new_{name}"
        self._unpin(tmp)
        bpfsys.obj_pin(fd, str(self.path / tmp))
        os.replace(self.path / tmp, self.path / name)

    def pin_program(self, hook: str, ifindex: int, prog_fd: int) -> None:
        """Records an attached program as prog_<hook>_<ifindex> (replacing
        the one it replaced), for `twinpath detach` and inspection."""
        self._pin_replacing(f"prog_{hook}_{int(ifindex)}", prog_fd)

    def pin_tail_calls(self, table: str, map_fd: int) -> None:
        """Keeps the attached programs' tail-call table (a BPF_PROG_ARRAY)
        filled after this daemon exits, as prog_array_<table>. The kernel
        empties a program array once no file descriptor or pin holds it,
        even while programs that call through it stay attached: their tail
        calls would then fail. Each build pins its own table over the one
        its programs replaced, never reusing it: an old program must not
        tail-call into a new build's. Call it once every program using the
        table is attached."""
        self._pin_replacing(f"prog_array_{table}", map_fd)

    def unpin_tail_calls(self, table: str) -> None:
        self._unpin(f"prog_array_{table}")

    def tail_call_tables(self) -> set[str]:
        return {pin.removeprefix("prog_array_") for pin in self.pins() if pin.startswith("prog_array_")}

    def unpin_program(self, hook: str, ifindex: int) -> None:
        self._unpin(f"prog_{hook}_{int(ifindex)}")

    def programs(self) -> list[tuple[str, int, int]]:
        """(hook, ifindex, program id) of every pinned program."""
        found = []
        for pin in self.pins():
            m = re.fullmatch(r"prog_(tc-ingress|tc-egress|xdp)_(\d+)", pin)
            if not m:
                continue
            fd = bpfsys.obj_get(str(self.path / pin))
            try:
                found.append((m.group(1), int(m.group(2)), bpfsys.prog_id(fd)))
            finally:
                os.close(fd)
        return found

    def note_qdisc(self, ifindex: int) -> None:
        self.put(f"clsact/{int(ifindex)}", "created by twinpath")

    def qdiscs(self) -> list[int]:
        return [int(k.split("/", 1)[1]) for k in self.keys() if k.startswith("clsact/")]

    def remove(self) -> None:
        """Unpins everything here and removes the directory."""
        self.close()
        try:
            shutil.rmtree(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise


def _stride(value_size: int, percpu: bool) -> int:
    """Bytes per value in a lookup buffer: per-CPU values are 8-aligned."""
    return (value_size + 7) // 8 * 8 if percpu else value_size


def _field_moves(old: list[list], new: list[list]) -> list[tuple[int, int, int]]:
    """(old offset, new offset, size) for every field both layouts have with
    the same type and size."""
    theirs = {leaf[0]: leaf for leaf in old}
    return [(theirs[p][1], off, size) for p, off, size, t in new
            if p in theirs and theirs[p][2] == size and theirs[p][3] == t]
