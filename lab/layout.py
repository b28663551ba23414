"""Python view of lab/ebpf/lab_layout.h: the one definition of the lab
programs' map values (the fault injector's, the exchange reflector's and the
capacity generator's).

Read like appliance/layout.py reads the product's header: constants from the
header itself, ctypes structs mirroring its structs field for field, checked
against the compiled types by tests/kernel/test_layout.py.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

from appliance.layout import header_constants

C = header_constants((Path(__file__).parent / "ebpf" / "lab_layout.h").read_text())
REFLECT_PORTS = C["TP_REFLECT_PORTS"]
REFLECT_ACTIONS = {"pass": C["TP_REFLECT_PASS"], "reflect": C["TP_REFLECT_REFLECT"],
                   "sink": C["TP_REFLECT_SINK"]}

u16, u32, u64 = ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class FaultConfig(ctypes.Structure):
    _fields_ = [("mode", u32), ("loss_threshold", u32), ("burst_len", u32), ("redirect_ifindex", u32),
                ("burst_left", u32 * 2)]


class FaultCounters(ctypes.Structure):
    _fields_ = [("passed", u64), ("dropped", u64), ("delayed", u64)]


BLAST_OUTPUTS, BLAST_HDR, BLAST_NO_SEQ = C["TP_BLAST_OUTPUTS"], C["TP_BLAST_HDR"], C["TP_BLAST_NO_SEQ"]


class Blast(ctypes.Structure):
    _fields_ = [("frames", u64), ("period_ps", u64), ("first_seq", u64), ("sent", u64), ("start_ns", u64),
                ("last_ns", u64), ("outputs", u16), ("seq_offset", u16), ("frame_len", u16), ("pad", u16),
                ("hdr", ctypes.c_uint8 * (BLAST_OUTPUTS * BLAST_HDR)), ("pad2", ctypes.c_uint8 * 4)]


class ReflectPort(ctypes.Structure):
    _fields_ = [("action", u16), ("reply_port", u16)]  # reply_port: host order


# Map name -> (key, value) in lab/ebpf/reflect.c; both keyed by UDP destination port, host order.
REFLECT_MAPS = {
    "reflect_cfg": (u32, ReflectPort),
    "reflect_stats": (u32, u64),
}
