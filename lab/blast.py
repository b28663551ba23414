"""Lab only: a line-rate frame generator for the capacity bench.

    python -m lab.blast SPEC_JSON

SPEC_JSON: {"outputs": [{"ns": ..., "dev": ..., "frame": hex}, ...] (1 or 2),
"seq_offset": int (-1: none), "rate_pps": frames/s over all outputs,
"count": messages, "first_seq": int, "cpu": the core to run on}. Each
message goes out once on every output, with its big-endian u64 sequence
number at seq_offset: A/B copies of one feed message leave together. Frames
of different outputs may differ only in their first 42 bytes (Ethernet, IPv4
and UDP headers).

lab/ebpf/blast.c does the sending: an XDP program run in live-frames mode
(BPF_PROG_TEST_RUN), paced by the kernel clock inside the program, that
redirects each frame through a devmap into the output veth, whose peer (the
gateway's receiving veth) takes it as a NIC's frame: no skb on this side, so
one core offers several times what a packet socket could. The devmap holds
devices of any namespace; this process joins each output's namespace only to
put its device in the map.

Prints one JSON line: frames (asked), sent (redirected; a veth whose ring
into the gateway is full drops what it cannot take, which the receiver's
count shows), achieved_pps, seconds. Bounded: `count` messages, and a
deadline of three times the planned duration plus DEADLINE_SLACK_S.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import time

from pyroute2 import netns

from lab import layout, libbpf

MAX_COUNT = 50_000_000
# One test-run call paces the whole run: a call costs tens of ms to set up
# and tear down (its page pool), a gap that would come out as a burst. So
# the call asks for as many runs as it may take, and a one-shot SIGALRM just
# after the planned end stops it (the kernel checks signals between batches).
REPEAT = 2**31 - 1
STOP_AFTER_S = 0.05   # past the planned end: the alarm that ends the call
BATCH = 64            # frames per flush: the largest burst the receiver's ring (256) sees
DEADLINE_SLACK_S = 5.0


def _config(spec: dict, frames: list[bytes]) -> layout.Blast:
    outputs, count, rate = len(frames), int(spec["count"]), float(spec["rate_pps"])
    if not 1 <= outputs <= layout.BLAST_OUTPUTS:
        raise ValueError(f"1..{layout.BLAST_OUTPUTS} outputs")
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count must be 1..{MAX_COUNT}")
    if not 0 < rate <= 50e6:
        raise ValueError("rate_pps must be in (0, 5e7]")
    hdr = layout.BLAST_HDR
    if any(len(f) < hdr or len(f) != len(frames[0]) or f[hdr:] != frames[0][hdr:] for f in frames):
        raise ValueError(f"frames must be equally long and differ only in their first {hdr} bytes")
    offset = int(spec.get("seq_offset", -1))
    if offset >= 0 and not hdr <= offset <= len(frames[0]) - 8:
        raise ValueError(f"seq_offset must be in {hdr}..{len(frames[0]) - 8}, past the rewritten headers")
    cfg = layout.Blast(frames=count * outputs, period_ps=round(1e12 / rate), first_seq=int(spec.get("first_seq", 0)),
                       outputs=outputs, seq_offset=offset if offset >= 0 else layout.BLAST_NO_SEQ,
                       frame_len=len(frames[0]))
    for k, f in enumerate(frames):
        ctypes.memmove(ctypes.addressof(cfg.hdr) + k * hdr, f, hdr)
    return cfg


def run(spec: dict) -> dict:
    from bcc import BPF

    from appliance.edge import bpfsys
    from appliance.edge.bpfsource import assemble
    from lab.labbpf import BPF_ROOTS

    frames = [bytes.fromhex(o["frame"]) for o in spec["outputs"]]
    cfg = _config(spec, frames)
    os.sched_setaffinity(0, {int(spec["cpu"])})
    with BPF(text=assemble(["blast.c"], roots=BPF_ROOTS).encode()) as bpf:
        prog = bpf.load_func(b"blast", BPF.XDP)
        devs_fd, state_fd = bpf[b"blast_devs"].map_fd, bpf[b"blast_cfg"].map_fd
        home = os.open("/proc/self/ns/net", os.O_RDONLY)
        try:
            for slot, out in enumerate(spec["outputs"]):
                netns.setns(out["ns"], flags=0)   # 0: never create a namespace that is not there
                libbpf.map_update(devs_fd, ctypes.c_uint32(slot), ctypes.c_uint32(socket.if_nametoindex(out["dev"])))
        finally:
            netns.setns(home, flags=0)
            os.close(home)
        libbpf.map_update(state_fd, ctypes.c_uint32(0), cfg)
        now = layout.Blast()
        planned_s = cfg.frames / float(spec["rate_pps"])
        deadline = time.monotonic() + 3 * planned_s + DEADLINE_SLACK_S
        previous = signal.signal(signal.SIGALRM, lambda *_: None)   # only to interrupt the call
        try:
            while True:
                left_s = (cfg.frames - now.sent) / float(spec["rate_pps"])
                signal.setitimer(signal.ITIMER_REAL, left_s + STOP_AFTER_S)
                libbpf.prog_test_run_live(prog.fd, frames[0], REPEAT, BATCH)
                bpfsys.map_lookup(state_fd, ctypes.c_uint32(0), now)
                if now.sent >= now.frames or time.monotonic() > deadline:
                    break
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    seconds = max(now.last_ns - now.start_ns, 1) / 1e9
    return {"frames": now.frames, "sent": now.sent, "seconds": round(seconds, 4),
            "achieved_pps": round(max(now.sent - 1, 0) / seconds, 1)}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        result = run(json.loads(argv[0]))
    except (ValueError, KeyError, OSError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
