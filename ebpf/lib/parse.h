/* The one IPv4 parser of every program: bounds-checked Ethernet/IPv4 views
 * that accept exactly what the kernel's ip_rcv() would accept.
 *
 * A header ip_rcv() rejects (version not 4, IHL < 5, total length shorter
 * than the header or longer than the frame, bad header checksum) is
 * "malformed". The fast path never forwards such a packet: it passes it to
 * the stack untouched, which drops and counts it (InHdrErrors), exactly as
 * if twinpath were not there. Trailing bytes after tot_len (Ethernet
 * padding) are legal and never read as packet data.
 *
 * IP options: the header checksum covers them and they are validated here;
 * whether a program handles a packet with options is its own rule (steer and
 * the heartbeat programs do not, arbitration does).
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
};

/* Whether the header's ihl 32-bit words carry a valid checksum. */
static __always_inline int tp_ip_csum_ok(struct iphdr *ip, void *end)
{
	__u32 *w = (void *)ip;
	__u64 s = 0;

	#pragma unroll
	for (int i = 0; i < 15; i++) {
		if (i >= ip->ihl)
			break;
		if ((void *)(w + i + 1) > end)
			return 0;
		s += w[i];
	}
	return tp_csum_fold64(s) == 0xffff;
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
	if (ip->version != 4 || ip->ihl < 5 || tot < ip->ihl * 4u || tot > frame_len - sizeof(*eth) ||
	    !tp_ip_csum_ok(ip, end))
		return TP_IP_MALFORMED;
	*ipp = ip;
	return TP_IP_OK;
}

/* Options or a fragment: ports are not at a fixed offset, or not there. */
static __always_inline int tp_ip_plain(struct iphdr *ip)
{
	return ip->ihl == 5 && !(ip->frag_off & bpf_htons(TP_IP_FRAG_MASK));
}

#endif
