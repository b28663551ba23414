"""The lab's fault injector, as packet fixtures: each mode drops exactly the
direction it names (fault_from_gw sits on a carrier's ingress from the
gateway, fault_to_gw on its egress towards it) and counts what it did."""
import ctypes

import pytest
from bcc import BPF
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from appliance.edge.bpfsource import assemble
from lab import faults, labbpf, layout
from lab.libbpf import prog_test_run

TC_ACT_OK, TC_ACT_SHOT = 0, 2
FRAME = bytes(Ether() / IP(src="198.18.10.1", dst="198.19.0.10") / UDP(dport=9000) / b"order")
# (mode, dropped from the gateway, dropped towards it)
EXPECTED = [("pass", False, False), ("blackhole", True, True), ("blackhole-tx", True, False),
            ("blackhole-rx", False, True)]


@pytest.fixture(scope="module")
def injector():
    bpf = BPF(text=assemble(["fault.c"], roots=labbpf.BPF_ROOTS).encode())
    yield bpf, {name: bpf.load_func(name.encode(), BPF.SCHED_CLS) for name in ("fault_from_gw", "fault_to_gw")}
    bpf.cleanup()


@pytest.mark.parametrize("mode,from_gw_dropped,to_gw_dropped", EXPECTED)
def test_each_mode_drops_the_direction_it_names(injector, mode, from_gw_dropped, to_gw_dropped):
    bpf, progs = injector
    code = faults.MODE_PASS if mode == "pass" else faults.BLACKHOLES[mode]
    bpf[b"fault_cfg"][ctypes.c_uint32(0)] = layout.FaultConfig(code, 0)
    bpf[b"fault_stats"].clear()
    verdicts = {name: prog_test_run(prog.fd, FRAME)[0] for name, prog in progs.items()}
    assert verdicts == {"fault_from_gw": TC_ACT_SHOT if from_gw_dropped else TC_ACT_OK,
                        "fault_to_gw": TC_ACT_SHOT if to_gw_dropped else TC_ACT_OK}
    stats = bpf[b"fault_stats"][ctypes.c_uint32(0)]
    assert sum(c.dropped for c in stats) == from_gw_dropped + to_gw_dropped
    assert sum(c.passed for c in stats) == 2 - from_gw_dropped - to_gw_dropped


def test_every_blackhole_mode_is_a_lab_fault():
    assert set(faults.BLACKHOLES) <= set(faults.FAULTS)
    assert len(set(faults.BLACKHOLES.values()) | {faults.MODE_PASS, faults.MODE_LOSS}) == len(faults.BLACKHOLES) + 2
