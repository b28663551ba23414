/* Fault injector for the lab's carrier links (the kernel has no netem).
 *
 * A direct-action TC classifier on both ingress and egress of a carrier's
 * gw-facing veth, so faults hit both directions while the gateway's own link
 * keeps carrier: a gray failure. lab/faults.py loads it and flips
 * fault_cfg through a pinned map.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "lab_layout.h"

BPF_ARRAY(fault_cfg, struct tp_fault_config, 1);
BPF_PERCPU_ARRAY(fault_stats, struct tp_fault_counters, 1);

int fault(struct __sk_buff *skb)
{
	int zero = 0;
	struct tp_fault_config *cfg = fault_cfg.lookup(&zero);
	struct tp_fault_counters *counters = fault_stats.lookup(&zero);
	int drop = 0;

	if (cfg) {
		if (cfg->mode == TP_FAULT_BLACKHOLE)
			drop = 1;
		else if (cfg->mode == TP_FAULT_LOSS)
			drop = bpf_get_prandom_u32() < cfg->loss_threshold;
	}
	if (counters) {
		if (drop)
			counters->dropped++;
		else
			counters->passed++;
	}
	return drop ? TC_ACT_SHOT : TC_ACT_OK;
}
