/* Reflex failover: the data path leaves a class's current link the moment it
 * is found stale while a standby is fresh, with no user-space round trip.
 *
 * Fresh: carrier up, next hop known, and a heartbeat reply within the dead
 * interval (TP_DEAD_NS = interval x multiplier, compile-time constants set by
 * the loader). A standby must also have answered probes sent at least
 * (multiplier - 1) intervals after the current link's last answer: then
 * probes kept flowing while the current link stayed silent. A real failure
 * gives that as the dead interval runs out. A stalled probe sender does not:
 * if it stalls between rounds, every link ages together; if it stalls
 * between two links' probes of one round (preempted mid-round), the later
 * link looks silent while the earlier one is exactly one round newer, which
 * a one-interval rule would take for a failure. Either way nothing
 * switches: forwarding stays on the last good state. (Replies that the
 * kernel holds up for one link only are indistinguishable from that link
 * failing: bench/ counts those false failovers under CPU stress.) Carrier
 * loss is direct evidence
 * and needs only a fresh standby. Failback is never decided here; the daemon
 * does it after a hold-down.
 */
#ifndef TP_REFLEX_H
#define TP_REFLEX_H

#include "lib/maps.h"

#if !defined(TP_DEAD_NS) || !defined(TP_INTERVAL_NS)
#error "TP_DEAD_NS and TP_INTERVAL_NS (heartbeat timing, ns) must be defined by the loader"
#endif
/* How much newer a standby's last answer must be than the stale link's. */
#define TP_STANDBY_LEAD_NS (TP_DEAD_NS - TP_INTERVAL_NS)

/* Whether `link` may carry traffic now. *lp gets its tp_links entry (or
 * NULL), so the caller needs no second lookup to forward on it. */
static __always_inline int tp_link_fresh(__u32 link, __u64 now, struct tp_link **lp,
					 __u64 *last_reply, __u32 *cause)
{
	struct tp_link *l = tp_links.lookup(&link);
	struct tp_health *h = tp_health.lookup(&link);

	*lp = l;
	*last_reply = 0;
	if (!l || !h)
		return 0;
	*last_reply = h->last_reply_ns;
	if (!(l->flags & TP_LINK_CARRIER)) {
		*cause = TP_CAUSE_CARRIER;
		return 0;
	}
	*cause = TP_CAUSE_HEARTBEAT;
	return (l->flags & TP_LINK_NEXTHOP) && h->last_reply_ns && now - h->last_reply_ns <= TP_DEAD_NS;
}

/* The link this class's packet leaves on, switching if the current one is
 * stale and a standby is fresh; *lp gets that link's tp_links entry (NULL:
 * caller routes normally). The class's link list is read only when the
 * current link is stale: the common path is two lookups. */
static __always_inline __u32 tp_select_link(__u32 class_id, __u64 now, struct tp_link **lp)
{
	__u64 *active = tp_active.lookup(&class_id);
	struct tp_class *cls;
	struct tp_link *cand_l;
	__u64 cur_last = 0, cand_last = 0;
	__u64 cur;
	__u32 cause = TP_CAUSE_HEARTBEAT, ignored_cause;

	*lp = NULL;
	if (!active)
		return TP_MAX_LINKS;
	cur = *active;
	if (tp_link_fresh((__u32)cur, now, lp, &cur_last, &cause))
		return cur;
	cls = tp_classes.lookup(&class_id);
	if (!cls)
		return cur;

	#pragma unroll
	for (int i = 0; i < TP_MAX_LINKS; i++) {
		__u64 cand;
		if (i >= cls->n_links)
			break;
		cand = cls->links[i];
		if (cand == cur || !tp_link_fresh((__u32)cand, now, &cand_l, &cand_last, &ignored_cause))
			continue;
		if (cause == TP_CAUSE_HEARTBEAT && cand_last < cur_last + TP_STANDBY_LEAD_NS)
			continue;
		/* Several CPUs may see the same stale link at once: exactly one
		 * wins the swap and reports it; the others follow the winner. */
		if (__sync_val_compare_and_swap(active, cur, cand) == cur) {
			struct tp_event ev = {
				.ts_ns = now, .silence_ns = now - cur_last, .class_id = class_id,
				.from_link = cur, .to_link = cand, .cause = cause,
			};
			__u32 idx = class_id * TP_MAX_LINKS + (__u32)cur;
			struct tp_counters *c = tp_steer_stats.lookup(&idx);
			if (c)
				c->failovers += 1;
			tp_events.ringbuf_output(&ev, sizeof(ev), 0);
			*lp = cand_l;
			return cand;
		}
		__u32 winner = *active;
		*lp = tp_links.lookup(&winner);
		return winner;
	}
	tp_count(TP_STAT_ALL_STALE);
	return cur;
}

#endif
