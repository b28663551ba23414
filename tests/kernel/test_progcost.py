"""The per-packet cost bench keeps every XDP program it measures attached
(bench/progcost.py says why): in a namespace of its own that nothing else
sees and that goes with its socket, leaving the bench's namespace as it was."""
import ctypes
import os

from bcc import BPF

from appliance.edge import bpfsys
from bench import progcost


def own_netns() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def host_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def test_measured_xdp_programs_stay_attached_in_a_namespace_that_goes_with_its_socket():
    bpf = BPF(text=b"int one(struct xdp_md *ctx) { return XDP_PASS; }\n"
                   b"int two(struct xdp_md *ctx) { return XDP_PASS; }")
    try:
        progs = [bpf.load_func("one", BPF.XDP), bpf.load_func("two", BPF.XDP)]
        ids = {bpfsys.prog_id(p.fd) for p in progs}
        assert len(ids) == len(progs)
        before_ns, before_links = own_netns(), host_links()
        with progcost.attached_xdp([p.fd for p in progs]) as ipr:
            assert own_netns() == before_ns
            assert host_links() == before_links
            attached = {link.get(("IFLA_XDP", "IFLA_XDP_PROG_ID")) for link in ipr.get_links()}
            assert ids <= attached
        assert own_netns() == before_ns
        assert host_links() == before_links
    finally:
        bpf.cleanup()


def test_each_round_of_a_case_starts_with_one_untimed_call_of_its_warm_packet():
    # The program counts its runs per packet kind: byte 0 is 1 for the warm packet.
    bpf = BPF(text=b"""
BPF_ARRAY(runs, u64, 2);
int count(struct xdp_md *ctx) {
    u8 *p = (void *)(long)ctx->data;
    if ((void *)(p + 1) > (void *)(long)ctx->data_end)
        return XDP_ABORTED;
    int k = p[0] & 1;
    u64 *n = runs.lookup(&k);
    if (n)
        *n += 1;
    return XDP_PASS;
}""")
    try:
        prog = bpf.load_func("count", BPF.XDP)
        case = progcost.Case("xdp", prog.fd, lambda i: bytes(64), progcost.VERDICTS["pass_xdp"], repeat=1,
                             warm=b"\x01" + bytes(63))
        out = progcost.measure({"counted": case}, rounds=3, calls_per_round=4)
        assert out["counted"]["rounds"] == 3
        assert [bpf["runs"][ctypes.c_int(k)].value for k in (0, 1)] == [3 * 4, 3]
    finally:
        bpf.cleanup()
