"""Lab market-data tools: the exchange's A/B publisher and the trader's receiver.

Run inside a namespace as `python -m lab.marketdata publish|receive ...`,
with traffic.py's conventions: {"ready": true} once set up, then exactly one
JSON result line at exit (also on SIGTERM/SIGINT); a setup failure prints
{"error": ...} and exits 2. Times are CLOCK_MONOTONIC ns.

publish sends a FeedPlan's schedule (feedplan.build) from two sockets, one
bound to each line's source address, so exch's source routing puts line A
on handoff A and line B on handoff B. receive records every datagram to a
numpy file of feedplan.RECORD_DTYPE rows; load_received() reads it back for
feedplan.check().
"""
from __future__ import annotations

import argparse
import ctypes
import select
import socket
import struct
import sys
import time
from array import array
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from appliance.core.stats import PER_MILLE, nearest_rank
from lab import feedplan
from lab.feedproto import MDP3_SENDING_TIME_OFFSET
from lab.traffic import (
    TIMESPEC,
    SetupError,
    Stop,
    emit,
    positive,
    realtime_minus_monotonic_ns,
    run_tool,
    stamped_udp_socket,
    udp_socket_drops,
)

PR_SET_TIMERSLACK = 29
# Waits longer than this sleep until this much before the deadline, then spin:
# a sleep wakes up to tens of µs late on a VM, a spin costs a core.
SPIN_NS = 100_000
POLL_MS = 50
MAX_DATAGRAM = 65535
SENDING_TIME = struct.Struct("<Q")


# ---------------------------------------------------------------- publish

def publish(args: argparse.Namespace) -> int:
    try:
        plan = feedplan.FeedPlan.model_validate_json(Path(args.plan).read_text())
    except (OSError, ValidationError) as exc:
        raise SetupError(f"publish: cannot use plan {args.plan}: {exc}") from exc
    sends = feedplan.build(plan)
    # Built up front so the send loop does nothing but pace and send; a packet
    # both lines carry is built once.
    cache: dict[tuple, bytes] = {}
    payloads = []
    for key in zip(*(sends[field].tolist() for field in ("kind", "session", "seq", "count"))):
        if key not in cache:
            cache[key] = feedplan.packet_bytes(plan, *key)
        payloads.append(cache[key])
    stamp = plan.protocol == "mdp3"
    if stamp:  # each datagram gets its own buffer for its SendingTime
        payloads = [bytearray(p) for p in payloads]
    socks = []
    for line, src in zip(feedplan.LINES, (args.src_a, args.src_b)):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((src, 0))
            sock.connect((args.dst, args.port))
        except OSError as exc:
            raise SetupError(f"publish: line {line}: cannot bind {src} / connect to "
                             f"{args.dst}:{args.port}: {exc.strerror}") from exc
        socks.append(sock)
    ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)  # sleeps end on time, not 50 µs late
    emit({"ready": True})

    due_ns = sends["t_ns"].tolist()
    lines = sends["line"].tolist()
    sent, errors = [0, 0], [0, 0]
    late = array("q")
    stopped = None
    start_ns = time.monotonic_ns()
    deadline_ns = start_ns + int(args.timeout * 1e9)
    send_fns = [sock.send for sock in socks]
    for offset, line, payload in zip(due_ns, lines, payloads):
        due = start_ns + offset
        now = time.monotonic_ns()
        if due - now > SPIN_NS:
            time.sleep((due - now - SPIN_NS) / 1e9)
        while now < due:
            now = time.monotonic_ns()
        if Stop.requested:
            stopped = "signal"
            break
        if now >= deadline_ns:
            stopped = "timeout"
            break
        if stamp:
            SENDING_TIME.pack_into(payload, MDP3_SENDING_TIME_OFFSET, time.time_ns())
        try:
            send_fns[line](payload)
            sent[line] += 1
        except OSError:  # e.g. ECONNREFUSED after an ICMP error from the trader
            errors[line] += 1
        late.append(now - due)
    end_ns = time.monotonic_ns()
    for sock in socks:
        sock.close()

    done = len(late)
    lateness = np.frombuffer(late, dtype=np.int64) if done else np.zeros(1, dtype=np.int64)
    planned_ns = int(sends["t_ns"][done - 1] - sends["t_ns"][0]) if done else 0
    taken_ns = planned_ns + int(lateness[-1] - lateness[0])
    ordered = np.sort(lateness)
    emit({
        "packets": dict(zip(feedplan.LINES, sent)),
        "errors": dict(zip(feedplan.LINES, errors)),
        "planned": {line: int(np.count_nonzero(sends["line"] == i)) for i, line in enumerate(feedplan.LINES)},
        "start_ns": start_ns,
        "duration_s": (end_ns - start_ns) / 1e9,
        # The exchange's pace as achieved: the plan's rate scaled by planned / actual span.
        "rate": plan.rate * planned_ns / taken_ns if planned_ns and taken_ns else None,
        "late_p50_us": int(nearest_rank(ordered, PER_MILLE["p50"])) / 1000,
        "late_p99_us": int(nearest_rank(ordered, PER_MILLE["p99"])) / 1000,
        "late_max_us": int(lateness.max()) / 1000,
        "stopped": stopped,
    })
    return 0


# ---------------------------------------------------------------- receive

def receive(args: argparse.Namespace) -> int:
    sock = stamped_udp_socket()
    try:
        sock.bind((args.bind, args.port))
    except OSError as exc:
        raise SetupError(f"receive: cannot bind {args.bind}:{args.port}: {exc.strerror}") from exc
    # Non-blocking: a socket timeout would poll() before every recvmsg.
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    # Datagrams land back to back in one arena; parsing waits until the end,
    # so the loop only copies and stamps. Untouched pages cost no memory.
    arena = bytearray(args.max_bytes)
    view = memoryview(arena)
    clock_offset_ns = realtime_minus_monotonic_ns()
    emit({"ready": True})

    ends, stamps, sources = array("Q"), array("q"), array("I")
    source_ids: dict[str, int] = {}
    used = 0
    deadline_ns = time.monotonic_ns() + int(args.timeout * 1e9)
    idle_ns = int(args.idle * 1e9)
    ended = "timeout"
    recv = sock.recvmsg_into
    ancillary = socket.CMSG_SPACE(TIMESPEC.size)
    while True:
        if used + MAX_DATAGRAM > len(arena):
            ended = "max_bytes"
            break
        try:
            size, anc, _flags, (src, _port) = recv([view[used:used + MAX_DATAGRAM]], ancillary)
        except BlockingIOError:
            now = time.monotonic_ns()
            if stamps and now - stamps[-1] >= idle_ns:
                ended = "idle"
                break
            if now >= deadline_ns:
                break
            if Stop.requested:
                ended = "signal"
                break
            poller.poll(POLL_MS)
            continue
        sec, nsec = TIMESPEC.unpack(anc[0][2])  # SO_TIMESTAMPNS stamps every datagram
        t_ns = sec * 1_000_000_000 + nsec - clock_offset_ns
        used += size
        ends.append(used)
        stamps.append(t_ns)
        if (src_id := source_ids.get(src)) is None:
            src_id = source_ids[src] = int.from_bytes(socket.inet_aton(src), "big")
        sources.append(src_id)
        # The (converted) kernel stamp stands in for a clock read.
        if t_ns >= deadline_ns or Stop.requested:
            ended = "timeout" if t_ns >= deadline_ns else "signal"
            break

    rows = []
    begin = 0
    for end, t_ns, src_id in zip(ends, stamps, sources):
        try:
            rows.append((t_ns, src_id, *feedplan.read_packet(args.protocol, view[begin:end])))
        except ValueError:
            pass  # counted as malformed below
        begin = end
    np.save(args.out, np.array(rows, dtype=feedplan.RECORD_DTYPE))
    emit({
        "packets": len(rows),
        "bytes": used,
        "malformed": len(ends) - len(rows),
        "ended": ended,
        "socket_drops": udp_socket_drops(sock),
        "first_ns": int(stamps[0]) if stamps else None,
        "last_ns": int(stamps[-1]) if stamps else None,
        "duration_s": (stamps[-1] - stamps[0]) / 1e9 if stamps else 0.0,
        "out": args.out,
    })
    sock.close()
    return 0


def load_received(path: str | Path) -> np.ndarray:
    """A receive --out file, as feedplan.check() takes it."""
    records = np.load(path)
    if records.dtype != feedplan.RECORD_DTYPE:
        raise ValueError(f"{path}: not a receiver record (dtype {records.dtype})")
    return records


# ---------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lab.marketdata",
        description="Lab market-data tools. Each prints {\"ready\": true} once set up and one JSON "
                    "result line on exit. Times are CLOCK_MONOTONIC ns.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("publish", help="publish a FeedPlan on lines A and B",
                       description="Send a FeedPlan's schedule: line A from a socket bound to --src-a, "
                                   "line B from one bound to --src-b, paced on CLOCK_MONOTONIC.")
    p.add_argument("--plan", required=True, metavar="PLAN.json", help="a feedplan.FeedPlan as JSON")
    p.add_argument("--dst", required=True, metavar="ADDR")
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--src-a", required=True, metavar="ADDR", help="line A's source address")
    p.add_argument("--src-b", required=True, metavar="ADDR", help="line B's source address")
    p.add_argument("--timeout", required=True, type=positive(float), metavar="S",
                   help="stop after this many seconds in any case")
    p.set_defaults(run=publish)

    p = sub.add_parser("receive", help="record a feed",
                       description="Record every datagram (arrival time, source, kind, session, seq, "
                                   "count, corrupt messages) to --out as a numpy array of "
                                   "feedplan.RECORD_DTYPE.")
    p.add_argument("--protocol", required=True, choices=("moldudp64", "mdp3"))
    p.add_argument("--bind", required=True, metavar="ADDR")
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--timeout", required=True, type=positive(float), metavar="S",
                   help="stop after this many seconds in any case")
    p.add_argument("--idle", type=positive(float), default=1.0, metavar="S",
                   help="stop when no datagram came for this long after the first one (default 1)")
    p.add_argument("--max-bytes", type=positive(int), default=256 << 20, metavar="N",
                   help="payload bytes to keep at most (default 256 MiB, bounds memory)")
    p.add_argument("--out", required=True, metavar="FILE.npy")
    p.set_defaults(run=receive)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
