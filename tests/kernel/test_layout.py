"""The Python views of the layout headers must match, field by field, what
BCC compiled from them: ebpf/lib/layout.h against appliance.layout (the
product's maps), lab/ebpf/lab_layout.h against lab.layout (the lab's)."""
import ctypes
import re

import pytest
from bcc import BPF

from appliance import layout
from appliance.edge.bpfsource import EBPF_DIR, assemble
from lab import labbpf
from lab import layout as lab_layout

# Header, as assemble() names it -> (its roots, which hold it first; struct -> Python view).
VIEWS = {
    "lib/layout.h": ((EBPF_DIR,), {
        "tp_link": layout.Link, "tp_health": layout.Health, "tp_round": layout.Round, "tp_rtt_ring": layout.RttRing, "tp_key": layout.Key,
        "tp_class": layout.Class,
        "tp_lpm_key": layout.LpmKey, "tp_rule": layout.Rule, "tp_prefix_rules": layout.PrefixRules,
        "tp_prefix_slot": layout.PrefixSlot, "tp_prefix_table": layout.PrefixTable,
        "tp_counters": layout.Counters, "tp_pair": layout.Pair, "tp_wake": layout.Wake, "tp_event": layout.Event, "tp_probe": layout.Probe,
        "tp_feed_key": layout.FeedKey, "tp_feed": layout.Feed, "tp_feed_slot": layout.FeedSlot, "tp_feed_index": layout.FeedIndex,
        "tp_feed_state": layout.FeedState,
        "tp_feed_claims": layout.FeedClaims,
        "tp_arb_config": layout.ArbConfig, "tp_line_stats": layout.LineStats, "tp_arb_event": layout.ArbEvent,
    }),
    "lab_layout.h": (labbpf.BPF_ROOTS, {
        "tp_fault_config": lab_layout.FaultConfig, "tp_fault_counters": lab_layout.FaultCounters,
        "tp_reflect_port": lab_layout.ReflectPort, "tp_blast": lab_layout.Blast,
    }),
}
STRUCTS = sorted((header, struct) for header, (_, view) in VIEWS.items() for struct in view)


def header_structs(header: str) -> list[str]:
    roots, _ = VIEWS[header]
    return re.findall(r"^struct (tp_\w+) \{", (roots[0] / header).read_text(), re.M)


def shape(t):
    """Size, and for structs and arrays their fields' names, offsets and
    shapes, recursively: equal shapes mean byte-identical layouts."""
    if issubclass(t, ctypes.Array):
        return ("array", t._length_, shape(t._type_))
    if issubclass(t, ctypes.Structure):
        return ("struct", ctypes.sizeof(t),
                [(name, getattr(t, name).offset, shape(ft)) for name, ft in t._fields_])
    return ctypes.sizeof(t)


@pytest.mark.parametrize("header", sorted(VIEWS))
def test_every_header_struct_has_a_python_view(header):
    assert sorted(header_structs(header)) == sorted(VIEWS[header][1])


@pytest.fixture(scope="module")
def probe_modules():
    # One array per struct: BCC then reflects each compiled layout as ctypes.
    modules = {}
    for header, (roots, _) in VIEWS.items():
        decls = "".join(f"BPF_ARRAY(l_{n}, struct {n}, 1);\n" for n in header_structs(header))
        modules[header] = BPF(text=(assemble([header], roots=roots) + decls).encode())
    yield modules
    for module in modules.values():
        module.cleanup()


@pytest.mark.parametrize("header,struct", STRUCTS)
def test_struct_layout_matches_compiled(probe_modules, header, struct):
    compiled = probe_modules[header][f"l_{struct}"].Leaf
    view = VIEWS[header][1][struct]
    assert ctypes.sizeof(compiled) == ctypes.sizeof(view)
    assert shape(compiled) == shape(view)


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
