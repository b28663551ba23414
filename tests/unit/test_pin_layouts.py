"""Pinned-map bookkeeping that needs no kernel: which maps the sources
declare and at which version, layouts as migration compares them."""
import ctypes
import re

import pytest

from appliance import layout
from appliance.edge import pins
from appliance.edge.arbitration import ARB_SOURCES
from appliance.edge.bpfsource import assemble
from appliance.edge.dataplane import GATEWAY_SOURCES

DEFINES = {"TP_INTERVAL_NS": "1000000ULL", "TP_DEAD_NS": "3000000ULL", "TP_PROBE_IDENT": 1,
           "TP_HB_DEDUP_NS": "1ULL"}


def test_every_state_map_of_both_modules_is_declared_pinned_with_a_version():
    gateway = pins.declared_maps(assemble(GATEWAY_SOURCES, DEFINES))
    arbiter = pins.declared_maps(assemble(ARB_SOURCES, DEFINES))
    assert {"tp_links", "tp_health", "tp_active", "tp_classes", "tp_rules", "tp_prefix_table", "tp_keys", "tp_rtt_ring",
            "tp_probe_round", "tp_steer_stats", "tp_rtt_hist", "tp_gstats", "tp_pair"} == set(gateway)
    assert {"tp_feeds", "tp_feed_index", "tp_feed_state", "tp_feed_claims", "tp_arb_config", "tp_line_stats",
            "tp_arb_gstats"} == set(arbiter)
    assert all(v >= 1 for v in {**gateway, **arbiter}.values())
    # Nothing else keeps state in a map of its own: only the event rings, the
    # daemon's wake arming, the tail-call table and the per-packet scratch
    # are left unpinned.
    for text in (assemble(GATEWAY_SOURCES, DEFINES), assemble(ARB_SOURCES, DEFINES)):
        unpinned = re.findall(r"^\s*BPF_\w+\((tp_\w+)", text, re.M)
        assert set(unpinned) <= {"tp_events", "tp_wake", "tp_arb_events", "tp_arb_progs", "tp_arb_job"}


def test_a_declaration_with_the_wrong_arity_is_an_error():
    with pytest.raises(ValueError, match="7 arguments"):
        pins.declared_maps('TP_MAP("array", int, __u64, tp_x, 1, 0);')


def test_describe_flattens_nested_structs_and_keeps_arrays_whole():
    leaves = {p: (off, size) for p, off, size, _ in pins.describe(layout.PrefixRules)}
    assert leaves["n_rules"] == (layout.PrefixRules.n_rules.offset, layout.PrefixRules.n_rules.size)
    assert leaves["rules"][1] == ctypes.sizeof(layout.Rule) * layout.RULES_PER_PREFIX
    assert sum(size for _, size in leaves.values()) <= ctypes.sizeof(layout.PrefixRules)


class Old(ctypes.Structure):
    _fields_ = [("a", ctypes.c_uint64), ("gone", ctypes.c_uint32), ("b", ctypes.c_uint32)]


class New(ctypes.Structure):
    _fields_ = [("b", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("a", ctypes.c_uint64), ("added", ctypes.c_uint64)]


def layout_of(value):
    return {"type": 2, "key_size": 4, "value_size": ctypes.sizeof(value), "max_entries": 8,
            "key": pins.describe(ctypes.c_uint32), "value": pins.describe(value)}


def test_differences_name_each_field_added_removed_or_moved():
    diffs = pins.layout_differences(layout_of(Old), layout_of(New))
    assert "value_size 16 -> 24" in diffs
    assert {"value field gone removed", "value field added added", "value field pad added",
            "value field a changed", "value field b changed"} <= set(diffs)
    assert pins.layout_differences(layout_of(New), layout_of(New)) == []


def test_migration_moves_fields_by_name_and_leaves_new_ones_zero():
    moves = pins._field_moves(pins.describe(Old), pins.describe(New))
    old = Old(a=0x1122334455667788, gone=7, b=42)
    new = bytearray(ctypes.sizeof(New))
    raw = bytes(old)
    for src, dst, size in moves:
        new[dst:dst + size] = raw[src:src + size]
    got = New.from_buffer_copy(bytes(new))
    assert (got.a, got.b, got.added, got.pad) == (0x1122334455667788, 42, 0, 0)


def test_a_field_whose_type_changed_is_not_copied():
    class Narrowed(ctypes.Structure):
        _fields_ = [("a", ctypes.c_uint32), ("b", ctypes.c_uint32)]
    assert pins._field_moves(pins.describe(Old), pins.describe(Narrowed)) == [(12, 4, 4)]


def test_per_cpu_values_are_eight_byte_aligned():
    assert pins._stride(12, percpu=True) == 16
    assert pins._stride(12, percpu=False) == 12
