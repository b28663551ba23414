/* Reflex failover: the data path leaves a class's current link the moment it
 * is found stale while a standby is fresh, with no user-space round trip.
 *
 * Freshness: carrier up, next hop known, and a heartbeat reply within the dead
 * interval (TP_DEAD_NS = interval x multiplier, a compile-time constant set by
 * the loader). If every link is stale at once (the probe sender stalled, say)
 * nothing switches: forwarding stays on the last good state. Failback is never
 * decided here; the daemon does it after a hold-down.
 */
#ifndef TP_REFLEX_H
#define TP_REFLEX_H

#include "lib/maps.h"

#ifndef TP_DEAD_NS
#error "TP_DEAD_NS (heartbeat interval x multiplier, ns) must be defined by the loader"
#endif

static __always_inline int tp_link_fresh(__u32 link, __u64 now, __u64 *silence, __u32 *cause)
{
	struct tp_link *l = tp_links.lookup(&link);
	struct tp_health *h = tp_health.lookup(&link);

	if (!l || !h)
		return 0;
	*silence = now - h->last_reply_ns;
	if (!(l->flags & TP_LINK_CARRIER)) {
		*cause = TP_CAUSE_CARRIER;
		return 0;
	}
	*cause = TP_CAUSE_HEARTBEAT;
	return (l->flags & TP_LINK_NEXTHOP) && h->last_reply_ns && *silence <= TP_DEAD_NS;
}

/* The link this class's packet leaves on, switching if the current one is
 * stale and a standby is fresh. */
static __always_inline __u32 tp_select_link(__u32 class_id, __u64 now)
{
	__u64 *active = tp_active.lookup(&class_id);
	struct tp_class *cls = tp_classes.lookup(&class_id);
	__u64 silence, ignored;
	__u64 cur;
	__u32 cause, ignored_cause;

	if (!active || !cls)
		return TP_MAX_LINKS; /* not configured: caller routes normally */
	cur = *active;
	if (tp_link_fresh((__u32)cur, now, &silence, &cause))
		return cur;

	#pragma unroll
	for (int i = 0; i < TP_MAX_LINKS; i++) {
		__u64 cand;
		if (i >= cls->n_links)
			break;
		cand = cls->links[i];
		if (cand == cur || !tp_link_fresh((__u32)cand, now, &ignored, &ignored_cause))
			continue;
		/* Several CPUs may see the same stale link at once: exactly one
		 * wins the swap and reports it; the others follow the winner. */
		if (__sync_val_compare_and_swap(active, cur, cand) == cur) {
			struct tp_event ev = {
				.ts_ns = now, .silence_ns = silence, .class_id = class_id,
				.from_link = cur, .to_link = cand, .cause = cause,
			};
			__u32 idx = class_id * TP_MAX_LINKS + (__u32)cur;
			struct tp_counters *c = tp_steer_stats.lookup(&idx);
			if (c)
				c->failovers += 1;
			tp_events.ringbuf_output(&ev, sizeof(ev), 0);
			return cand;
		}
		return *active;
	}
	tp_count(TP_STAT_ALL_STALE);
	return cur;
}

#endif
