"""The delay line: added one-way latency, jitter and creeping loss on what a
carrier sends to the gateway (lab.faults' delay, jitter and
creep-then-blackhole; the kernel has no netem).

lab.faults starts it in the carrier's namespace as
`python -m lab.delayline --lab NAME --link A --delay-us 2000 ...`. It writes
DELAY mode into the link's fault map: fault.c then redirects every frame the
carrier's gw-facing veth would send to the gateway into DELAY_VETH[0], a veth
pair in the carrier namespace. This process reads them off DELAY_VETH[1]
(AF_PACKET), holds each until it is due and sends it out of the gw-facing veth
with SO_MARK = TP_FAULT_DELAY_MARK, which fault.c lets pass. Both sockets
carry a virtio-net header (PACKET_VNET_HDR), so a frame keeps its checksum
offload state and GSO across the detour: a TCP segment from exch reaches the
gateway as the kernel would have sent it.

A frame arriving t after the start is held delay_us, moving linearly to
ramp_to_us over ramp_s when given, plus a uniform 0..jitter_us; it is dropped
with probability ramp_loss, scaled by the ramp's progress. The line is FIFO:
a frame is never released before the one ahead of it, so jitter never
reorders (with packets closer together than the jitter, each waits for the
one ahead and the delay leans towards delay_us + jitter_us).

It is bounded: at most --max-queue frames are held (more are dropped and
counted), and it exits on SIGTERM, after --max-s, when the map no longer holds
its config (someone cleared the fault), or with --blackhole-after-ramp when
the ramp ends: it then black-holes the link both ways (event "blackhole") and
leaves the blackhole in place. On its way out it restores pass-through if the
map still holds its config, sends what it still holds (fault.c drops it
under a blackhole), and records an "exit" event with its counts.
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import select
import socket
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pyroute2 import IPRoute, NetlinkError

from appliance.edge.netlink import ifindex
from lab import faults, layout
from lab.colo import DELAY_VETH, LINKS, Lab

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15        # linux/if_packet.h
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33         # root may exceed net.core.rmem_max
MAX_FRAME = 65536 + 10      # a GSO frame and its virtio-net header
RX_BATCH = 256              # frames read per wake-up before due frames are sent again
POLL_S = 0.05               # longest wait before SIGTERM and deadlines are looked at
CHECK_NS = 100_000_000      # how often the map is checked for a cleared fault
DEFAULT_MAX_QUEUE = 10_000


@dataclass(frozen=True)
class Profile:
    """What the line does to a frame that arrives elapsed_ns after it started."""
    delay_us: int
    jitter_us: int = 0
    ramp_to_us: int | None = None
    ramp_s: float | None = None
    ramp_loss: float = 0.0

    def progress(self, elapsed_ns: int) -> float:
        return 1.0 if not self.ramp_s else min(1.0, elapsed_ns / (self.ramp_s * 1e9))

    def hold_ns(self, elapsed_ns: int, rng: random.Random) -> int:
        base_us = self.delay_us
        if self.ramp_to_us is not None:
            base_us += (self.ramp_to_us - self.delay_us) * self.progress(elapsed_ns)
        return round((base_us + rng.uniform(0, self.jitter_us)) * 1000)

    def loss(self, elapsed_ns: int) -> float:
        return self.ramp_loss * self.progress(elapsed_ns)


class Line:
    """The held frames, FIFO, with their due times; at most `capacity` of them."""

    def __init__(self, profile: Profile, capacity: int, rng: random.Random):
        self.profile, self.capacity, self.rng = profile, capacity, rng
        self.held: collections.deque[tuple[int, bytes]] = collections.deque()
        self.last_due_ns = 0
        self.counts = {"received": 0, "lost": 0, "overflowed": 0}

    def admit(self, frame: bytes, arrived_ns: int, elapsed_ns: int) -> None:
        self.counts["received"] += 1
        if self.rng.random() < self.profile.loss(elapsed_ns):
            self.counts["lost"] += 1
            return
        if len(self.held) >= self.capacity:
            self.counts["overflowed"] += 1
            return
        # Never before the frame ahead: jitter and a falling ramp must not reorder.
        self.last_due_ns = max(arrived_ns + self.profile.hold_ns(elapsed_ns, self.rng), self.last_due_ns)
        self.held.append((self.last_due_ns, frame))

    def due(self, now_ns: int) -> Iterator[bytes]:
        while self.held and self.held[0][0] <= now_ns:
            yield self.held.popleft()[1]

    def next_due_ns(self) -> int | None:
        return self.held[0][0] if self.held else None

    def flush(self) -> Iterator[bytes]:
        while self.held:
            yield self.held.popleft()[1]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.ramp_s is None and (args.ramp_to_us is not None or args.blackhole_after_ramp):
        parser.error("--ramp-to-us and --blackhole-after-ramp need --ramp-s")
    lab, link = Lab(args.lab), args.link
    faults.helper_setup()
    try:
        entry_ifindex = delay_veth()
        rx, tx = open_sockets(LINKS[link].carrier_dev)
    except (OSError, NetlinkError) as exc:
        print(json.dumps({"error": f"delay line on link {link}: {exc}"}), flush=True)
        return 2
    profile = Profile(args.delay_us, args.jitter_us, args.ramp_to_us, args.ramp_s, args.ramp_loss)
    line = Line(profile, args.max_queue, random.Random())
    mine = layout.FaultConfig(faults.MODE_DELAY, redirect_ifindex=entry_ifindex)
    started_ns = faults.write_cfg(lab, link, mine)
    faults.announce(started_ns)
    sent = {"sent": 0, "send_errors": 0}
    try:
        reason = run(lab, link, mine, rx, tx, line, sent, started_ns, args)
    finally:
        if holds(lab, link, mine):
            faults.write_cfg(lab, link, layout.FaultConfig(faults.MODE_PASS))
    for frame in line.flush():
        send(tx, frame, sent)
    kernel_drops = struct.unpack("=II", rx.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]
    faults.record_event(lab, link, "exit", time.monotonic_ns(), reason=reason, **line.counts, **sent,
                        kernel_drops=kernel_drops)
    return 0


def run(lab: Lab, link: str, mine: layout.FaultConfig, rx: socket.socket, tx: socket.socket, line: Line,
        sent: dict[str, int], started_ns: int, args) -> str:
    """Receive, hold and send until a reason to stop; returns it."""
    end_ns = started_ns + round(args.max_s * 1e9)
    blackhole_ns = started_ns + round(args.ramp_s * 1e9) if args.blackhole_after_ramp else None
    check_ns = started_ns + CHECK_NS
    while True:
        now_ns = time.monotonic_ns()
        for frame in line.due(now_ns):
            send(tx, frame, sent)
        if faults.HelperStop.requested:
            return "stopped"
        if now_ns >= end_ns:
            return "lifetime"
        if blackhole_ns is not None and now_ns >= blackhole_ns:
            began_ns = faults.write_cfg(lab, link, layout.FaultConfig(faults.MODE_BLACKHOLE))
            faults.record_event(lab, link, "blackhole", began_ns)
            return "blackhole"
        if now_ns >= check_ns:
            if not holds(lab, link, mine):
                return "cleared"
            check_ns = now_ns + CHECK_NS
        wake_ns = min(t for t in (line.next_due_ns(), end_ns, blackhole_ns, check_ns) if t is not None)
        if select.select([rx], [], [], min(POLL_S, max(0, wake_ns - now_ns) / 1e9))[0]:
            receive(rx, line, started_ns)


def receive(rx: socket.socket, line: Line, started_ns: int) -> None:
    for _ in range(RX_BATCH):
        try:
            frame, address = rx.recvfrom(MAX_FRAME)
        except BlockingIOError:
            return
        if address[2] != PACKET_OUTGOING:
            now_ns = time.monotonic_ns()
            line.admit(frame, now_ns, now_ns - started_ns)


def send(tx: socket.socket, frame: bytes, sent: dict[str, int]) -> None:
    try:
        tx.send(frame)
        sent["sent"] += 1
    except OSError:
        sent["send_errors"] += 1


def holds(lab: Lab, link: str, mine: layout.FaultConfig) -> bool:
    """The link's map still holds this line's config: nobody cleared the fault."""
    cfg = faults.read_cfg(lab, link)
    return (cfg.mode, cfg.redirect_ifindex) == (mine.mode, mine.redirect_ifindex)


def delay_veth() -> int:
    """The ifindex fault.c redirects into, making the pair (up, no addresses) on first use."""
    entry, exit_ = DELAY_VETH
    with IPRoute() as ipr:
        if not ipr.link_lookup(ifname=entry):
            ipr.link("add", ifname=entry, kind="veth", peer=exit_)
        for dev in DELAY_VETH:
            ipr.link("set", index=ifindex(ipr, dev), state="up")
        return ifindex(ipr, entry)


def open_sockets(carrier_dev: str) -> tuple[socket.socket, socket.socket]:
    """The tap on the pair's far end, and the marked sender on the gw-facing veth."""
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    rx.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)  # a burst waits here, not dropped
    rx.bind((DELAY_VETH[1], ETH_P_ALL))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    tx.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, faults.DELAY_MARK)
    tx.bind((carrier_dev, 0))
    return rx, tx


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lab.delayline", description=(
        "Delay (and jitter, creeping loss) on what a lab carrier sends to the gateway; "
        "started by lab.faults in the carrier's namespace."))
    p.add_argument("--lab", required=True)
    p.add_argument("--link", required=True, choices=sorted(LINKS))
    p.add_argument("--delay-us", type=int, default=0)
    p.add_argument("--jitter-us", type=int, default=0, help="uniform 0..this on top of the delay")
    p.add_argument("--ramp-to-us", type=int, help="the delay moves linearly to this over --ramp-s")
    p.add_argument("--ramp-s", type=float)
    p.add_argument("--ramp-loss", type=float, default=0.0,
                   help="drop probability reached at the end of the ramp, from 0")
    p.add_argument("--blackhole-after-ramp", action="store_true",
                   help="when the ramp ends, black-hole the link both ways and exit")
    p.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, help="frames held at most")
    p.add_argument("--max-s", type=float, default=faults.HELPER_MAX_S, help="longest life")
    return p


if __name__ == "__main__":
    sys.exit(main())
