/* The one IPv4 parser of every program: bounds-checked Ethernet/IPv4 views
 * that forward only what the kernel's ip_rcv() would accept.
 *
 * A header ip_rcv() rejects (version not 4, IHL < 5, total length shorter
 * than the header or longer than the frame, bad header checksum) is
 * "malformed". The fast path never forwards such a packet: it passes it to
 * the stack untouched, which drops and counts it (InHdrErrors), exactly as
 * if twinpath were not there. Trailing bytes after tot_len (Ethernet
 * padding) are legal and never read as packet data.
 *
 * The one rule for IP options, in every program: a packet with options is
 * never fast-pathed. It passes to the stack untouched (kernel routing
 * forwards it, or drops it if its header is bad); its checksum is not
 * checked here. No market-data feed or order flow carries options, and the
 * fixed 20-byte header keeps the checksum a straight line of five adds.
 */
#ifndef TP_PARSE_H
#define TP_PARSE_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include "lib/csum.h"

#define TP_IP_FRAG_MASK     0x3fff  /* MF + fragment offset (host order after htons) */

enum tp_ip_verdict {
	TP_IP_OK = 0,
	TP_IP_NOT_IPV4,             /* not an IPv4 ethertype */
	TP_IP_MALFORMED,            /* IPv4 the kernel would drop */
	TP_IP_OPTIONS,              /* IPv4 with options: left to the stack */
};

/* Whether a 20-byte header carries a valid checksum. */
static __always_inline int tp_ip_csum_ok(struct iphdr *ip)
{
	__u32 *w = (void *)ip;

	return tp_csum_fold64((__u64)w[0] + w[1] + w[2] + w[3] + w[4]) == 0xffff;
}

/* Validates the IPv4 header of a frame of frame_len bytes (skb->len for TC,
 * data_end - data for XDP): *ipp is set on TP_IP_OK only. */
static __always_inline int tp_ipv4(void *data, void *end, __u32 frame_len, struct iphdr **ipp)
{
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	__u32 tot;

	*ipp = NULL;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TP_IP_NOT_IPV4;
	if ((void *)(ip + 1) > end)
		return TP_IP_MALFORMED;
	tot = bpf_ntohs(ip->tot_len);
	if (ip->version != 4 || ip->ihl < 5 || tot < ip->ihl * 4u || tot > frame_len - sizeof(*eth))
		return TP_IP_MALFORMED;
	if (ip->ihl != 5)
		return TP_IP_OPTIONS;
	if (!tp_ip_csum_ok(ip))
		return TP_IP_MALFORMED;
	*ipp = ip;
	return TP_IP_OK;
}

/* A fragment: later ones carry no ports, the first only part of the payload. */
static __always_inline int tp_ip_fragment(struct iphdr *ip)
{
	return ip->frag_off & bpf_htons(TP_IP_FRAG_MASK);
}

#endif
