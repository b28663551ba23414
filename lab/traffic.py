"""Lab traffic tools: a UDP market-data stream and a TCP order session.

Run inside a namespace as `python -m lab.traffic SUBCOMMAND ...`.
Each long-running tool prints one JSON line {"ready": true} once its socket is
bound or connected, then exactly one JSON result line when it exits (also on
SIGTERM/SIGINT). Setup failures print {"error": ...} instead and exit 2.

Every time is CLOCK_MONOTONIC nanoseconds (time.monotonic_ns()): namespaces
share that clock, so a scenario runner can line arrivals up with the moment
it injected a fault.

analyze_stream() is the pure analysis of a udp-recv capture used by the
scenario runner; RecordStream is the pure check of a TCP session's bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from array import array

import numpy as np

# Linux values; Python 3.11's socket module does not export them.
IP_PKTINFO = 8
SO_TIMESTAMPNS = 35  # its cmsg type SCM_TIMESTAMPNS has the same value
SO_RCVBUFFORCE = 33

# sent_ns: the intended send time the datagram carries (udp-send's), or
# NO_SENT_NS when it is too short to carry one.
ARRIVAL_DTYPE = np.dtype([("seq", "u8"), ("t_ns", "i8"), ("ifindex", "i4"), ("sent_ns", "i8")])
NO_SENT_NS = -1

# A TCP order record and the head of a UDP datagram: u64 seq, u64 intended send time.
RECORD = struct.Struct(">QQ")
SEQ = struct.Struct(">Q")
# The same head as udp-recv reads it: the time signed, so that any 8 bytes fit sent_ns.
UDP_HEAD = struct.Struct(">Qq")
PKTINFO_IFINDEX = struct.Struct("=i")  # in_pktinfo starts with int ipi_ifindex
TIMESPEC = struct.Struct("=qq")  # struct timespec on 64-bit Linux
UDP_ANCILLARY_BYTES = socket.CMSG_SPACE(12) + socket.CMSG_SPACE(TIMESPEC.size)

# Enough for about a second of a 20k pps stream while the receiver is descheduled.
UDP_RCVBUF_BYTES = 8 << 20
# Longest a blocking call waits before loops re-check their deadlines.
POLL_S = 0.05
# udp-send hands the pacer this much schedule at a time, so SIGINT and the
# timeout are honoured between chunks (the pacer itself runs without the GIL).
SEND_CHUNK_S = 0.1
MAX_LOST_RANGES = 50


class SetupError(Exception):
    """The tool could not start (bad arguments, bind or socket failure)."""


class Stop:
    """Set by SIGTERM/SIGINT. Loops poll it rather than take an exception at
    an arbitrary point, so they always end with a consistent result."""
    requested = False


def request_stop(_signum, _frame) -> None:
    Stop.requested = True


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


# ---------------------------------------------------------------- analysis

def analyze_stream(arrivals: np.ndarray, sent: int, fault_ns: int | None = None,
                   standby_ifindex: int | None = None) -> dict:
    """Loss, duplication, reordering and failover timing of one UDP stream.

    arrivals: ARRIVAL_DTYPE records in arrival order (as udp-recv saves them).
    sent: how many sequence numbers the sender issued; expected seqs are
    0..sent-1. Pass udp-send's "issued", not its "sent": a failed send (say
    ECONNREFUSED after an ICMP error) still uses up its seq, and counts as
    lost here. Seqs outside that range are ignored and counted as "unexpected".
    fault_ns: when the fault was injected; None puts no lower bound on
    first_standby_ns. standby_ifindex: the receiver-side ifindex that carries
    the stream after failover; None gives first_standby_ns None.

    Loss at the tail of the stream shows in lost/lost_seqs_ranges but not in
    max_gap_us, which only measures between packets that did arrive.
    """
    if sent < 0:
        raise ValueError(f"sent must be >= 0, got {sent}")
    seqs_all = np.asarray(arrivals["seq"], dtype=np.uint64)
    in_range = seqs_all < np.uint64(sent)
    seqs = seqs_all[in_range].astype(np.int64)
    t_ns = np.asarray(arrivals["t_ns"], dtype=np.int64)[in_range]
    ifindex = np.asarray(arrivals["ifindex"])[in_range]

    _, first_index = np.unique(seqs, return_index=True)
    is_first_arrival = np.zeros(len(seqs), dtype=bool)
    is_first_arrival[first_index] = True
    # Highest seq seen before each arrival (-1 before the first one).
    highest_before = np.concatenate(([-1], np.maximum.accumulate(seqs)[:-1]))
    reordered = int(np.count_nonzero(is_first_arrival & (seqs < highest_before)))

    seen = np.zeros(sent, dtype=bool)
    seen[seqs] = True
    missing = np.flatnonzero(~seen)
    breaks = np.flatnonzero(np.diff(missing) != 1)
    range_firsts = missing[np.concatenate(([0], breaks + 1))] if len(missing) else missing
    range_lasts = missing[np.concatenate((breaks, [len(missing) - 1]))] if len(missing) else missing

    first_standby_ns = None
    if standby_ifindex is not None:
        via_standby = ifindex == standby_ifindex
        if fault_ns is not None:
            via_standby &= t_ns >= fault_ns
        if via_standby.any():
            first_standby_ns = int(t_ns[via_standby].min())

    max_gap_us = max_gap_start_ns = None
    if len(t_ns) >= 2:
        in_time_order = np.sort(t_ns)
        gaps = np.diff(in_time_order)
        widest = int(np.argmax(gaps))
        max_gap_us = int(gaps[widest]) / 1000
        max_gap_start_ns = int(in_time_order[widest])

    return {
        "sent": sent,
        "received": len(first_index),
        "lost": sent - len(first_index),
        "duplicated": len(seqs) - len(first_index),
        "reordered": reordered,
        "unexpected": int(np.count_nonzero(~in_range)),
        "first_standby_ns": first_standby_ns,
        "lost_seqs_ranges": [[int(a), int(b)] for a, b in
                             zip(range_firsts[:MAX_LOST_RANGES], range_lasts[:MAX_LOST_RANGES])],
        "lost_ranges_total": len(range_firsts),
        "max_gap_us": max_gap_us,
        "max_gap_start_ns": max_gap_start_ns,
    }


class RecordStream:
    """Checks one TCP order session: 16-byte records, seqs 0, 1, 2, ... with
    nothing missing or repeated, whatever way recv() splits the bytes."""

    def __init__(self) -> None:
        self.pending = bytearray()
        self.records = 0
        self.first_bad_seq: int | None = None
        self.last_arrival_ns: int | None = None
        self.max_gap_ns = 0
        self.max_gap_at_seq: int | None = None

    def feed(self, data: bytes, arrival_ns: int) -> None:
        self.pending += data
        whole = len(self.pending) - len(self.pending) % RECORD.size
        for seq, _intended_ns in RECORD.iter_unpack(bytes(self.pending[:whole])):
            # While in order, record k carries seq k; only the first fault is reported.
            if seq != self.records and self.first_bad_seq is None:
                self.first_bad_seq = seq
            if self.last_arrival_ns is not None and arrival_ns - self.last_arrival_ns > self.max_gap_ns:
                self.max_gap_ns = arrival_ns - self.last_arrival_ns
                self.max_gap_at_seq = seq
            self.last_arrival_ns = arrival_ns
            self.records += 1
        del self.pending[:whole]

    def finish(self) -> None:
        """The session ended: a partial record left over means lost bytes."""
        if self.pending and self.first_bad_seq is None:
            self.first_bad_seq = self.records

    @property
    def in_order(self) -> bool:
        return self.first_bad_seq is None


# ---------------------------------------------------------------- udp-recv

def realtime_minus_monotonic_ns() -> int:
    """Offset turning kernel receive stamps (CLOCK_REALTIME) into monotonic
    time; taken from the tightest of a few bracketed readings."""
    best_window, offset = None, 0
    for _ in range(5):
        before = time.monotonic_ns()
        realtime = time.clock_gettime_ns(time.CLOCK_REALTIME)
        after = time.monotonic_ns()
        if best_window is None or after - before < best_window:
            best_window, offset = after - before, realtime - (before + after) // 2
    return offset


def udp_socket_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped on this socket (receive buffer full), from
    /proc/net/udp of the current namespace; None if the socket is not listed."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    with open("/proc/net/udp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[9] == inode:
                return int(fields[-1])
    return None


def stamped_udp_socket() -> socket.socket:
    """A UDP socket with a large receive buffer and kernel receive stamps,
    which keep the receiver's scheduling delays out of arrival times."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # FORCE (root) gets past net.core.rmem_max; the kernel doubles the value.
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, UDP_RCVBUF_BYTES)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF_BYTES)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    return sock


def udp_recv(args: argparse.Namespace) -> int:
    sock = stamped_udp_socket()
    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    try:
        sock.bind((args.bind, args.port))
    except OSError as exc:
        raise SetupError(f"udp-recv: cannot bind {args.bind}:{args.port}: {exc.strerror}") from exc
    sock.settimeout(min(POLL_S, args.idle))
    clock_offset_ns = realtime_minus_monotonic_ns()
    emit({"ready": True})

    seqs, times, ifindexes, sent_times = array("Q"), array("q"), array("i"), array("q")
    malformed = user_stamped = 0
    deadline_ns = time.monotonic_ns() + int(args.timeout * 1e9)
    idle_ns = int(args.idle * 1e9)
    last_packet_ns = None
    ended = "max_packets"
    while len(seqs) < args.max_packets:
        try:
            data, ancillary, _flags, _addr = sock.recvmsg(UDP_HEAD.size, UDP_ANCILLARY_BYTES)
        except TimeoutError:
            now = time.monotonic_ns()
            if last_packet_ns is not None and now - last_packet_ns >= idle_ns:
                ended = "idle"
                break
        else:
            now = last_packet_ns = time.monotonic_ns()
            if len(data) < SEQ.size:
                malformed += 1
            else:
                t_ns, ifindex = None, 0
                for level, kind, payload in ancillary:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        sec, nsec = TIMESPEC.unpack(payload)
                        t_ns = sec * 1_000_000_000 + nsec - clock_offset_ns
                    elif level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                        ifindex = PKTINFO_IFINDEX.unpack_from(payload)[0]
                if t_ns is None:
                    t_ns = now
                    user_stamped += 1
                if len(data) >= UDP_HEAD.size:
                    seq, sent_ns = UDP_HEAD.unpack(data)
                else:
                    seq, sent_ns = SEQ.unpack_from(data)[0], NO_SENT_NS
                seqs.append(seq)
                times.append(t_ns)
                ifindexes.append(ifindex)
                sent_times.append(sent_ns)
        if now >= deadline_ns:
            ended = "timeout"
            break
        if Stop.requested:
            ended = "signal"
            break

    arrivals = np.empty(len(seqs), dtype=ARRIVAL_DTYPE)
    arrivals["seq"] = np.frombuffer(seqs, dtype=np.uint64)
    arrivals["t_ns"] = np.frombuffer(times, dtype=np.int64)
    arrivals["ifindex"] = np.frombuffer(ifindexes, dtype=np.int32)
    arrivals["sent_ns"] = np.frombuffer(sent_times, dtype=np.int64)
    np.save(args.out, arrivals)
    indexes, counts = np.unique(arrivals["ifindex"], return_counts=True)
    emit({
        "received": len(arrivals),
        "by_ifindex": {str(int(i)): int(c) for i, c in zip(indexes, counts)},
        "ended": ended,
        "socket_drops": udp_socket_drops(sock),
        "malformed": malformed,
        "user_stamped": user_stamped,
        "clock_step_ns": realtime_minus_monotonic_ns() - clock_offset_ns,
        "out": args.out,
    })
    sock.close()
    return 0


# ---------------------------------------------------------------- udp-send

def udp_send(args: argparse.Namespace) -> int:
    # Imported here so the analysis above works without the compiled extension.
    from lab.pacer import send_stream

    # The pacer's own limits, checked before "ready" rather than failing after it.
    if args.rate > 2_000_000:
        raise SetupError(f"udp-send: --rate {args.rate:g} is above the pacer's 2,000,000 pps")
    if not 16 <= args.size <= 9000:
        raise SetupError(f"udp-send: --size {args.size} must be 16..9000 (seq and send time take 16)")
    if args.priority:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.priority))
        except OSError as exc:
            raise SetupError(f"udp-send: SCHED_FIFO {args.priority} refused: {exc.strerror}") from exc
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if args.sport:
            sock.bind(("0.0.0.0", args.sport))
        sock.connect((args.dst, args.port))
    except OSError as exc:
        raise SetupError(f"udp-send: cannot bind :{args.sport} / connect to "
                         f"{args.dst}:{args.port}: {exc.strerror}") from exc
    emit({"ready": True})

    period_ns = 1e9 / args.rate
    chunk = max(1, int(args.rate * SEND_CHUNK_S))
    timeout_s = args.timeout if args.timeout is not None else args.count / args.rate + 10
    start_ns = time.monotonic_ns()
    deadline_ns = start_ns + int(timeout_s * 1e9)
    sent = errors = issued = first_ns = last_ns = 0
    stopped = None
    for first_seq in range(0, args.count, chunk):
        if Stop.requested:
            stopped = "signal"
            break
        if time.monotonic_ns() >= deadline_ns:
            stopped = "timeout"
            break
        n = min(chunk, args.count - first_seq)
        # Chunks continue one absolute schedule, so chunking adds no jitter.
        chunk_sent, chunk_errors, chunk_first_ns, last_ns = send_stream(
            sock, args.rate, n, args.size,
            start_ns=start_ns + int(first_seq * period_ns), first_seq=first_seq)
        first_ns = first_ns or chunk_first_ns
        sent += chunk_sent
        errors += chunk_errors
        issued += n
    sock.close()
    rate = (issued - 1) * 1e9 / (last_ns - first_ns) if issued > 1 and last_ns > first_ns else None
    emit({"sent": sent, "errors": errors, "issued": issued, "first_ns": first_ns,
          "last_ns": last_ns, "rate": rate, "stopped": stopped})
    return 0


# ---------------------------------------------------------------- tcp-server

class Session:
    """One accepted connection: its record check and how it ended."""

    def __init__(self) -> None:
        self.stream = RecordStream()
        self.ended: str | None = None


def tcp_server(args: argparse.Namespace) -> int:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((args.bind, args.port))
        listener.listen(8)
    except OSError as exc:
        raise SetupError(f"tcp-server: cannot listen on {args.bind}:{args.port}: {exc.strerror}") from exc
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    emit({"ready": True})

    sessions: list[Session] = []  # in accept order
    open_sessions: dict[socket.socket, Session] = {}
    last_end_ns = 0

    def end(conn: socket.socket, how: str) -> None:
        nonlocal last_end_ns
        session = open_sessions.pop(conn)
        selector.unregister(conn)
        conn.close()  # our FIN is the EOF tcp-client waits for
        session.stream.finish()
        session.ended = how
        last_end_ns = time.monotonic_ns()

    deadline_ns = time.monotonic_ns() + int(args.timeout * 1e9)
    idle_ns = int(args.idle * 1e9)
    stop_reason = "timeout"
    while True:
        now = time.monotonic_ns()
        if now >= deadline_ns:
            break
        if Stop.requested:
            stop_reason = "signal"
            break
        # Sessions came and all went: exit after --idle without a new one.
        if sessions and not open_sessions and now - last_end_ns >= idle_ns:
            break
        for key, _events in selector.select(min(POLL_S, (deadline_ns - now) / 1e9)):
            if key.fileobj is listener:
                try:
                    conn, _peer = listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                sessions.append(Session())
                open_sessions[conn] = sessions[-1]
                selector.register(conn, selectors.EVENT_READ)
                continue
            conn = key.fileobj
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                end(conn, "reset")
                continue
            except OSError as exc:
                end(conn, f"error: {exc.strerror or exc}")
                continue
            if data:
                open_sessions[conn].stream.feed(data, time.monotonic_ns())
            else:
                end(conn, "eof")
    for conn in list(open_sessions):
        end(conn, stop_reason)
    listener.close()

    streams = [session.stream for session in sessions]
    bad = next((stream for stream in streams if not stream.in_order), None)
    widest = max(streams, key=lambda stream: stream.max_gap_ns, default=None)
    result = {
        "connections": len(sessions),
        "records": sum(stream.records for stream in streams),
        "in_order": bad is None,
        "first_bad_seq": bad.first_bad_seq if bad else None,
        "max_gap_ms": widest.max_gap_ns / 1e6 if widest else None,
        "max_gap_at_seq": widest.max_gap_at_seq if widest else None,
        # The first session is the one under test; any later one is a reconnect.
        "ended": sessions[0].ended if sessions else stop_reason,
        "sessions": [{"records": s.stream.records, "ended": s.ended, "max_gap_ms": s.stream.max_gap_ns / 1e6}
                     for s in sessions],
    }
    with open(args.out, "w") as out:
        json.dump(result, out)
    emit(result)
    return 0


# ---------------------------------------------------------------- tcp-client

class Interrupted(Exception):
    """SIGTERM/SIGINT arrived while the session was running."""


def tcp_client(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout

    def remaining() -> float:
        """Seconds left before --timeout; raises once out of time or stopped."""
        if Stop.requested:
            raise Interrupted("stopped by signal")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("--timeout reached")
        return left

    try:
        sock = socket.create_connection((args.dst, args.port), timeout=args.timeout)
    except OSError as exc:
        emit({"sent": 0, "error": f"connect to {args.dst}:{args.port}: {exc.strerror or exc}",
              "connected": False})
        return 1
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    emit({"ready": True})

    sent = 0
    error = None
    step = "sending"
    try:
        period_ns = 1e9 / args.rate
        start_ns = time.monotonic_ns()
        for seq in range(args.count):
            due_ns = start_ns + int(seq * period_ns)
            while (wait_ns := due_ns - time.monotonic_ns()) > 0:
                time.sleep(min(wait_ns / 1e9, POLL_S, remaining()))
            # A blackholed session fills the send buffer and then blocks here.
            sock.settimeout(remaining())
            sock.sendall(RECORD.pack(seq, due_ns))
            sent += 1
        step = "waiting for the server's EOF"
        sock.shutdown(socket.SHUT_WR)
        while True:
            sock.settimeout(min(POLL_S, remaining()))
            try:
                if not sock.recv(4096):
                    break
            except TimeoutError:
                continue
    except (OSError, Interrupted) as exc:  # OSError covers socket timeouts and resets
        error = f"{step} after {sent} records: {getattr(exc, 'strerror', None) or exc}"
    sock.close()
    emit({"sent": sent, "error": error, "connected": True})
    return 0 if error is None else 1


# ---------------------------------------------------------------- CLI

def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lab.traffic",
        description="Lab traffic tools. Each prints {\"ready\": true} once its socket is "
                    "bound/connected and one JSON result line on exit. Times are "
                    "CLOCK_MONOTONIC ns.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("udp-recv", help="record a udp-send stream (seq, arrival time, ingress ifindex, "
                                        "intended send time)",
                       description="Receive a udp-send stream and save one (seq, t_ns, ifindex, sent_ns) "
                                   "row per datagram to --out as a numpy array. t_ns is the kernel "
                                   "receive time converted to CLOCK_MONOTONIC; sent_ns the intended send "
                                   f"time the datagram carries ({NO_SENT_NS} if it has fewer than 16 bytes).")
    p.add_argument("--bind", required=True, metavar="ADDR", help="local address to bind (0.0.0.0 for any)")
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--timeout", required=True, type=positive(float), metavar="S",
                   help="stop after this many seconds in any case")
    p.add_argument("--idle", type=positive(float), default=2.0, metavar="S",
                   help="stop when no datagram came for this long after the first one (default 2)")
    p.add_argument("--max-packets", type=positive(int), default=20_000_000, metavar="N",
                   help="stop after this many datagrams (default 20M, bounds memory)")
    p.add_argument("--out", required=True, metavar="FILE.npy", help="where to save the arrivals")
    p.set_defaults(run=udp_recv)

    p = sub.add_parser("udp-send", help="send a paced, sequenced UDP stream",
                       description="Send --count datagrams at --rate; each starts with a big-endian "
                                   "u64 seq (from 0) and u64 intended send time.")
    p.add_argument("--dst", required=True, metavar="ADDR")
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--rate", required=True, type=positive(float), metavar="PPS",
                   help="packets per second (up to 2e6)")
    p.add_argument("--count", required=True, type=positive(int), metavar="N")
    p.add_argument("--size", type=int, default=64, metavar="B", help="UDP payload bytes, 16..9000 (default 64)")
    p.add_argument("--sport", type=int, default=0, metavar="P", help="source port (default: any)")
    p.add_argument("--timeout", type=positive(float), metavar="S",
                   help="stop after this many seconds (default: count/rate + 10)")
    p.add_argument("--priority", type=int, default=0, choices=range(100), metavar="P",
                   help="SCHED_FIFO priority 1..99, for a sender that must keep its schedule on a loaded "
                        "host (default 0: normal scheduling)")
    p.set_defaults(run=udp_send)

    p = sub.add_parser("tcp-server", help="order-session endpoint that checks the record stream",
                       description="Accept tcp-client sessions and check that 16-byte records arrive "
                                   "complete and in order; report the longest arrival gap, the number "
                                   "of connections (a reconnect shows as >1) and how the first ended. "
                                   "The result is printed and written to --out.")
    p.add_argument("--bind", required=True, metavar="ADDR")
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--timeout", required=True, type=positive(float), metavar="S",
                   help="stop after this many seconds in any case")
    p.add_argument("--idle", type=positive(float), default=1.0, metavar="S",
                   help="once every session has ended, stop if none starts within this long (default 1)")
    p.add_argument("--out", required=True, metavar="FILE.json")
    p.set_defaults(run=tcp_server)

    p = sub.add_parser("tcp-client", help="one order session: paced records, never reconnects",
                       description="Connect once (TCP_NODELAY), send --count 16-byte records at --rate, "
                                   "half-close and wait for the server's EOF. A dropped session is "
                                   "reported, never repaired.")
    p.add_argument("--dst", required=True, metavar="ADDR")
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--rate", required=True, type=positive(float), metavar="PER_S", help="records per second")
    p.add_argument("--count", required=True, type=positive(int), metavar="N")
    p.add_argument("--timeout", required=True, type=positive(float), metavar="S",
                   help="give up (and report an error) after this many seconds")
    p.set_defaults(run=tcp_client)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), argv)


def run_tool(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Runs the chosen subcommand under the lab tools' contract (shared with
    lab.marketdata)."""
    args = parser.parse_args(argv)
    # The runner stops tools with SIGTERM: they still print (and save) a result.
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        return args.run(args)
    except SetupError as exc:
        print(exc, file=sys.stderr)
        emit({"error": str(exc)})
        return 2


if __name__ == "__main__":
    sys.exit(main())
