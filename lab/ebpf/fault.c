/* Fault injector for the lab's carrier links (the kernel has no netem).
 *
 * Direct-action TC classifiers on a carrier's gw-facing veth: fault_from_gw
 * on its ingress (what the gateway sends), fault_to_gw on its egress (what
 * the gateway receives), sharing one config, so a fault hits either or both
 * directions while the gateway's own link keeps carrier: a gray failure.
 * lab/faults.py loads them and flips fault_cfg through a pinned map.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "lab_layout.h"

BPF_ARRAY(fault_cfg, struct tp_fault_config, 1);
BPF_PERCPU_ARRAY(fault_stats, struct tp_fault_counters, 1);

static __always_inline int tp_fault(int from_gw)
{
	int zero = 0;
	struct tp_fault_config *cfg = fault_cfg.lookup(&zero);
	struct tp_fault_counters *counters = fault_stats.lookup(&zero);
	int drop = 0;

	if (cfg) {
		if (cfg->mode == TP_FAULT_BLACKHOLE)
			drop = 1;
		else if (cfg->mode == TP_FAULT_BLACKHOLE_TX)
			drop = from_gw;
		else if (cfg->mode == TP_FAULT_BLACKHOLE_RX)
			drop = !from_gw;
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

int fault_from_gw(struct __sk_buff *skb)
{
	return tp_fault(1);
}

int fault_to_gw(struct __sk_buff *skb)
{
	return tp_fault(0);
}
