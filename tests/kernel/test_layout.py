"""The Python view of every struct in ebpf/lib/layout.h must match, field by
field, what BCC compiled from that header."""
import ctypes
import re

import pytest
from bcc import BPF

from appliance import layout
from appliance.edge.bpfsource import EBPF_DIR, assemble

PYTHON_VIEW = {
    "tp_link": layout.Link, "tp_health": layout.Health, "tp_key": layout.Key, "tp_class": layout.Class,
    "tp_lpm_key": layout.LpmKey, "tp_rule": layout.Rule, "tp_prefix_rules": layout.PrefixRules,
    "tp_counters": layout.Counters, "tp_event": layout.Event, "tp_probe": layout.Probe,
    "tp_fault_config": layout.FaultConfig, "tp_fault_counters": layout.FaultCounters,
    "tp_feed_key": layout.FeedKey, "tp_feed": layout.Feed, "tp_feed_state": layout.FeedState,
    "tp_feed_claims": layout.FeedClaims,
    "tp_arb_config": layout.ArbConfig, "tp_line_stats": layout.LineStats, "tp_arb_event": layout.ArbEvent,
    "tp_reflect_port": layout.ReflectPort,
}


def header_structs() -> list[str]:
    return re.findall(r"^struct (tp_\w+) \{", (EBPF_DIR / "lib" / "layout.h").read_text(), re.M)


def shape(t):
    """Size, and for structs and arrays their fields' names, offsets and
    shapes, recursively: equal shapes mean byte-identical layouts."""
    if issubclass(t, ctypes.Array):
        return ("array", t._length_, shape(t._type_))
    if issubclass(t, ctypes.Structure):
        return ("struct", ctypes.sizeof(t),
                [(name, getattr(t, name).offset, shape(ft)) for name, ft in t._fields_])
    return ctypes.sizeof(t)


def test_every_header_struct_has_a_python_view():
    assert sorted(header_structs()) == sorted(PYTHON_VIEW)


@pytest.fixture(scope="module")
def probe_module():
    # One array per struct: BCC then reflects each compiled layout as ctypes.
    decls = "".join(f"BPF_ARRAY(l_{n}, struct {n}, 1);\n" for n in header_structs())
    return BPF(text=(assemble(["lib/layout.h"]) + decls).encode())


@pytest.mark.parametrize("struct", sorted(PYTHON_VIEW))
def test_struct_layout_matches_compiled(probe_module, struct):
    compiled = probe_module[f"l_{struct}"].Leaf
    assert ctypes.sizeof(compiled) == ctypes.sizeof(PYTHON_VIEW[struct])
    assert shape(compiled) == shape(PYTHON_VIEW[struct])


@pytest.mark.parametrize("name", sorted(layout.MAPS))
def test_map_types_match_compiled(compiled_gateway, name):
    assert_map_matches(compiled_gateway.bpf[name], *layout.MAPS[name])


@pytest.mark.parametrize("name", sorted(layout.ARB_MAPS))
def test_arbitration_map_types_match_compiled(compiled_arbiter, name):
    assert_map_matches(compiled_arbiter.bpf[name], *layout.ARB_MAPS[name])


def assert_map_matches(table, key_t, value_t):
    value = getattr(table, "sLeaf", table.Leaf)  # per-CPU tables: the per-CPU element
    assert shape(table.Key) == shape(key_t)
    assert shape(value) == shape(value_t)
