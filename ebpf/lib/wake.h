/* Waking the daemon while it reads calmly (tp_wake, lib/layout.h): the
 * daemon then reads its links every few tens of ms instead of every 5 ms,
 * and the kernel tells it when replies look like the start of a change.
 * Only replies that passed every check get here, so a forged packet wakes
 * nobody; one arming makes at most one event. */
#ifndef TP_WAKE_H
#define TP_WAKE_H

#include "lib/maps.h"

static __always_inline void tp_wake_check(__u32 link, __u64 rtt, __u64 prev_rtt, __u64 seq,
					  __u64 prev_top, __u64 now)
{
	struct tp_wake *w = tp_wake.lookup(&link);

	if (!w || !w->armed)
		return;
	/* Probes lost just before this reply (none for one out of order). */
	__u64 lost = seq > prev_top + 1 ? seq - prev_top - 1 : 0;
	if (lost < 2) {
		__u32 beyond = lost || rtt > w->rtt_above_ns || rtt < w->rtt_below_ns;
		__u64 change = rtt > prev_rtt ? rtt - prev_rtt : prev_rtt - rtt;
		__u64 cap = 2 * w->change_ns;

		w->beyond = ((w->beyond << 1) | beyond) & ((1U << TP_WAKE_HISTORY) - 1);
		w->jitter_ns += (__s64)((change < cap ? change : cap) - w->jitter_ns) >> TP_WAKE_JITTER_SHIFT;
		if (__builtin_popcount(w->beyond) < TP_WAKE_MAJORITY && w->jitter_ns <= w->change_ns)
			return;
	}
	w->armed = 0;
	struct tp_event ev = {.ts_ns = now, .from_link = link, .to_link = link, .cause = TP_CAUSE_WAKE};
	tp_events.ringbuf_output(&ev, sizeof(ev), 0);
}

#endif
