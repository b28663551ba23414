/* Maps of the arbitration program (BCC syntax), one BCC module of its own. */
#ifndef TP_FEED_MAPS_H
#define TP_FEED_MAPS_H

#include "lib/layout.h"

BPF_HASH(tp_feeds, struct tp_feed_key, struct tp_feed, TP_ARB_FEEDS);
BPF_ARRAY(tp_feed_state, struct tp_feed_state, TP_ARB_FEEDS);
BPF_ARRAY(tp_feed_claims, struct tp_feed_claims, TP_ARB_FEEDS);
BPF_ARRAY(tp_arb_config, struct tp_arb_config, 1);
BPF_PERCPU_ARRAY(tp_line_stats, struct tp_line_stats, TP_ARB_FEEDS * TP_ARB_LINES);
BPF_PERCPU_ARRAY(tp_arb_gstats, __u64, TP_ARB_LINES * TP_ARB_STAT_MAX);
BPF_RINGBUF_OUTPUT(tp_arb_events, 16);

static __always_inline void tp_arb_count(__u32 line, __u32 stat)
{
	__u32 idx = line * TP_ARB_STAT_MAX + stat;
	__u64 *c = tp_arb_gstats.lookup(&idx);
	if (c)
		*c += 1;
}

static __always_inline void tp_arb_event(struct tp_line_stats *ls, __u64 now, __u32 feed, __u32 line,
					 __u32 kind, __u64 first, __u64 last)
{
	struct tp_arb_event ev = {.ts_ns = now, .first = first, .last = last,
				  .feed = feed, .line = line, .kind = kind};
	if (tp_arb_events.ringbuf_output(&ev, sizeof(ev), 0))
		ls->events_lost += 1;
}

#endif
