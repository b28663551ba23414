// Fault injector for the lab's carrier links (the kernel has no netem).
//
// Attached as a direct-action TC classifier on both ingress and egress of a
// carrier's gw-facing veth, so faults hit traffic in both directions while
// the gateway's own link keeps carrier: that is what a gray failure looks like.
// appliance/lab/faults.py loads it and flips fault_cfg through a pinned map.
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

enum fault_mode {
    FAULT_PASS = 0,
    FAULT_BLACKHOLE = 1,
    FAULT_LOSS = 2,  // drop when bpf_get_prandom_u32() < loss_threshold
};

struct fault_config {
    __u32 mode;
    __u32 loss_threshold;
};

struct fault_counters {
    __u64 passed;
    __u64 dropped;
};

BPF_ARRAY(fault_cfg, struct fault_config, 1);
BPF_PERCPU_ARRAY(fault_stats, struct fault_counters, 1);

int fault(struct __sk_buff *skb)
{
    int zero = 0;
    struct fault_config *cfg = fault_cfg.lookup(&zero);
    struct fault_counters *counters = fault_stats.lookup(&zero);
    int drop = 0;

    if (cfg) {
        if (cfg->mode == FAULT_BLACKHOLE)
            drop = 1;
        else if (cfg->mode == FAULT_LOSS)
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
