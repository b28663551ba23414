"""A probe the kernel refuses to route (the link's device or route down) never
reaches the egress program, so tp_health.unanswered cannot count it: the
sender keeps each link's run of refused probes in tp_unsent for the reflex,
and ends it at the first probe that leaves. Run inside the lab's gw, on a
spare link (taking it down loses only its own connected route, which comes
back with it)."""
import json
import sys

from lab import topology

SCRIPT = r"""
import ctypes, json, sys, threading, time
from bcc import BPF
from pyroute2 import IPRoute
from appliance import layout
from appliance.edge.dataplane import PROBE_IDENT, open_probe_socket
from fastpath.heartbeat import Sender

dev, local, target = sys.argv[1:4]
bpf = BPF(text="BPF_ARRAY(unsent, u64, 8);")
unsent = bpf["unsent"]
sender = Sender([open_probe_socket(dev, local, target)], [layout.probe_template(0, PROBE_IDENT)],
                layout.PROBE_SEQ_OFFSET, 1_000_000, unsent_fd=unsent.map_fd)
thread = threading.Thread(target=sender.run)
thread.start()
seen = {}
with IPRoute() as ipr:
    index = ipr.link_lookup(ifname=dev)[0]
    try:
        time.sleep(0.05)
        seen["up"] = unsent[ctypes.c_uint32(0)].value
        ipr.link("set", index=index, state="down")
        time.sleep(0.05)
        seen["down"] = unsent[ctypes.c_uint32(0)].value
    finally:
        ipr.link("set", index=index, state="up")
    deadline = time.monotonic() + 5
    while unsent[ctypes.c_uint32(0)].value and time.monotonic() < deadline:
        time.sleep(0.01)
    seen["up_again"] = unsent[ctypes.c_uint32(0)].value
sender.stop()
thread.join(5)
print(json.dumps(seen))
"""


def test_probes_refused_by_a_down_link_are_counted_until_one_leaves(lab):
    topology.add_spare_links(lab)
    veth = topology.SPARE_LINKS["C"]
    local, target = (cidr.split("/")[0] for cidr in (veth.cidr, veth.peer_cidr))
    out = lab.run("gw", [sys.executable, "-c", SCRIPT, veth.ifname, local, target], timeout=60)
    seen = json.loads(out.stdout)
    assert seen["up"] == 0
    assert seen["down"] >= 10          # ~50 periods of 1 ms refused; margin for a slow start
    assert seen["up_again"] == 0
