/* Traffic class of a packet: longest-prefix match on the destination, then
 * the first rule of that prefix matching protocol and destination port. */
#ifndef TP_CLASSIFY_H
#define TP_CLASSIFY_H

#include <linux/tcp.h>
#include <linux/udp.h>
#include "lib/maps.h"

/* Class id, or -1 when no rule matches. */
static __always_inline int tp_classify(struct iphdr *ip, void *end)
{
	struct tp_lpm_key key = { .prefixlen = 32, .addr = ip->daddr };
	struct tp_prefix_rules *pr = tp_rules.lookup(&key);
	__u16 dport = 0;

	if (!pr)
		return -1;
	if (ip->protocol == IPPROTO_UDP || ip->protocol == IPPROTO_TCP) {
		/* dest port is at the same offset in TCP and UDP */
		struct udphdr *l4 = (void *)(ip + 1);
		if ((void *)(l4 + 1) > end)
			return -1;
		dport = bpf_ntohs(l4->dest);
	}
	#pragma unroll
	for (int i = 0; i < TP_RULES_PER_PREFIX; i++) {
		struct tp_rule *r = &pr->rules[i];
		if (i >= pr->n_rules)
			break;
		if ((r->proto == 0 || r->proto == ip->protocol) &&
		    dport >= r->port_lo && dport <= r->port_hi)
			return r->class_id;
	}
	return -1;
}

#endif
