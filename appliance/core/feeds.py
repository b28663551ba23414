"""Pure arbitration bookkeeping: what the data path's gap, fill and session
events mean once the grace window has passed, whether a line is healthy,
whether the feed still delivers, and the per-feed summary. Functions of
(state, events, clock), no I/O, so a recorded event trace replays to the
same decisions."""
from __future__ import annotations

from dataclasses import dataclass, field

from appliance import layout
from appliance.core import telemetry

Range = tuple[int, int]  # [first, last], inclusive


def subtract(ranges: list[Range], first: int, last: int) -> list[Range]:
    """ranges minus [first, last]."""
    out = []
    for a, b in ranges:
        if b < first or a > last:
            out.append((a, b))
            continue
        if a < first:
            out.append((a, first - 1))
        if b > last:
            out.append((last + 1, b))
    return out


@dataclass
class Gap:
    first: int
    last: int
    opened_ns: int
    missing: list[Range]


@dataclass(frozen=True)
class Settled:
    """A gap whose grace window is over: `lost` is what neither line delivered."""
    first: int
    last: int
    opened_ns: int
    lost: list[Range]

    @property
    def filled(self) -> bool:
        return not self.lost

    @property
    def lost_count(self) -> int:
        return sum(b - a + 1 for a, b in self.lost)


@dataclass
class GapBook:
    """Open gaps of one feed. The kernel reports a gap when a packet lands
    beyond next_seq, and a fill when a packet delivers sequences below it;
    with both lines on different CPUs a fill can be reported just before its
    gap, so fills are remembered for one grace window."""
    grace_ns: int
    open: list[Gap] = field(default_factory=list)
    recent_fills: list[tuple[int, int, int]] = field(default_factory=list)  # (first, last, ts_ns)

    def gap(self, first: int, last: int, ts_ns: int) -> None:
        missing = [(first, last)]
        for a, b, _ in self.recent_fills:
            missing = subtract(missing, a, b)
        self.open.append(Gap(first, last, ts_ns, missing))

    def fill(self, first: int, last: int, ts_ns: int) -> None:
        for g in self.open:
            g.missing = subtract(g.missing, first, last)
        self.recent_fills.append((first, last, ts_ns))

    def settle(self, now_ns: int, everything: bool = False) -> list[Settled]:
        """Gaps whose grace window ended by now_ns (all of them if
        `everything`, e.g. at a session change: the old session's sequences
        cannot come any more)."""
        due = [g for g in self.open if everything or now_ns - g.opened_ns >= self.grace_ns]
        self.open = [g for g in self.open if g not in due]
        self.recent_fills = [f for f in self.recent_fills if now_ns - f[2] < self.grace_ns]
        return [Settled(g.first, g.last, g.opened_ns, g.missing) for g in due]


@dataclass(frozen=True)
class LineSample:
    """What the data path knows of one line of one feed at a moment."""
    last_ns: int      # last packet, CLOCK_MONOTONIC; 0: never
    next_seq: int     # one past the highest sequence it carried


def line_status(me: LineSample, peer: LineSample, now_ns: int, silence_ns: int, behind_seqs: int) -> str:
    """'ok', 'silent' or 'behind'. Both need the peer to be flowing: when
    the whole feed is quiet (a pause, the end of the day) no line is blamed."""
    peer_flowing = peer.last_ns and now_ns - peer.last_ns < silence_ns
    if not peer_flowing:
        return "ok"
    if not me.last_ns or now_ns - me.last_ns >= silence_ns:
        return "silent"
    if peer.next_seq - me.next_seq > behind_seqs:
        return "behind"
    return "ok"


@dataclass
class LineHealth:
    """Reports each line's status when it changes, once."""
    silence_ns: int
    behind_seqs: int
    status: list[str] = field(default_factory=lambda: ["ok"] * layout.ARB_LINES)

    def update(self, samples: list[LineSample], now_ns: int) -> list[tuple[int, str, str]]:
        """(line, old status, new status) for every line that changed."""
        changes = []
        for line, me in enumerate(samples):
            new = line_status(me, samples[1 - line], now_ns, self.silence_ns, self.behind_seqs)
            if new != self.status[line]:
                changes.append((line, self.status[line], new))
                self.status[line] = new
        return changes


def line_summary(now: layout.LineStats, before: layout.LineStats, peer_now: layout.LineStats,
                 peer_before: layout.LineStats, sample: LineSample, peer: LineSample, now_ns: int) -> dict:
    """One line over one reporting interval. Lead is the peer's lag: with two
    lines, every time the peer lost by x us this line won by x us."""
    def delta(name):
        return getattr(now, name) - getattr(before, name)

    def hist(stats_now, stats_before, name):
        return telemetry.diff(list(getattr(stats_now, name)), list(getattr(stats_before, name)))

    decided = delta("won") + delta("lost")
    lag, lead = hist(now, before, "lag_hist"), hist(peer_now, peer_before, "lag_hist")
    owd = hist(now, before, "owd_hist")
    out = {
        "packets": delta("packets"), "won_pct": round(100 * delta("won") / decided, 1) if decided else None,
        "lead_p50_us": telemetry.histogram_bound_us(lead, 0.5),
        "lead_p99_us": telemetry.histogram_bound_us(lead, 0.99),
        "lag_p50_us": telemetry.histogram_bound_us(lag, 0.5),
        "lag_p99_us": telemetry.histogram_bound_us(lag, 0.99),
        "fills": delta("fills"), "overlap": delta("overlap"), "malformed": delta("malformed"),
        "stale": delta("stale"), "unconfirmed": delta("unconfirmed"), "far_ahead": delta("far_ahead"),
        "events_lost": delta("events_lost"),
        "silence_ms": round(max(now_ns - sample.last_ns, 0) / 1e6, 1) if sample.last_ns else None,
        "behind": max(peer.next_seq - sample.next_seq, 0),
    }
    if sum(owd):
        out["owd_p50_us"] = telemetry.histogram_bound_us(owd, 0.5)
        out["owd_p99_us"] = telemetry.histogram_bound_us(owd, 0.99)
    return out


def session_text(raw: bytes) -> str:
    """A MoldUDP64 session's 10 bytes as the name the exchange gave it
    (space padding stripped; bytes that are not printable ASCII escaped)."""
    return "".join(chr(c) if 0x20 <= c < 0x7F else f"\\x{c:02x}" for c in raw).rstrip(" ")


# What tells whether a feed delivers: cumulative per-line counters of
# tp_line_stats (layout.LineStats).
DELIVERY_COUNTERS = ("packets", "heartbeats", "won", "lost", "stale", "unconfirmed", "far_ahead", "malformed")


@dataclass(frozen=True)
class Delivery:
    """One line's DELIVERY_COUNTERS at a moment (or their change over a window)."""
    packets: int = 0          # well-formed packets, any kind
    heartbeats: int = 0       # of which heartbeats and ends of session
    won: int = 0              # data packets forwarded
    lost: int = 0             # data packets dropped: the other line had delivered all they carried
    stale: int = 0            # dropped: too old, or raced a session switch
    unconfirmed: int = 0      # dropped: of a session not (yet) believed
    far_ahead: int = 0        # dropped: far beyond next_seq, not (yet) believed
    malformed: int = 0        # dropped: not a well-formed feed packet

    @classmethod
    def of(cls, stats) -> "Delivery":
        return cls(**{name: int(getattr(stats, name)) for name in DELIVERY_COUNTERS})

    def __sub__(self, other: "Delivery") -> "Delivery":
        return Delivery(**{name: getattr(self, name) - getattr(other, name) for name in DELIVERY_COUNTERS})

    @property
    def data(self) -> int:
        return self.packets - self.heartbeats

    @property
    def refused(self) -> int:
        """Data packets neither delivered nor a copy of something delivered
        (dropped as stale, unconfirmed or far ahead), plus malformed packets."""
        return self.data - self.won - self.lost + self.malformed

    def report(self) -> dict:
        return {"data": self.data, "won": self.won, "lost": self.lost, "stale": self.stale,
                "unconfirmed": self.unconfirmed, "far_ahead": self.far_ahead, "malformed": self.malformed}


@dataclass
class StallWatch:
    """feed-stalled / feed-resumed, whatever the cause. The counters are
    judged per window (arbitration.silence_ms): a window in which the feed's
    lines carried data that was refused (Delivery.refused > 0, both lines
    together) and nothing was delivered (won = 0 on both) makes the feed
    stalled; the first window that delivers something again resumes it. A
    window with no data at all changes nothing (a quiet feed is not a stall;
    line-health covers a silent line). Copies of sequences already delivered
    (lost) are not refusals: the other line delivered them."""
    window_ns: int
    stalled: bool = False
    start_ns: int | None = None
    start: tuple[Delivery, ...] | None = None

    def due(self, now_ns: int) -> bool:
        return self.start_ns is None or now_ns - self.start_ns >= self.window_ns

    def update(self, lines: list[Delivery], now_ns: int) -> tuple[str, dict] | None:
        """(event, fields) when the feed stalls or resumes; call when due()."""
        if self.start is None or len(self.start) != len(lines):
            self.start, self.start_ns = tuple(lines), now_ns
            return None
        if now_ns - self.start_ns < self.window_ns:
            return None
        delta = [now - before for now, before in zip(lines, self.start)]
        window_ms = round((now_ns - self.start_ns) / 1e6, 1)
        self.start, self.start_ns = tuple(lines), now_ns
        won, refused = sum(d.won for d in delta), sum(d.refused for d in delta)
        if not self.stalled and won == 0 and refused > 0:
            self.stalled = True
        elif self.stalled and won > 0:
            self.stalled = False
        else:
            return None
        return ("feed-stalled" if self.stalled else "feed-resumed",
                {"window_ms": window_ms, "lines": {"AB"[i]: d.report() for i, d in enumerate(delta)}})


@dataclass(frozen=True)
class FeedParams:
    names: list[str]
    dsts: list[str]        # each feed's destination address (its receivers' IP)
    grace_ns: int          # how long a gap may wait for the other line's copy
    silence_ns: int
    behind_seqs: int
    # The link carrying line A and line B: a line's health is evidence about
    # its link (appliance.core.detect's `feed` signal). None in traces
    # recorded before it was.
    line_links: list[int] | None = None


LINE_NAMES = ("A", "B")


class FeedCore:
    """Arbitration bookkeeping for every feed: the data path's events logged
    as they come, gaps settled after their grace window, line health, stalls.
    Handlers return (event, fields, effect) for appliance.core.decision."""

    def __init__(self, p: FeedParams, receivers: list[str | None]):
        self.p = p
        self.receivers = list(receivers)
        self.books = [GapBook(p.grace_ns) for _ in p.names]
        self.health = [LineHealth(p.silence_ns, p.behind_seqs) for _ in p.names]
        self.stalls = [StallWatch(p.silence_ns) for _ in p.names]
        self.totals = [{"gaps": 0, "filled": 0, "lost_seqs": 0} for _ in p.names]

    def reconfigure(self, ts_ns: int, params: FeedParams) -> list[tuple]:
        """A reload's new thresholds, and feeds appended (appliance.core.reload
        refuses any other change of feeds); open gaps and line status carry over."""
        if params.names[:len(self.p.names)] != self.p.names:
            return [("refused", {"input": "reconfigure", "reason": "feeds removed or reordered: restart the daemon"},
                     None)]
        for _ in params.names[len(self.p.names):]:
            self.receivers.append(None)
            self.books.append(GapBook(params.grace_ns))
            self.health.append(LineHealth(params.silence_ns, params.behind_seqs))
            self.stalls.append(StallWatch(params.silence_ns))
            self.totals.append({"gaps": 0, "filled": 0, "lost_seqs": 0})
        self.p = params
        for book, health, stall in zip(self.books, self.health, self.stalls):
            book.grace_ns = params.grace_ns
            health.silence_ns, health.behind_seqs = params.silence_ns, params.behind_seqs
            stall.window_ns = params.silence_ns
        return []

    def receiver(self, ts_ns: int, ip: str, mac: str | None) -> list[tuple]:
        """A receiver's MAC appeared or changed: its feeds' winners go
        straight to it. One that disappears is kept (fail static)."""
        out = []
        for feed, dst in enumerate(self.p.dsts):
            if dst == ip and mac and mac != self.receivers[feed]:
                self.receivers[feed] = mac
                out.append(("feed-receiver", {"feed": self.p.names[feed], "ip": ip, "mac": mac}, ("feed", feed, mac)))
        return out

    def _settled(self, feed: int, settled: list[Settled]) -> list[tuple]:
        totals = self.totals[feed]
        out = []
        for s in settled:
            totals["filled"] += s.filled
            totals["lost_seqs"] += s.lost_count
            out.append(("gap-filled" if s.filled else "gap-lost",
                        {"feed": self.p.names[feed], "first": s.first, "last": s.last,
                         "lost": [list(r) for r in s.lost]}, None))
        return out

    def event(self, ts_ns: int, feed: int, line: int, kind: str, first: int, last: int,
              session: str | None = None, current: str | None = None) -> list[tuple]:
        """One event of the data path (layout.ARB_EVENTS); `session` names the
        session of a session or candidate event, `current` what a candidate
        would replace."""
        book = self.books[feed]
        out = []
        if kind == "gap":
            book.gap(first, last, ts_ns)
            self.totals[feed]["gaps"] += 1
        elif kind == "fill":
            book.fill(first, last, ts_ns)
        elif kind == "session":  # the old session's sequences cannot come any more
            out += self._settled(feed, book.settle(ts_ns, everything=True))
        extra = {k: v for k, v in (("session", session), ("current", current)) if v is not None}
        out.append((kind, {"feed": self.p.names[feed], "line": LINE_NAMES[line], "first": first, "last": last,
                           **extra}, None))
        return out

    def stall_due(self, feed: int, now_ns: int) -> bool:
        """Whether the next reading of this feed needs its delivery counters."""
        return self.stalls[feed].due(now_ns)

    def lines(self, ts_ns: int, feed: int, samples: list[list[int]],
              delivery: list[dict[str, int]] | None) -> list[tuple]:
        """A reading of one feed's lines: samples [last_ns, next_seq], and
        DELIVERY_COUNTERS per line when stall_due (else None: reading them
        costs more than the rest of the tick)."""
        name = self.p.names[feed]
        out = self._settled(feed, self.books[feed].settle(ts_ns))
        lines = [LineSample(*s) for s in samples]
        for line, old, new in self.health[feed].update(lines, ts_ns):
            me, peer = lines[line], lines[1 - line]
            out.append(("line-health", {
                "feed": name, "line": LINE_NAMES[line], "status": new, "was": old,
                "silence_ms": round(max(ts_ns - me.last_ns, 0) / 1e6, 1) if me.last_ns else None,
                "behind": max(peer.next_seq - me.next_seq, 0)}, None))
        stall = self.stalls[feed]
        if delivery is not None and stall.due(ts_ns) and \
                (change := stall.update([Delivery(**d) for d in delivery], ts_ns)):
            event, fields = change
            out.append((event, {"feed": name, **fields}, None))
        return out
