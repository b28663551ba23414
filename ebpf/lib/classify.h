/* Traffic class of a packet: longest-prefix match on the destination (a
 * small table or the trie, lib/layout.h's tp_prefix_table), then the first
 * rule of that prefix matching protocol and destination port. */
#ifndef TP_CLASSIFY_H
#define TP_CLASSIFY_H

#include <linux/tcp.h>
#include <linux/udp.h>
#include "lib/maps.h"

#define TP_PORTS_LEN 4 /* source and destination port: first in both TCP and UDP */

/* Whether a TCP or UDP packet's ports lie inside the IP packet (and the
 * frame): only then may a rule match on them. Other protocols have none. */
static __always_inline int tp_ports_inside(struct iphdr *ip, void *end)
{
	if (ip->protocol != IPPROTO_UDP && ip->protocol != IPPROTO_TCP)
		return 1;
	return bpf_ntohs(ip->tot_len) >= sizeof(*ip) + TP_PORTS_LEN &&
	       (void *)ip + sizeof(*ip) + TP_PORTS_LEN <= end;
}

/* The rules of the longest configured prefix containing daddr, or NULL:
 * from the small table while the rule set fits it, else from the trie. */
static __always_inline struct tp_prefix_rules *tp_prefix_rules(__u32 daddr)
{
	__u32 idx = 0;
	struct tp_prefix_table *t = tp_prefix_table.lookup(&idx);

	if (t && t->live) {
		idx = t->live;
		t = tp_prefix_table.lookup(&idx);
		if (!t)
			return NULL;
		#pragma unroll
		for (int i = 0; i < TP_SMALL_PREFIXES; i++) {
			if (i >= t->n)
				break;
			if ((daddr & t->slots[i].mask) == t->slots[i].addr)
				return &t->slots[i].rules;
		}
		return NULL;
	}
	struct tp_lpm_key key = { .prefixlen = 32, .addr = daddr };
	return tp_rules.lookup(&key);
}

/* Class id, or -1 when no rule matches. The caller checked tp_ports_inside(). */
static __always_inline int tp_classify(struct iphdr *ip, void *end)
{
	struct tp_prefix_rules *pr = tp_prefix_rules(ip->daddr);
	__u16 dport = 0;

	if (!pr)
		return -1;
	if (ip->protocol == IPPROTO_UDP || ip->protocol == IPPROTO_TCP) {
		/* dest port is at the same offset in TCP and UDP */
		__be16 *ports = (void *)(ip + 1);
		if ((void *)(ports + 2) > end)
			return -1;
		dport = bpf_ntohs(ports[1]);
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
