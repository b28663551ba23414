"""The daemon's view of arbitration: turns the data path's events and
counters into JSON log lines (gap, fill, session, session-candidate,
far-ahead, far-behind, resync, gap-filled/gap-lost, line-health, feed-stalled /
feed-resumed, feed-summary) using the pure rules in appliance.core.feeds."""
from __future__ import annotations

from appliance import layout
from appliance.core import feeds
from appliance.core.config import Config
from appliance.edge.arbitration import Arbiter

LINE_NAMES = ("A", "B")


class FeedWatch:
    def __init__(self, cfg: Config, arbiter: Arbiter, log):
        self.cfg = cfg
        self.arb = arbiter
        self.log = log
        arb = cfg.arbitration
        self.books = [feeds.GapBook(int(arb.grace_ms * 1e6)) for _ in cfg.feeds]
        self.health = [feeds.LineHealth(int(arb.silence_ms * 1e6), arb.behind_seqs) for _ in cfg.feeds]
        self.stalls = [feeds.StallWatch(int(arb.silence_ms * 1e6)) for _ in cfg.feeds]
        self.totals = [{"gaps": 0, "filled": 0, "lost_seqs": 0} for _ in cfg.feeds]
        self._before = self._stats()

    def _stats(self) -> list[list[layout.LineStats]]:
        return [[self.arb.line_stats(f, line) for line in range(layout.ARB_LINES)] for f in range(len(self.cfg.feeds))]

    def _samples(self, feed_id: int) -> list[feeds.LineSample]:
        st = self.arb.state(feed_id)
        return [feeds.LineSample(st.line_last_ns[line], layout.arb_seq(st.line_next_seq[line]))
                for line in range(layout.ARB_LINES)]

    def _delivery(self, feed_id: int) -> list[feeds.Delivery]:
        return [feeds.Delivery(**self.arb.line_counters(feed_id, line, feeds.DELIVERY_COUNTERS))
                for line in range(layout.ARB_LINES)]

    def on_event(self, ev: layout.ArbEvent) -> None:
        kind = layout.ARB_EVENTS.get(ev.kind, str(ev.kind))
        name = self.cfg.feeds[ev.feed].name
        book = self.books[ev.feed]
        if kind == "gap":
            book.gap(ev.first, ev.last, ev.ts_ns)
            self.totals[ev.feed]["gaps"] += 1
        elif kind == "fill":
            book.fill(ev.first, ev.last, ev.ts_ns)
        elif kind == "session":
            self._log_settled(ev.feed, book.settle(ev.ts_ns, everything=True))
        extra = {}
        if kind in ("session", "session-candidate"):
            extra["session"] = feeds.session_text(layout.session_name(ev.session))
        if kind == "session-candidate":  # what it would replace (read now: may have moved on)
            extra["current"] = feeds.session_text(layout.session_name(self.arb.state(ev.feed).session))
        self.log.emit(kind, mono_ns=ev.ts_ns, feed=name, line=LINE_NAMES[ev.line], first=ev.first, last=ev.last,
                      **extra)

    def _log_settled(self, feed_id: int, settled: list[feeds.Settled]) -> None:
        totals = self.totals[feed_id]
        for s in settled:
            totals["filled"] += s.filled
            totals["lost_seqs"] += s.lost_count
            self.log.emit("gap-filled" if s.filled else "gap-lost", feed=self.cfg.feeds[feed_id].name,
                          first=s.first, last=s.last, lost=[list(r) for r in s.lost])

    def tick(self, now_ns: int) -> None:
        for feed_id, feed in enumerate(self.cfg.feeds):
            self._log_settled(feed_id, self.books[feed_id].settle(now_ns))
            samples = self._samples(feed_id)
            for line, old, new in self.health[feed_id].update(samples, now_ns):
                me, peer = samples[line], samples[1 - line]
                self.log.emit("line-health", feed=feed.name, line=LINE_NAMES[line], status=new, was=old,
                              silence_ms=round(max(now_ns - me.last_ns, 0) / 1e6, 1) if me.last_ns else None,
                              behind=max(peer.next_seq - me.next_seq, 0))
            stall = self.stalls[feed_id]
            if stall.due(now_ns) and (change := stall.update(self._delivery(feed_id), now_ns)):
                event, fields = change
                self.log.emit(event, feed=feed.name, **fields)

    def summary(self, now_ns: int) -> None:
        """One feed-summary line per feed for the interval since the last."""
        stats = self._stats()
        for feed_id, feed in enumerate(self.cfg.feeds):
            samples = self._samples(feed_id)
            now, before = stats[feed_id], self._before[feed_id]
            lines = {LINE_NAMES[l]: feeds.line_summary(now[l], before[l], now[1 - l], before[1 - l],
                                                      samples[l], samples[1 - l], now_ns)
                     for l in range(layout.ARB_LINES)}
            self.log.emit("feed-summary", feed=feed.name, lines=lines, open_gaps=len(self.books[feed_id].open),
                          **self.totals[feed_id])
        self._before = stats
