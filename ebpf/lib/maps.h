/* Map declarations shared by every gateway program (BCC syntax). Compiled in
 * one BCC module so steer and heartbeat see the same maps; every map but the
 * event ring is pinned (lib/pin.h: bump a version when its layout changes). */
#ifndef TP_MAPS_H
#define TP_MAPS_H

#include "lib/layout.h"
#include "lib/pin.h"

TP_MAP("array", int, struct tp_link, tp_links, TP_MAX_LINKS, 1, 0);
TP_MAP("array", int, struct tp_health, tp_health, TP_MAX_LINKS, 1, 0);
TP_MAP("array", int, struct tp_rtt_ring, tp_rtt_ring, TP_MAX_LINKS, 1, 0);
/* [0]: the sender's last round, and when a new sender's first round went
 * out (started_ns): a link whose own stamped_seq lags the round sent no
 * probe in those rounds (lib/reflex.h). */
TP_MAP("array", int, struct tp_round, tp_probe_round, 1, 2, 0);
TP_MAP("array", int, struct tp_key, tp_keys, TP_KEY_SLOTS, 1, 0);
TP_MAP("array", int, struct tp_class, tp_classes, TP_MAX_CLASSES, 1, 0);
/* The class's current link: CAS'd by the data path on reflex failover,
 * written by the daemon on failback. */
TP_MAP("array", int, __u64, tp_active, TP_MAX_CLASSES, 1, 0); /* u64: BCC emits 64-bit cmpxchg only */
TP_MAP("lpm_trie", struct tp_lpm_key, struct tp_prefix_rules, tp_rules, TP_MAX_PREFIXES, 1, BPF_F_NO_PREALLOC);
TP_MAP("array", int, struct tp_prefix_table, tp_prefix_table, 3, 1, 0);
TP_MAP("array", int, struct tp_pair, tp_pair, 1, 1, 0);
TP_MAP("percpu_array", int, struct tp_counters, tp_steer_stats, TP_MAX_CLASSES * TP_MAX_LINKS, 1, 0);
TP_MAP("percpu_array", int, __u64, tp_rtt_hist, TP_MAX_LINKS * TP_HIST_BUCKETS, 1, 0);
TP_MAP("percpu_array", int, __u64, tp_gstats, TP_STAT_MAX, 2, 0); /* v2: + xdp_forwarded */
BPF_RINGBUF_OUTPUT(tp_events, 8);
/* Not pinned, like the ring it feeds: a daemon arms it anew after each start. */
BPF_ARRAY(tp_wake, struct tp_wake, TP_MAX_LINKS);

static __always_inline void tp_count(__u32 stat)
{
	__u64 *c = tp_gstats.lookup(&stat);
	if (c)
		*c += 1;
}

#endif
