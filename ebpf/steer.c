/* TC ingress on the trader-facing interface: classify each packet, pick its
 * class's link (switching on the spot if that link went stale), rewrite L2
 * for the link's next hop and redirect, bypassing the routing table.
 * Anything not matched by a rule takes normal kernel routing. The standby of
 * an HA pair drops what a rule matches (lib/pair.h). */
#include <uapi/linux/bpf.h>
#include <linux/pkt_cls.h>
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/classify.h"
#include "lib/reflex.h"
#include "lib/forward.h"
#include "lib/pair.h"

int tp_steer(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	int class_id;

	switch (tp_ipv4(data, end, skb->len, &ip)) {
	case TP_IP_OK:
		break;
	case TP_IP_NOT_IPV4:
		tp_count(TP_STAT_NOT_IPV4);
		return TC_ACT_OK;
	case TP_IP_OPTIONS:
		tp_count(TP_STAT_UNPARSED);
		return TC_ACT_OK;
	default:
		tp_count(TP_STAT_MALFORMED);
		return TC_ACT_OK;
	}
	if (tp_ip_fragment(ip) || !tp_ports_inside(ip, end)) {
		tp_count(TP_STAT_UNPARSED);
		return TC_ACT_OK;
	}
	class_id = tp_classify(ip, end);
	if (class_id < 0) {
		tp_count(TP_STAT_NO_RULE);
		return TC_ACT_OK;
	}
	if (tp_pair_fenced())
		return TC_ACT_SHOT;
	if (ip->ttl <= 1) {
		tp_count(TP_STAT_TTL_EXPIRED);
		return TC_ACT_OK;
	}

	struct tp_link *l;
	__u32 link = tp_select_link(class_id, &l);
	__u32 idx = class_id * TP_MAX_LINKS + link;
	struct tp_counters *c = tp_steer_stats.lookup(&idx);
	if (c) {
		c->packets += 1;
		c->bytes += skb->len;
	}
	if (!l || !(l->flags & TP_LINK_NEXTHOP)) {
		tp_count(TP_STAT_NO_NEXTHOP);
		return TC_ACT_OK;
	}

	if (c)
		c->redirects += 1;
	return tp_forward(eth, ip, l->src_mac, l->dst_mac, l->ifindex);
}
