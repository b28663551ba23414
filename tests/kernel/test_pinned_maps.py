"""Pinned, versioned maps against the kernel: a second module reuses what
the first pinned, a struct changed under the same version is refused
before anything attaches, an older version is migrated field by field, a
newer one (a downgrade) is refused, and detach removes every pin."""
import ctypes
import os
import re
import uuid

import pytest
from bcc import BPF

from appliance.edge import bpfsource, bpfsys, pins
from appliance.edge.dataplane import load_pinned

SOURCE = """
#include "lib/pin.h"
struct tp_thing { __u64 a; __u64 b; };
TP_MAP("array", int, struct tp_thing, tp_thing, 4, VERSION, 0);
TP_MAP("percpu_array", int, __u64, tp_count, 2, VERSION, 0);
int tp_prog(struct __sk_buff *skb) { int k = 0; struct tp_thing *t = tp_thing.lookup(&k); if (t) t->a++; return 0; }
"""


@pytest.fixture
def pin_dir():
    d = pins.PIN_ROOT / f"test-{uuid.uuid4().hex[:8]}"
    yield pins.PinDir(d)
    pins.PinDir(d).remove()


@pytest.fixture
def sources(tmp_path, monkeypatch):
    """Writes an entry file per variant; returns a loader of (body, version)."""
    monkeypatch.setattr(bpfsource, "ROOTS", [tmp_path, *bpfsource.ROOTS])

    def load(dir_: pins.PinDir, version: int, struct: str = "__u64 a; __u64 b;"):
        name = f"v{version}-{abs(hash(struct))}.c"
        (tmp_path / name).write_text(SOURCE.replace("VERSION", str(version))
                                     .replace("__u64 a; __u64 b;", struct))
        bpf, migrated = load_pinned([name], {}, dir_)
        bpf.load_func("tp_prog", BPF.SCHED_CLS)
        return bpf, migrated
    return load


def test_a_second_module_reuses_the_pinned_state(pin_dir, sources):
    first, migrated = sources(pin_dir, 1)
    assert migrated == {} and {"tp_thing_v1", "tp_count_v1", "tp_registry"} <= set(pin_dir.pins())
    first["tp_thing"][ctypes.c_int(2)] = first["tp_thing"].Leaf(a=7, b=9)
    second, _ = sources(pin_dir, 1)
    assert (second["tp_thing"][ctypes.c_int(2)].a, second["tp_thing"][ctypes.c_int(2)].b) == (7, 9)


def test_a_layout_changed_under_the_same_version_is_refused_and_nothing_new_stays_pinned(pin_dir, sources):
    sources(pin_dir, 1)
    with pytest.raises(pins.PinError, match=r"tp_thing_v1 was pinned with another layout .*value field c added"):
        sources(pin_dir, 1, "__u64 a; __u64 b; __u64 c;")
    assert sorted(p for p in pin_dir.pins() if p.startswith("tp_")) == ["tp_count_v1", "tp_registry",
                                                                       "tp_thing_v1"]


def test_an_older_version_is_migrated_field_by_field_then_retired(pin_dir, sources):
    old, _ = sources(pin_dir, 1)
    for k in range(4):
        old["tp_thing"][ctypes.c_int(k)] = old["tp_thing"].Leaf(a=100 + k, b=200 + k)
    old["tp_count"][ctypes.c_int(1)] = old["tp_count"].Leaf(*range(5, 5 + bpfsys.possible_cpus()))
    new, migrated = sources(pin_dir, 2, "__u64 added; __u64 b; __u64 a;")
    assert migrated == {"tp_thing": 4, "tp_count": 2}
    got = [(v.a, v.b, v.added) for v in (new["tp_thing"][ctypes.c_int(k)] for k in range(4))]
    assert got == [(100 + k, 200 + k, 0) for k in range(4)]
    assert list(new["tp_count"][ctypes.c_int(1)]) == list(range(5, 5 + bpfsys.possible_cpus()))  # every CPU's
    assert {"tp_thing_v1", "tp_count_v1"} <= set(pin_dir.pins())   # until the new programs are attached
    assert sorted(pin_dir.retire()) == ["tp_count_v1", "tp_thing_v1"]
    assert not {"tp_thing_v1", "tp_count_v1"} & set(pin_dir.pins())


def test_a_newer_pinned_version_is_a_downgrade_and_refused(pin_dir, sources):
    sources(pin_dir, 3)
    with pytest.raises(pins.PinError, match="tp_thing_v3 is newer than this build's tp_thing_v2"):
        sources(pin_dir, 2)


def test_remove_unpins_everything(pin_dir, sources):
    sources(pin_dir, 1)
    pin_dir.remove()
    assert not pin_dir.path.exists()


def test_a_directory_outside_bpffs_is_refused(tmp_path):
    with pytest.raises(pins.PinError, match="not on a bpffs mount"):
        pins.PinDir(tmp_path / "p").open()


def test_the_registry_records_the_layout_bcc_compiled(pin_dir, sources):
    sources(pin_dir, 1)
    pin_dir.open()
    recorded = pin_dir.get("layout/tp_thing_v1")
    assert re.search(r'"value_size": 16', recorded) and '"a"' in recorded and '"b"' in recorded
    assert os.stat(pin_dir.path).st_mode & 0o777 == 0o700
