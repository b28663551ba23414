/* The fast path's forwarding step, shared by steer (TC) and arbitration
 * (XDP): what a router does to a packet it forwards, so that the fast path
 * is indistinguishable from the kernel's route it bypasses. TTL-1 with the
 * checksum fixed incrementally, L2 rewritten for the next hop, and a
 * redirect that skips the routing table. The caller checks TTL > 1 first
 * and keeps its own counters. */
#ifndef TP_FORWARD_H
#define TP_FORWARD_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include "lib/csum.h"

/* The redirect verdict (TC_ACT_REDIRECT or XDP_REDIRECT, by hook). */
static __always_inline int tp_forward(struct ethhdr *eth, struct iphdr *ip, const __u8 *src_mac,
				      const __u8 *dst_mac, __u32 ifindex)
{
	__u16 old_word = *(__u16 *)&ip->ttl; /* TTL shares its 16-bit word with the protocol */

	ip->ttl -= 1;
	tp_csum_replace2(&ip->check, old_word, *(__u16 *)&ip->ttl);
	__builtin_memcpy(eth->h_dest, dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, src_mac, ETH_ALEN);
	return bpf_redirect(ifindex, 0);
}

#endif
