"""The per-packet cost bench keeps every XDP program it measures attached
(bench/progcost.py says why): in a namespace of its own that nothing else
sees and that goes with its socket, leaving the bench's namespace as it was."""
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
