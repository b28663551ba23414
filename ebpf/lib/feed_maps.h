/* Maps of the arbitration program (BCC syntax), one BCC module of its own.
 * Its state (feeds, claims, windows, counters) is pinned (lib/pin.h); the
 * event ring, the tail-call table and the per-packet scratch are not. */
#ifndef TP_FEED_MAPS_H
#define TP_FEED_MAPS_H

#include "lib/layout.h"
#include "lib/pin.h"

/* tp_feeds is the daemon's record of the feeds; the programs read tp_feed_index. */
TP_MAP("hash", struct tp_feed_key, struct tp_feed, tp_feeds, TP_ARB_FEEDS, 1, 0);
TP_MAP("array", int, struct tp_feed_index, tp_feed_index, 3, 1, 0);
TP_MAP("array", int, struct tp_feed_state, tp_feed_state, TP_ARB_FEEDS, 1, 0);
TP_MAP("array", int, struct tp_feed_claims, tp_feed_claims, TP_ARB_FEEDS, 2, 0);
TP_MAP("array", int, struct tp_arb_config, tp_arb_config, 1, 1, 0);
TP_MAP("percpu_array", int, struct tp_line_stats, tp_line_stats, TP_ARB_FEEDS * TP_ARB_LINES, 1, 0);
TP_MAP("percpu_array", int, __u64, tp_arb_gstats, TP_ARB_LINES * TP_ARB_STAT_MAX, 1, 0);
BPF_RINGBUF_OUTPUT(tp_arb_events, 16);

/* The rare paths (a session switch, a believed far-ahead sequence, a claim
 * sweep) leave the line program by tail call: tp_arb_progs[line] runs a
 * packet again from the start, tp_arb_progs[TP_ARB_CLEAR_PROG] empties claim
 * words. The 1024-word loop thus lives in a program of its own and the
 * verifier walks the line program's claim path once. Filled by the loader. */
#define TP_ARB_CLEAR_PROG   2
BPF_PROG_ARRAY(tp_arb_progs, 3);

/* tp_arb_job[0], per CPU: what the line program hands to tp_arb_clear,
 * written and read within one packet. Only these programs ever read it, so
 * it has no Python view (it is not in layout.h). */
struct tp_arb_job {
	__u64 gtag;                 /* the generation to keep */
	__u64 floor_block;          /* sweep: words of older blocks are emptied too */
	__u32 feed;
	__u32 line;
	__u32 clear;                /* TP_CLEAR_*: 0 none, 1 other generations, 2 and blocks below floor_block */
	__u32 rerun;                /* run the packet again (tp_arb_progs[line]) instead of returning */
	__s32 verdict;              /* else: the verdict to return */
	__u32 _pad;
};
BPF_PERCPU_ARRAY(tp_arb_job, struct tp_arb_job, 1);

/* The feed of UDP destination (addr, port), both as the packet holds them,
 * or NULL: one slot of the table in use (lib/layout.h's tp_feed_index). */
static __always_inline struct tp_feed *tp_feed_of(__u32 addr, __u16 port)
{
	__u32 idx = 0;
	struct tp_feed_index *t = tp_feed_index.lookup(&idx);

	if (!t || !t->live)
		return NULL;
	idx = t->live;
	t = tp_feed_index.lookup(&idx);
	if (!t)
		return NULL;
	__u64 key = (__u64)addr << 16 | port;
	struct tp_feed_slot *slot = &t->slots[(key * t->mult) >> (64 - TP_FEED_INDEX_BITS)];
	return slot->key == (key | TP_FEED_SLOT_USED) ? &slot->feed : NULL;
}

static __always_inline void tp_arb_count(__u32 line, __u32 stat)
{
	__u32 idx = line * TP_ARB_STAT_MAX + stat;
	__u64 *c = tp_arb_gstats.lookup(&idx);
	if (c)
		*c += 1;
}

/* s0, s1: a session's 10 bytes (SESSION, CANDIDATE), else 0. */
static __always_inline void tp_arb_event_s(struct tp_line_stats *ls, __u64 now, __u32 feed, __u32 line,
					   __u32 kind, __u64 first, __u64 last, __u64 s0, __u64 s1)
{
	struct tp_arb_event ev = {.ts_ns = now, .first = first, .last = last,
				  .feed = feed, .line = line, .kind = kind, .session = {s0, s1}};
	if (tp_arb_events.ringbuf_output(&ev, sizeof(ev), 0))
		ls->events_lost += 1;
}

static __always_inline void tp_arb_event(struct tp_line_stats *ls, __u64 now, __u32 feed, __u32 line,
					 __u32 kind, __u64 first, __u64 last)
{
	tp_arb_event_s(ls, now, feed, line, kind, first, last, 0, 0);
}

#endif
