"""What the lab exchange publishes on lines A and B, and what a correct arbiter delivers.

Pure and deterministic: no I/O, no clock. A FeedPlan (JSON-serialisable)
fixes everything; build() turns it into the send schedule the publisher
follows, expected() into what reaches the gateway on each line, and check()
compares a receiver's record with both.

The exchange publishes message g (g = 1..messages, the "message index") at
(g - 1) / rate seconds. A line that batches b messages per packet sends each
packet when its last message is published; batching restarts at a session
change, so no packet mixes sessions. Without a session change the message
index is the sequence number; after one, the new session restarts at 1. Fault
positions (silent, down_after) are message indices.

Faults are simulated at the publisher: a lost packet is simply never sent,
so what reaches the gateway on each line is exactly the schedule. Every fault
is decided per packet, on each line's own packets, from a random stream of its
own per (seed, line, fault), so changing one fault never moves another's
decisions:
- silence: a packet of any kind is not sent if the exchange's position when
  it would be sent (data: its last message; heartbeat: the last message
  published before it; end of session: the session's last message) lies in
  one of the line's silent ranges. A silenced packet does not count as lost.
- loss, bursts and `overlap` drop data packets (never heartbeats or ends).
- reorder swaps a data packet with the line's next sent one (contents swap,
  the time slots stay), duplicate sends it twice back to back.
- delay_us shifts all of the line's sends.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lab import feedproto
from lab.feedproto import Protocol

LINES = ("A", "B")
KINDS = ("data", "heartbeat", "end")
DATA, HEARTBEAT, END = range(3)
# A veth MTU of 1500 less IP and UDP headers: larger packets would fragment,
# and fragments bypass anything that parses the feed in the data path.
MAX_PAYLOAD = 1472

# One send of the schedule; session indexes FeedPlan.sessions. Heartbeats and
# ends have count 0 and carry the next sequence number as seq.
SEND_DTYPE = np.dtype([("t_ns", "i8"), ("line", "u1"), ("kind", "u1"), ("session", "u1"),
                       ("seq", "u8"), ("count", "u2")])
# One datagram as the receiver recorded it. t_ns: kernel arrival stamp in
# CLOCK_MONOTONIC ns; src: IPv4 source as an integer; session: the Mold
# session (b"" for mdp3); corrupt: messages that are not the lab message for
# their sequence number; sending_ns: MDP3 SendingTime (0 for mold).
RECORD_DTYPE = np.dtype([("t_ns", "i8"), ("src", "u4"), ("kind", "u1"), ("session", "S10"),
                         ("seq", "u8"), ("count", "u2"), ("corrupt", "u2"), ("sending_ns", "i8")])

# Independent random streams, one per fault and line (appending keeps old plans' draws).
_STREAMS = ("loss", "burst", "overlap", "reorder", "duplicate")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LineFaults(_Strict):
    """What befalls one line's packets on their way to the gateway."""

    loss: float = Field(0.0, ge=0, le=1, description="probability that a data packet is lost (iid)")
    burst_start: float = Field(0.0, ge=0, le=1,
                               description="probability that a loss burst starts at a data packet")
    burst_length: int = Field(1, ge=1, description="data packets lost per burst, from the one it starts at")
    delay_us: int = Field(0, ge=0, description="the line sends everything this much after its nominal time")
    reorder: float = Field(0.0, ge=0, le=1,
                           description="probability that a sent data packet swaps places with the next one")
    duplicate: float = Field(0.0, ge=0, le=1, description="probability that a sent data packet goes out twice")
    silent: tuple[tuple[int, int], ...] = Field(
        (), description="[first, last] message indices during whose publication the line sends nothing")
    down_after: int | None = Field(None, ge=0,
                                   description="the line sends nothing once message down_after + 1 is "
                                               "published (a packet straddling it is not sent)")

    @model_validator(mode="after")
    def _ranges(self):
        for first, last in self.silent:
            if not 1 <= first <= last:
                raise ValueError(f"silent range [{first}, {last}] must have 1 <= first <= last")
        return self


class FeedPlan(_Strict):
    """A deterministic publication on both lines; see the module docstring for timing and faults."""

    protocol: Protocol = "moldudp64"
    messages: int = Field(ge=1, le=5_000_000,
                          description="messages (sequence numbers) to publish; the publisher builds "
                                      "every packet up front, about 0.5 GB per million")
    rate: float = Field(gt=0, le=10_000_000, description="messages per second")
    batch_a: int = Field(1, ge=1, le=feedproto.MOLD_MAX_MESSAGES, description="messages per packet on A")
    batch_b: int = Field(1, ge=1, le=feedproto.MOLD_MAX_MESSAGES, description="messages per packet on B")
    msg_size: int = Field(16, ge=8, le=MAX_PAYLOAD,
                          description="bytes per message (mold: block data; mdp3: SBE body)")
    heartbeat_every: int = Field(0, ge=0,
                                 description="mold: a heartbeat on both lines whenever this many more "
                                             "messages have been published (halfway to the next); 0: none")
    end_of_session: bool = Field(False, description="mold: close each session with an end-of-session packet")
    session: str = Field("TWINPATH01", pattern=r"^[!-~]{1,10}$")
    session_change_at: int | None = Field(
        None, ge=1, description="mold: messages after this index go out under next_session, from seq 1")
    next_session: str = Field("TWINPATH02", pattern=r"^[!-~]{1,10}$")
    seed: int = Field(0, ge=0)
    line_a: LineFaults = LineFaults()
    line_b: LineFaults = LineFaults()
    overlap: float | None = Field(
        None, ge=0, le=1,
        description="None: B's losses are independent of A's. Otherwise exactly round(overlap x n) of the "
                    "n B data packets carrying a message A does not deliver (lost or silenced) are lost, "
                    "chosen at random, and B's own loss and bursts only hit its other packets. 0 makes "
                    "the lines' losses disjoint (B then loses a little under its `loss`).")

    @model_validator(mode="after")
    def _consistent(self):
        if self.protocol == "mdp3":
            mold_only = {"batch_a": self.batch_a != 1, "batch_b": self.batch_b != 1,
                         "heartbeat_every": self.heartbeat_every != 0,
                         "end_of_session": self.end_of_session,
                         "session_change_at": self.session_change_at is not None}
            if bad := [name for name, set_ in mold_only.items() if set_]:
                raise ValueError(f"mdp3 has one message per packet, no heartbeats, no sessions: "
                                 f"{', '.join(bad)} must keep the default")
        if self.msg_size < feedproto.LAB_MIN_SIZE[self.protocol]:
            raise ValueError(f"msg_size must be >= {feedproto.LAB_MIN_SIZE[self.protocol]} for {self.protocol}")
        if (size := self.payload_bytes(max(self.batch_a, self.batch_b))) > MAX_PAYLOAD:
            raise ValueError(f"a full packet would be {size} bytes, above {MAX_PAYLOAD} (it would fragment)")
        if self.session_change_at is not None:
            if self.session_change_at >= self.messages:
                raise ValueError("session_change_at must be below messages")
            if self.next_session == self.session:
                raise ValueError("next_session must differ from session")
        return self

    def batch(self, line: str) -> int:
        return {"A": self.batch_a, "B": self.batch_b}[line]

    def faults(self, line: str) -> LineFaults:
        return {"A": self.line_a, "B": self.line_b}[line]

    @property
    def sessions(self) -> list[str]:
        return [self.session] if self.session_change_at is None else [self.session, self.next_session]

    @property
    def spans(self) -> list[tuple[int, int]]:
        """(first message index, messages) per session."""
        k = self.session_change_at
        return [(1, self.messages)] if k is None else [(1, k), (k + 1, self.messages - k)]

    def payload_bytes(self, count: int) -> int:
        if self.protocol == "mdp3":
            return feedproto.MDP3_HEADER.size + feedproto.MDP3_MESSAGE.size + self.msg_size
        return feedproto.MOLD_HEADER.size + count * (feedproto.MOLD_BLOCK.size + self.msg_size)


@dataclass(frozen=True)
class _Line:
    sends: np.ndarray  # SEND_DTYPE, this line's sends in order
    reached: np.ndarray  # bool per message index (0 unused): reaches the gateway on this line
    lost: int  # data packets dropped by loss, bursts or overlap
    silenced: int  # packets of any kind not sent while the line was silent


def build(plan: FeedPlan) -> np.ndarray:
    """Both lines' sends (SEND_DTYPE) in the order the publisher makes them:
    by time, A before B at equal times."""
    return _merge(_lines(plan))


def expected(plan: FeedPlan) -> dict:
    """What reaches the gateway: per line, and the sequences that reach it on neither."""
    return _expected(plan, _lines(plan))


def check(plan: FeedPlan, received: np.ndarray, sources: Mapping[str, str] | None = None) -> dict:
    """Judges a receiver's record (RECORD_DTYPE, in arrival order) against the plan.

    The trader's handler takes each sequence number once and skips messages it
    already has; so a data packet with no new sequence number is
    `delivered_twice` (a correct arbiter never forwards one), and the old
    messages of a packet that also brings new ones are `redundant_messages`.
    Heartbeats (and ends) received beyond the most one line published also
    count as delivered twice. `out_of_order`: new sequence numbers that
    arrived after a higher one (the message index orders sessions);
    `late_fills`: those of them that only one line carried, so their only
    copy came after a later packet of the other line (on a loaded host the
    lab's lines jitter by more than a packet gap, and an arbiter in XDP
    forwards at once rather than hold a packet back). A message both lines
    carried can only arrive out of order if the arbiter reorders, since each
    line is FIFO but for the plan's `reorder`. Packets
    naming an unknown session or a sequence beyond the session are
    `unexpected` and otherwise ignored. With `sources` (line -> source
    address), `by_line` counts the packets of each kind per line.
    """
    lines = _lines(plan)
    exp = _expected(plan, lines)
    on_both_lines = (lines["A"].reached & lines["B"].reached).tobytes()
    spans = {(b"" if plan.protocol == "mdp3" else name.encode()): span
             for name, span in zip(plan.sessions, plan.spans)}
    seen = bytearray(plan.messages + 1)
    highest = 0
    delivered_twice = redundant = out_of_order = late_fills = unexpected = 0
    received_kinds = [0, 0, 0]
    for kind, session, seq, count in zip(received["kind"].tolist(), received["session"].tolist(),
                                         received["seq"].tolist(), received["count"].tolist()):
        received_kinds[kind] += 1
        if kind != DATA:
            continue
        span = spans.get(session)
        if span is None or seq < 1 or seq + count - 1 > span[1]:
            unexpected += 1
            continue
        g = span[0] + seq - 1
        new = seen[g:g + count].count(0)
        if new == 0:
            delivered_twice += 1
            continue
        redundant += count - new
        for i in range(g, min(g + count, highest)):
            if not seen[i]:
                out_of_order += 1
                late_fills += not on_both_lines[i]
        seen[g:g + count] = b"\x01" * count
        highest = max(highest, g + count - 1)
    delivered = np.frombuffer(seen, dtype=np.uint8)[1:].astype(bool)
    missing = _ranges_by_session(plan, np.flatnonzero(~delivered) + 1)
    result = {
        "sent": plan.messages,
        "packets": len(received),
        "delivered": int(delivered.sum()),
        "delivered_twice": delivered_twice
        + max(0, received_kinds[HEARTBEAT] - exp["heartbeats_published"])
        + max(0, received_kinds[END] - exp["end_of_session_published"]),
        "redundant_messages": redundant,
        "out_of_order": out_of_order,
        "late_fills": late_fills,
        "missing": missing,
        "missing_messages": int((~delivered).sum()),
        "gaps_expected": exp["gaps_expected"],
        "missing_matches_expected": missing == exp["gaps_expected"],
        "corrupt": int(received["corrupt"].sum()),
        "unexpected": unexpected,
        "heartbeats_sent": {name: line["heartbeats"] for name, line in exp["lines"].items()},
        "heartbeats_received": received_kinds[HEARTBEAT],
        "end_of_session_sent": {name: line["end_of_session"] for name, line in exp["lines"].items()},
        "end_of_session_received": received_kinds[END],
    }
    if sources is not None:
        result["by_line"] = {
            name: {KINDS[k]: int(np.count_nonzero((received["src"] == int(ipaddress.IPv4Address(addr)))
                                                  & (received["kind"] == k))) for k in range(len(KINDS))}
            for name, addr in sources.items()}
    return result


def packet_bytes(plan: FeedPlan, kind: int, session: int, seq: int, count: int) -> bytes:
    """The UDP payload of one send (the fields of a SEND_DTYPE record). MDP3
    SendingTime is left 0: the publisher stamps it when sending."""
    if plan.protocol == "mdp3":
        return feedproto.mdp3_packet(seq, 0, feedproto.lab_message("mdp3", seq, plan.msg_size))
    name = plan.sessions[session]
    if kind == HEARTBEAT:
        return feedproto.mold_heartbeat(name, seq)
    if kind == END:
        return feedproto.mold_end_of_session(name, seq)
    return feedproto.mold_packet(name, seq, [feedproto.lab_message("moldudp64", s, plan.msg_size)
                                             for s in range(seq, seq + count)])


def read_packet(protocol: Protocol, payload: bytes) -> tuple[int, bytes, int, int, int, int]:
    """(kind, session, seq, count, corrupt, sending_ns) of one received payload,
    the RECORD_DTYPE fields the payload determines; ValueError if malformed."""
    if protocol == "mdp3":
        packet = feedproto.parse_mdp3(payload)
        corrupt = sum(not feedproto.is_lab_message("mdp3", packet.seq, m.body) for m in packet.messages)
        return DATA, b"", packet.seq, 1, corrupt, packet.sending_time_ns
    packet = feedproto.parse_mold(payload)
    kind = KINDS.index(packet.kind)
    corrupt = sum(not feedproto.is_lab_message("moldudp64", packet.seq + i, m)
                  for i, m in enumerate(packet.messages))
    return kind, packet.session.encode(), packet.seq, len(packet.messages), corrupt, 0


# ---------------------------------------------------------------- internals

def _lines(plan: FeedPlan) -> dict[str, _Line]:
    a = _line(plan, "A", None)
    return {"A": a, "B": _line(plan, "B", ~a.reached if plan.overlap is not None else None)}


def _line(plan: FeedPlan, line: str, other_missing: np.ndarray | None) -> _Line:
    faults, batch = plan.faults(line), plan.batch(line)
    silent = list(faults.silent)
    if faults.down_after is not None:
        silent.append((faults.down_after + 1, max(plan.messages, faults.down_after + 1)))
    starts = np.array([start for start, _ in plan.spans], dtype=np.int64)
    sizes = np.array([n for _, n in plan.spans], dtype=np.int64)

    # Nominal data packets: first and last message index, session.
    first = np.concatenate([np.arange(start, start + n, batch, dtype=np.int64) for start, n in plan.spans])
    session = np.searchsorted(starts, first, side="right") - 1
    last = np.minimum(first + batch - 1, starts[session] + sizes[session] - 1)
    n = len(first)
    silenced = _within(last, silent)

    lost = _draws(plan, line, "loss", n) < faults.loss
    bursts = np.flatnonzero(_draws(plan, line, "burst", n) < faults.burst_start)
    edges = np.zeros(n + 1, dtype=np.int64)
    np.add.at(edges, bursts, 1)
    np.add.at(edges, np.minimum(bursts + faults.burst_length, n), -1)
    lost |= np.cumsum(edges[:n]) > 0
    if other_missing is not None:
        missing_upto = np.concatenate(([0], np.cumsum(other_missing[1:])))
        carries = missing_upto[last] - missing_upto[first - 1] > 0
        candidates = np.flatnonzero(carries & ~silenced)
        rng = np.random.default_rng([plan.seed, LINES.index(line), _STREAMS.index("overlap")])
        lost &= ~carries
        lost[rng.choice(candidates, size=round(plan.overlap * len(candidates)), replace=False)] = True
    lost &= ~silenced

    slots = np.flatnonzero(~lost & ~silenced)  # the sent data packets, in nominal order
    order = slots.copy()
    swapped_in = -1
    for i in np.flatnonzero(_draws(plan, line, "reorder", n)[slots[:-1]] < faults.reorder):
        if i != swapped_in:  # a packet just moved back one slot stays there
            order[i], order[i + 1] = order[i + 1], order[i]
            swapped_in = i + 1
    copies = 1 + (_draws(plan, line, "duplicate", n)[order] < faults.duplicate)
    parts = [_sends(np.repeat(_time_ns(plan, last[slots]), copies), DATA, np.repeat(session[order], copies),
                    np.repeat(first[order] - starts[session[order]] + 1, copies),
                    np.repeat(last[order] - first[order] + 1, copies))]
    edges = np.zeros(plan.messages + 2, dtype=np.int64)
    np.add.at(edges, first[slots], 1)
    np.add.at(edges, last[slots] + 1, -1)
    reached = np.cumsum(edges[:-1]) > 0

    silenced_other = 0
    if plan.heartbeat_every:
        position = np.arange(plan.heartbeat_every, plan.messages, plan.heartbeat_every, dtype=np.int64)
        quiet = _within(position, silent)
        silenced_other += int(quiet.sum())
        # A heartbeat names the next message this line will carry.
        carried = np.searchsorted(last, position[~quiet], side="right")  # packets sent before it
        upcoming = np.where(carried > 0, last[np.maximum(carried - 1, 0)] + 1, 1)
        index = np.searchsorted(starts, upcoming, side="right") - 1
        parts.append(_sends(_time_ns(plan, position[~quiet] + 0.5), HEARTBEAT, index,
                            upcoming - starts[index] + 1, 0))
    if plan.end_of_session:
        ends = starts + sizes - 1
        quiet = _within(ends, silent)
        silenced_other += int(quiet.sum())
        parts.append(_sends(_time_ns(plan, ends[~quiet]), END, np.flatnonzero(~quiet), sizes[~quiet] + 1, 0))
    sends = np.concatenate(parts)
    sends = sends[np.argsort(sends["t_ns"], kind="stable")]  # data before an end at the same time
    sends["t_ns"] += faults.delay_us * 1000
    sends["line"] = LINES.index(line)
    return _Line(sends, reached, int(lost.sum()), int(silenced.sum()) + silenced_other)


def _draws(plan: FeedPlan, line: str, stream: str, n: int) -> np.ndarray:
    return np.random.default_rng([plan.seed, LINES.index(line), _STREAMS.index(stream)]).random(n)


def _within(position: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(len(position), dtype=bool)
    for first, last in ranges:
        mask |= (position >= first) & (position <= last)
    return mask


def _time_ns(plan: FeedPlan, position: np.ndarray) -> np.ndarray:
    """When message `position` is published (fractions: between messages)."""
    return np.rint((position - 1) * (1e9 / plan.rate)).astype(np.int64)


def _sends(t_ns, kind, session, seq, count) -> np.ndarray:
    out = np.empty(len(t_ns), dtype=SEND_DTYPE)
    out["t_ns"], out["kind"], out["session"], out["seq"], out["count"] = t_ns, kind, session, seq, count
    return out


def _merge(lines: dict[str, _Line]) -> np.ndarray:
    both = np.concatenate([lines[name].sends for name in LINES])
    return both[np.argsort(both["t_ns"], kind="stable")]


def _expected(plan: FeedPlan, lines: dict[str, _Line]) -> dict:
    a, b = lines["A"].reached[1:], lines["B"].reached[1:]
    per_line = {}
    for name, line in lines.items():
        kinds = np.bincount(line.sends["kind"], minlength=len(KINDS))
        per_line[name] = {"data_packets": int(kinds[DATA]), "heartbeats": int(kinds[HEARTBEAT]),
                          "end_of_session": int(kinds[END]), "messages": int(line.reached[1:].sum()),
                          "lost_packets": line.lost, "silenced_packets": line.silenced}
    return {
        "sent": len(a),
        "lines": per_line,
        "both": int((a & b).sum()),
        "only_a": int((a & ~b).sum()),
        "only_b": int((~a & b).sum()),
        "gaps_expected": _ranges_by_session(plan, np.flatnonzero(~a & ~b) + 1),
        "heartbeats_published": max(line["heartbeats"] for line in per_line.values()),
        "end_of_session_published": max(line["end_of_session"] for line in per_line.values()),
    }


def _ranges_by_session(plan: FeedPlan, indices: np.ndarray) -> dict[str, list[list[int]]]:
    """Sorted message indices as inclusive [first, last] sequence ranges per
    session; sessions with none are left out."""
    out = {}
    for name, (start, n) in zip(plan.sessions, plan.spans):
        inside = indices[(indices >= start) & (indices < start + n)] - start + 1
        if len(inside):
            breaks = np.flatnonzero(np.diff(inside) != 1)
            firsts = inside[np.concatenate(([0], breaks + 1))]
            lasts = inside[np.concatenate((breaks, [len(inside) - 1]))]
            out[name] = [[int(f), int(l)] for f, l in zip(firsts, lasts)]
    return out
