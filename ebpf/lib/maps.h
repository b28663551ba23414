/* Map declarations shared by every gateway program (BCC syntax). Compiled in
 * one BCC module so steer and heartbeat see the same maps. */
#ifndef TP_MAPS_H
#define TP_MAPS_H

#include "lib/layout.h"

BPF_ARRAY(tp_links, struct tp_link, TP_MAX_LINKS);
BPF_ARRAY(tp_health, struct tp_health, TP_MAX_LINKS);
BPF_ARRAY(tp_rtt_ring, struct tp_rtt_ring, TP_MAX_LINKS);
/* [0]: the highest probe sequence stamped on any link (all links of a round
 * share one): a link whose own stamped_seq lags it sent no probe in those
 * rounds (lib/reflex.h). */
BPF_ARRAY(tp_probe_round, __u64, 1);
BPF_ARRAY(tp_keys, struct tp_key, TP_KEY_SLOTS);
BPF_ARRAY(tp_classes, struct tp_class, TP_MAX_CLASSES);
/* The class's current link: CAS'd by the data path on reflex failover,
 * written by the daemon on failback. */
BPF_ARRAY(tp_active, __u64, TP_MAX_CLASSES); /* u64: BCC emits 64-bit cmpxchg only */
BPF_LPM_TRIE(tp_rules, struct tp_lpm_key, struct tp_prefix_rules, TP_MAX_PREFIXES);
BPF_PERCPU_ARRAY(tp_steer_stats, struct tp_counters, TP_MAX_CLASSES * TP_MAX_LINKS);
BPF_PERCPU_ARRAY(tp_rtt_hist, __u64, TP_MAX_LINKS * TP_HIST_BUCKETS);
BPF_PERCPU_ARRAY(tp_gstats, __u64, TP_STAT_MAX);
BPF_RINGBUF_OUTPUT(tp_events, 8);

static __always_inline void tp_count(__u32 stat)
{
	__u64 *c = tp_gstats.lookup(&stat);
	if (c)
		*c += 1;
}

#endif
