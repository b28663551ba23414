"""The daemon's view of arbitration: hands the data path's events and each
feed's line state to the core (appliance.core.feeds.FeedCore decides what they
mean) and reports the per-feed summary (feed-summary) from the counters."""
from __future__ import annotations

from appliance import layout
from appliance.core import feeds
from appliance.core.config import Config
from appliance.edge.arbitration import Arbiter


class FeedWatch:
    def __init__(self, cfg: Config, arbiter: Arbiter, core: feeds.FeedCore, consume, log):
        self.cfg = cfg
        self.arb = arbiter
        self.core = core
        self.consume = consume  # Daemon._consume: the core's one entry
        self.log = log
        self._before = self._stats()

    def _stats(self) -> list[list[layout.LineStats]]:
        return [[self.arb.line_stats(f, line) for line in range(layout.ARB_LINES)] for f in range(len(self.cfg.feeds))]

    def _samples(self, feed_id: int) -> list[feeds.LineSample]:
        st = self.arb.state(feed_id)
        return [feeds.LineSample(st.line_last_ns[line], layout.arb_seq(st.line_next_seq[line]))
                for line in range(layout.ARB_LINES)]

    def on_event(self, ev: layout.ArbEvent) -> None:
        kind = layout.ARB_EVENTS.get(ev.kind, str(ev.kind))
        names = {}
        if kind in ("session", "session-candidate"):
            names["session"] = feeds.session_text(layout.session_name(ev.session))
        if kind == "session-candidate":  # what it would replace (read now: may have moved on)
            names["current"] = feeds.session_text(layout.session_name(self.arb.state(ev.feed).session))
        self.consume("arb-event", ev.ts_ns, feed=ev.feed, line=ev.line, kind=kind, first=ev.first, last=ev.last,
                     **names)

    def tick(self, now_ns: int) -> None:
        for feed_id in range(len(self.cfg.feeds)):
            samples = self._samples(feed_id)
            delivery = [self.arb.line_counters(feed_id, line, feeds.DELIVERY_COUNTERS)
                        for line in range(layout.ARB_LINES)] if self.core.stall_due(feed_id, now_ns) else None
            self.consume("feed-lines", now_ns, feed=feed_id, samples=[[s.last_ns, s.next_seq] for s in samples],
                         delivery=delivery)

    def summary(self, now_ns: int) -> None:
        """One feed-summary line per feed for the interval since the last."""
        stats = self._stats()
        for feed_id, feed in enumerate(self.cfg.feeds):
            samples = self._samples(feed_id)
            now, before = stats[feed_id], self._before[feed_id]
            lines = {feeds.LINE_NAMES[l]: feeds.line_summary(now[l], before[l], now[1 - l], before[1 - l],
                                                            samples[l], samples[1 - l], now_ns)
                     for l in range(layout.ARB_LINES)}
            self.log.emit("feed-summary", feed=feed.name, lines=lines, open_gaps=len(self.core.books[feed_id].open),
                          **self.core.totals[feed_id])
        self._before = stats
