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

/* The kernel's own TTL step (ip_decrease_ttl(), as ip_forward() makes it):
 * TTL is the high byte of its 16-bit word in network order, so the checksum
 * gains 0x0100 with the end-around carry. The same bytes as RFC 1624's
 * general update for every checksum value, in a third of the instructions. */
static __always_inline void tp_decrease_ttl(struct iphdr *ip)
{
	__u32 check = ip->check;

	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xFFFF));
	ip->ttl -= 1;
}

/* A MAC as three 16-bit words: an Ethernet header's MACs and the layouts'
 * are 2-byte aligned, and a byte-wise copy takes twice the instructions. */
static __always_inline void tp_copy_mac(void *dst, const void *src)
{
	__u16 *d = dst;
	const __u16 *s = src;

	d[0] = s[0];
	d[1] = s[1];
	d[2] = s[2];
}

/* The redirect verdict (TC_ACT_REDIRECT or XDP_REDIRECT, by hook). */
static __always_inline int tp_forward(struct ethhdr *eth, struct iphdr *ip, const __u8 *src_mac,
				      const __u8 *dst_mac, __u32 ifindex)
{
	tp_decrease_ttl(ip);
	tp_copy_mac(eth->h_dest, dst_mac);
	tp_copy_mac(eth->h_source, src_mac);
	return bpf_redirect(ifindex, 0);
}

#endif
