"""Wire formats of the two market-data feeds the lab publishes: pure codecs, no I/O.

MoldUDP64 (Nasdaq), big-endian: a 20-byte header (session: 10 ASCII bytes,
space-padded; sequence number of the first message: u64; message count: u16),
then `count` message blocks, each a u16 length and that many bytes. Count 0 is
a heartbeat and 0xFFFF an end of session; both carry the next sequence number
the exchange will send, and no blocks.

CME MDP 3.0, little-endian: a 12-byte packet header (MsgSeqNum u32,
SendingTime u64 in ns since the UNIX epoch), then messages, each a u16
msgSize (counting those 2 bytes), an 8-byte SBE header (blockLength,
templateId, schemaId, version: u16 each) and the body. One packet is one
sequence number, whatever number of messages it holds.

Lab messages (lab_message) embed their own sequence number, so a receiver can
tell a block that arrived under the wrong sequence number from a right one.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from appliance.core.config import FeedProtocol

Protocol = FeedProtocol

MOLD_HEADER = struct.Struct(">10sQH")
MOLD_BLOCK = struct.Struct(">H")
MOLD_SESSION_BYTES = 10
MOLD_HEARTBEAT = 0
MOLD_END_OF_SESSION = 0xFFFF
MOLD_MAX_MESSAGES = 0xFFFE  # 0xFFFF means end of session

MDP3_HEADER = struct.Struct("<IQ")
MDP3_MESSAGE = struct.Struct("<HHHHH")  # msgSize, then the SBE header
MDP3_SENDING_TIME_OFFSET = 4  # the publisher stamps SendingTime into built packets
MDP3_SCHEMA_ID = 1
MDP3_SCHEMA_VERSION = 9
# MDIncrementalRefreshBook46's id; lab bodies do not follow its layout, and
# the lab's BPF and checker only read the packet header and the lab seq.
MDP3_TEMPLATE_ID = 46

# Lab message layout: mold = type byte + u64 BE seq; mdp3 body = u64 LE seq;
# then padding with the seq's low byte, so corrupted padding shows too.
LAB_MOLD_TYPE = b"T"  # not a message type of ITCH 5.0
LAB_SEQ = {"moldudp64": struct.Struct(">Q"), "mdp3": struct.Struct("<Q")}
LAB_MIN_SIZE = {"moldudp64": 1 + 8, "mdp3": 8}


@dataclass(frozen=True)
class MoldPacket:
    session: str  # trailing spaces stripped
    seq: int
    count: int
    messages: tuple[bytes, ...]

    @property
    def kind(self) -> str:
        return {MOLD_HEARTBEAT: "heartbeat", MOLD_END_OF_SESSION: "end"}.get(self.count, "data")


@dataclass(frozen=True)
class Mdp3Message:
    template_id: int
    schema_id: int
    version: int
    block_length: int
    body: bytes


@dataclass(frozen=True)
class Mdp3Packet:
    seq: int
    sending_time_ns: int
    messages: tuple[Mdp3Message, ...]


def mold_session(session: bytes | str) -> bytes:
    """The 10-byte, space-padded wire form of a session name."""
    raw = session.encode() if isinstance(session, str) else bytes(session)
    if not raw or len(raw) > MOLD_SESSION_BYTES or not raw.isascii():
        raise ValueError(f"MoldUDP64 session must be 1..10 ASCII bytes, got {session!r}")
    return raw.ljust(MOLD_SESSION_BYTES, b" ")


def mold_packet(session: bytes | str, seq: int, messages: list[bytes]) -> bytes:
    if not 1 <= len(messages) <= MOLD_MAX_MESSAGES:
        raise ValueError(f"a MoldUDP64 data packet holds 1..{MOLD_MAX_MESSAGES} messages, "
                         f"got {len(messages)} (heartbeats: mold_heartbeat)")
    parts = [MOLD_HEADER.pack(mold_session(session), seq, len(messages))]
    for message in messages:
        if len(message) > 0xFFFF:
            raise ValueError(f"a MoldUDP64 message is at most 65535 bytes, got {len(message)}")
        parts += (MOLD_BLOCK.pack(len(message)), message)
    return b"".join(parts)


def mold_heartbeat(session: bytes | str, next_seq: int) -> bytes:
    return MOLD_HEADER.pack(mold_session(session), next_seq, MOLD_HEARTBEAT)


def mold_end_of_session(session: bytes | str, next_seq: int) -> bytes:
    return MOLD_HEADER.pack(mold_session(session), next_seq, MOLD_END_OF_SESSION)


def parse_mold(payload: bytes) -> MoldPacket:
    """Decodes one UDP payload; ValueError says what is truncated or inconsistent."""
    if len(payload) < MOLD_HEADER.size:
        raise ValueError(f"MoldUDP64: {len(payload)} bytes is shorter than the 20-byte header")
    session, seq, count = MOLD_HEADER.unpack_from(payload)
    try:
        name = session.decode("ascii").rstrip(" ")
    except UnicodeDecodeError:
        raise ValueError(f"MoldUDP64: session {session!r} is not ASCII") from None
    offset = MOLD_HEADER.size
    messages = []
    if count not in (MOLD_HEARTBEAT, MOLD_END_OF_SESSION):
        for i in range(count):
            if offset + MOLD_BLOCK.size > len(payload):
                raise ValueError(f"MoldUDP64: packet ends before the length of message {i + 1} of {count}")
            (length,) = MOLD_BLOCK.unpack_from(payload, offset)
            offset += MOLD_BLOCK.size
            if offset + length > len(payload):
                raise ValueError(f"MoldUDP64: message {i + 1} of {count} claims {length} bytes, "
                                 f"{len(payload) - offset} left")
            messages.append(bytes(payload[offset:offset + length]))
            offset += length
    if offset != len(payload):
        raise ValueError(f"MoldUDP64: {len(payload) - offset} bytes after the {count} message(s) announced")
    return MoldPacket(name, seq, count, tuple(messages))


def mdp3_packet(seq: int, sending_time_ns: int, body: bytes, template_id: int = MDP3_TEMPLATE_ID) -> bytes:
    """One MDP 3.0 packet holding one message (no repeating groups: blockLength = body)."""
    size = MDP3_MESSAGE.size + len(body)
    if size > 0xFFFF:
        raise ValueError(f"MDP3: message of {size} bytes does not fit msgSize (u16)")
    return (MDP3_HEADER.pack(seq, sending_time_ns)
            + MDP3_MESSAGE.pack(size, len(body), template_id, MDP3_SCHEMA_ID, MDP3_SCHEMA_VERSION) + body)


def parse_mdp3(payload: bytes) -> Mdp3Packet:
    """Decodes one UDP payload; ValueError says what is truncated or inconsistent."""
    if len(payload) < MDP3_HEADER.size:
        raise ValueError(f"MDP3: {len(payload)} bytes is shorter than the 12-byte packet header")
    seq, sending_time = MDP3_HEADER.unpack_from(payload)
    offset = MDP3_HEADER.size
    messages = []
    while offset < len(payload):
        if offset + MDP3_MESSAGE.size > len(payload):
            raise ValueError(f"MDP3: {len(payload) - offset} bytes at offset {offset} are too few "
                             f"for a message header ({MDP3_MESSAGE.size})")
        size, block_length, template_id, schema_id, version = MDP3_MESSAGE.unpack_from(payload, offset)
        if size < MDP3_MESSAGE.size or offset + size > len(payload):
            raise ValueError(f"MDP3: message at offset {offset} has msgSize {size}; "
                             f"{len(payload) - offset} bytes left")
        messages.append(Mdp3Message(template_id, schema_id, version, block_length,
                                    bytes(payload[offset + MDP3_MESSAGE.size:offset + size])))
        offset += size
    if not messages:
        raise ValueError("MDP3: packet holds no message")
    return Mdp3Packet(seq, sending_time, tuple(messages))


def lab_message(protocol: Protocol, seq: int, size: int) -> bytes:
    """A lab message of `size` bytes (mold: the block's data; mdp3: the SBE body)
    that carries its own sequence number."""
    if size < LAB_MIN_SIZE[protocol]:
        raise ValueError(f"{protocol} lab messages are at least {LAB_MIN_SIZE[protocol]} bytes, got {size}")
    head = LAB_SEQ[protocol].pack(seq)
    if protocol == "moldudp64":
        head = LAB_MOLD_TYPE + head
    return head + bytes([seq & 0xFF]) * (size - len(head))


def is_lab_message(protocol: Protocol, seq: int, data: bytes) -> bool:
    """Whether data is exactly the lab message for seq (any size)."""
    return len(data) >= LAB_MIN_SIZE[protocol] and data == lab_message(protocol, seq, len(data))


def line_frame(payload: bytes, dst: str, port: int, src: str, ttl: int = 64, **ip) -> bytes:
    """`payload` in an Ethernet/IPv4/UDP frame as it arrives on a line, for
    BPF_PROG_TEST_RUN (packet fixtures and ns/packet benchmarks); `ip` passes
    further IP fields (flags, options, proto) to scapy."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    return bytes(Ether(src="02:00:00:00:0a:02", dst="02:00:00:00:0a:01") /
                 IP(src=src, dst=dst, ttl=ttl, **ip) / UDP(sport=40000, dport=port) / payload)
