/* Bounds-checked views of Ethernet/IPv4 headers for TC programs. */
#ifndef TP_PARSE_H
#define TP_PARSE_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>

/* The IPv4 header of a plain (no options, unfragmented) packet, or NULL.
 * *is_ipv4 tells a non-IPv4 frame from an IPv4 one we do not handle. */
static __always_inline struct iphdr *tp_plain_ipv4(void *data, void *end, int *is_ipv4)
{
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);

	*is_ipv4 = 0;
	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return NULL;
	*is_ipv4 = 1;
	/* Ports sit at a fixed offset only without options; later fragments
	 * carry no ports at all. Both go to kernel routing. */
	if (ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
		return NULL;
	return ip;
}

#endif
