/* Reflex failover: the data path leaves a class's current link the moment it
 * is found dead while a standby is fresh, with no user-space round trip.
 *
 * Dead (the current link): carrier lost, next hop unknown, or heartbeat
 * silence, which takes both halves of the evidence: no reply for the dead
 * interval (TP_DEAD_NS = interval x multiplier, compile-time constants set by
 * the loader) AND at least TP_MISSED_PROBES rounds of probes missed since the
 * last reply: stamped on this link and unanswered, or not stamped on it at
 * all while other links' probes of those rounds were (the kernel swallowed
 * them before egress: a neighbour flushed by carrier loss, a route ignored
 * with the link down; the sender sees no error). Time alone is not
 * evidence: a probe sender held off the CPU (a busy host; measured 3-6 ms
 * under stress-ng) leaves every link silent, and when it resumes the first
 * link of its round answers microseconds before the next, which a
 * time-only rule took for the next link dying (every false failover of
 * bench/stress before this rule); that next link lags the round by one,
 * never by MISSED_PROBES. A sender that is on time sends MISSED_PROBES
 * probes well inside the dead interval, so a real failure is detected no
 * later than before. A probe still in flight counts as unanswered: with an
 * RTT near the interval, choose a longer interval. (With maps pinned across
 * a restart, a new sender's first round must not be read against the old
 * one's stamped_seq.) Silence is counted from the later of the last reply
 * and the running sender's first round (tp_round.started_ns): no link owed
 * an answer before it. Without that, a restarted sender (a daemon restart or
 * upgrade, whose start-up is a gap with no probes) found every link already
 * past the dead interval, and one answer late by a round moved traffic; now
 * a link must stay silent for the dead interval of probing, as it must on a
 * running sender. A running sender's stalls are not restarts: the probe
 * half covers them, and counting silence from their end too delayed real
 * detections after a stall (carrier-down p50 at 200 us x 3: 1.1 -> 2.3 ms).
 *
 * Fresh (a standby): carrier up, next hop known, and a reply within the dead
 * interval. For a heartbeat failover it must also have answered probes sent
 * at least (multiplier - 1) intervals after the current link's last answer:
 * then probes kept flowing while the current link stayed silent. Carrier
 * loss is direct evidence and needs only a fresh standby. Failback is never
 * decided here; the daemon does it after a hold-down.
 */
#ifndef TP_REFLEX_H
#define TP_REFLEX_H

#include "lib/maps.h"

#if !defined(TP_DEAD_NS) || !defined(TP_INTERVAL_NS)
#error "TP_DEAD_NS and TP_INTERVAL_NS (heartbeat timing, ns) must be defined by the loader"
#endif
/* How much newer a standby's last answer must be than the dead link's. */
#define TP_STANDBY_LEAD_NS (TP_DEAD_NS - TP_INTERVAL_NS)
/* Unanswered probes that, with the dead interval passed, make a link dead:
 * multiplier - 1 (the last of the multiplier probes is sent about when the
 * interval runs out, so waiting for it would add the sender's lateness to
 * every detection), and never fewer than 2: one probe in flight is not a miss. */
#define TP_MISSED_PROBES (TP_DEAD_NS / TP_INTERVAL_NS > 2 ? TP_DEAD_NS / TP_INTERVAL_NS - 1 : 2)

/* The probe half of the dead rule: MISSED_PROBES rounds stamped on this link
 * and unanswered, or not stamped on it while other links' were. */
static __always_inline int tp_probes_missed(struct tp_health *h, struct tp_round *round)
{
	__u64 unstamped = round && round->seq > h->stamped_seq ? round->seq - h->stamped_seq : 0;

	return h->unanswered + unstamped >= TP_MISSED_PROBES;
}

/* Whether `link` may carry traffic now: as the current link (is_current:
 * dead only on evidence, above) or as a standby (fresh). *lp gets its
 * tp_links entry (or NULL), so the caller needs no second lookup to forward
 * on it. *last_reply gets the instant its silence is counted from. The
 * clock is read into *now (0: not yet) only when the answer depends on it:
 * a current link whose probes are answered is alive whatever the time, so
 * the common path reads no clock (~30 ns here). */
static __always_inline int tp_link_fresh(__u32 link, __u64 *now, int is_current, struct tp_link **lp,
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
	if (!(l->flags & TP_LINK_NEXTHOP))
		return 0;
	if (is_current) {
		__u32 zero = 0;
		struct tp_round *round = tp_probe_round.lookup(&zero);

		if (!tp_probes_missed(h, round))
			return 1;
		if (round && round->started_ns > *last_reply)
			*last_reply = round->started_ns;
	}
	if (!*now)
		*now = bpf_ktime_get_ns();
	return *last_reply && *now - *last_reply <= TP_DEAD_NS;
}

/* The link this class's packet leaves on, switching if the current one is
 * dead and a standby is fresh; *lp gets that link's tp_links entry (NULL:
 * caller routes normally); *all_stale is set when the current link is stale
 * and no standby is fresh (the caller counts it, once per packet). The class's link list is read only when the
 * current link is stale: the common path is four inlined array reads
 * (active, link, health, round) and no clock. A heartbeat move needs a
 * standby that answered at least TP_STANDBY_LEAD_NS after the current
 * link's silence began. */
static __always_inline __u32 tp_select_link(__u32 class_id, struct tp_link **lp, int *all_stale)
{
	__u64 *active = tp_active.lookup(&class_id);
	struct tp_class *cls;
	struct tp_link *cand_l;
	__u64 cur_last = 0, cand_last = 0, now = 0;
	__u64 cur;
	__u32 cause = TP_CAUSE_HEARTBEAT, ignored_cause;

	*lp = NULL;
	if (!active)
		return TP_MAX_LINKS;
	cur = *active;
	if (tp_link_fresh((__u32)cur, &now, 1, lp, &cur_last, &cause))
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
		if (cand == cur || !tp_link_fresh((__u32)cand, &now, 0, &cand_l, &cand_last, &ignored_cause))
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
	*all_stale = 1;
	return cur;
}

#endif
