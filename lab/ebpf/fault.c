/* Fault injector for the lab's carrier links (the kernel has no netem).
 *
 * Direct-action TC classifiers on a carrier's gw-facing veth: fault_from_gw
 * on its ingress (what the gateway sends), fault_to_gw on its egress (what
 * the gateway receives), sharing one config, so a fault hits either or both
 * directions while the gateway's own link keeps carrier: a gray failure.
 * lab/faults.py loads them and flips fault_cfg through a pinned map.
 *
 * DELAY hands what goes to the gateway to a userspace delay line: redirected
 * into a veth pair in the carrier namespace, read off its far end, held, and
 * sent back out of this veth with TP_FAULT_DELAY_MARK, which lets it pass.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "lab_layout.h"

BPF_ARRAY(fault_cfg, struct tp_fault_config, 1);
BPF_PERCPU_ARRAY(fault_stats, struct tp_fault_counters, 1);

/* LOSS: a frame starts a burst with the configured probability; the burst
 * also takes the next burst_len - 1 frames of its direction. The count is
 * shared by all CPUs without atomics: a race only loses a decrement. */
static __always_inline int tp_lost(struct tp_fault_config *cfg, int from_gw)
{
	__u32 *left = &cfg->burst_left[from_gw ? 0 : 1];

	if (*left) {
		*left -= 1;
		return 1;
	}
	if (bpf_get_prandom_u32() >= cfg->loss_threshold)
		return 0;
	if (cfg->burst_len > 1)
		*left = cfg->burst_len - 1;
	return 1;
}

static __always_inline int tp_verdict(struct __sk_buff *skb, struct tp_fault_config *cfg, int from_gw)
{
	switch (cfg->mode) {
	case TP_FAULT_BLACKHOLE:
		return TC_ACT_SHOT;
	case TP_FAULT_BLACKHOLE_TX:
		return from_gw ? TC_ACT_SHOT : TC_ACT_OK;
	case TP_FAULT_BLACKHOLE_RX:
		return from_gw ? TC_ACT_OK : TC_ACT_SHOT;
	case TP_FAULT_LOSS:
		return tp_lost(cfg, from_gw) ? TC_ACT_SHOT : TC_ACT_OK;
	case TP_FAULT_DELAY:
		if (from_gw || skb->mark == TP_FAULT_DELAY_MARK)
			return TC_ACT_OK;
		return bpf_redirect(cfg->redirect_ifindex, 0);
	}
	return TC_ACT_OK;
}

static __always_inline int tp_fault(struct __sk_buff *skb, int from_gw)
{
	int zero = 0;
	struct tp_fault_config *cfg = fault_cfg.lookup(&zero);
	struct tp_fault_counters *counters = fault_stats.lookup(&zero);
	int verdict = cfg ? tp_verdict(skb, cfg, from_gw) : TC_ACT_OK;

	if (counters) {
		if (verdict == TC_ACT_SHOT)
			counters->dropped++;
		else if (verdict == TC_ACT_REDIRECT)
			counters->delayed++;
		else
			counters->passed++;
	}
	return verdict;
}

int fault_from_gw(struct __sk_buff *skb)
{
	return tp_fault(skb, 1);
}

int fault_to_gw(struct __sk_buff *skb)
{
	return tp_fault(skb, 0);
}
