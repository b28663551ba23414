/* Order steering, one body for both hooks on the trader-facing interface:
 * classify each packet, pick its class's link (switching on the spot if that
 * link went stale), rewrite L2 for the link's next hop and redirect,
 * bypassing the routing table. Anything not matched by a rule takes normal
 * kernel routing. The standby of an HA pair drops what a rule matches
 * (lib/pair.h).
 *
 * TC (steer.c) decides every packet and keeps every count. XDP
 * (steer_xdp.c) runs first and only accelerates: it forwards a packet the TC
 * program would forward, to a link whose device takes XDP redirects
 * (TP_LINK_XDP_XMIT, which the daemon keeps from the device's xdp_features:
 * a redirect to a device without it is dropped by the kernel). Anything else
 * it passes untouched and uncounted, and the TC program decides it as if XDP
 * were not there. Both paths make the same forwarding step (lib/forward.h). */
#ifndef TP_STEER_H
#define TP_STEER_H

#include <linux/pkt_cls.h>
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/classify.h"
#include "lib/reflex.h"
#include "lib/forward.h"
#include "lib/pair.h"

/* A packet steer leaves to the stack: TC counts why, XDP leaves it to TC. */
static __always_inline int tp_steer_pass(const int xdp, __u32 stat)
{
	if (xdp)
		return XDP_PASS;
	tp_count(stat);
	return TC_ACT_OK;
}

/* frame_len: skb->len (TC) or data_end - data (XDP). */
static __always_inline int tp_steer_frame(void *data, void *end, __u32 frame_len, const int xdp)
{
	struct ethhdr *eth = data;
	struct iphdr *ip;
	int class_id;

	switch (tp_ipv4(data, end, frame_len, &ip)) {
	case TP_IP_OK:
		break;
	case TP_IP_NOT_IPV4:
		return tp_steer_pass(xdp, TP_STAT_NOT_IPV4);
	case TP_IP_OPTIONS:
		return tp_steer_pass(xdp, TP_STAT_UNPARSED);
	default:
		return tp_steer_pass(xdp, TP_STAT_MALFORMED);
	}
	if (tp_ip_fragment(ip) || !tp_ports_inside(ip, end))
		return tp_steer_pass(xdp, TP_STAT_UNPARSED);
	class_id = tp_classify(ip, end);
	if (class_id < 0)
		return tp_steer_pass(xdp, TP_STAT_NO_RULE);
	if (xdp ? tp_pair_standby() != NULL : tp_pair_fenced())
		return xdp ? XDP_PASS : TC_ACT_SHOT;
	if (ip->ttl <= 1)
		return tp_steer_pass(xdp, TP_STAT_TTL_EXPIRED);

	/* A reflex move made here stands when XDP then passes: TC finds the
	 * class already on the fresh link and follows it. */
	struct tp_link *l;
	int all_stale = 0;
	__u32 link = tp_select_link(class_id, &l, &all_stale);
	if (xdp && (!l || (l->flags & (TP_LINK_NEXTHOP | TP_LINK_XDP_XMIT)) != (TP_LINK_NEXTHOP | TP_LINK_XDP_XMIT)))
		return XDP_PASS;
	if (all_stale)
		tp_count(TP_STAT_ALL_STALE);
	__u32 idx = class_id * TP_MAX_LINKS + link;
	struct tp_counters *c = tp_steer_stats.lookup(&idx);
	if (c) {
		c->packets += 1;
		c->bytes += frame_len;
	}
	if (!l || !(l->flags & TP_LINK_NEXTHOP)) {
		tp_count(TP_STAT_NO_NEXTHOP);
		return TC_ACT_OK;
	}

	if (c)
		c->redirects += 1;
	if (xdp)
		tp_count(TP_STAT_XDP_FORWARDED);
	return tp_forward(eth, ip, l->src_mac, l->dst_mac, l->ifindex);
}

#endif
