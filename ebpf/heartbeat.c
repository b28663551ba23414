/* TC programs on each uplink that time heartbeats in the kernel.
 *
 * tp_hb_egress stamps CLOCK_MONOTONIC into each outgoing probe; tp_hb_ingress
 * computes the RTT when the echo comes back and records the link's health.
 * Both ends run on this host, so RTTs exclude the daemon's scheduling jitter.
 * Replies are consumed here: the daemon reads results from the maps.
 */
#include <uapi/linux/bpf.h>
#include <linux/pkt_cls.h>
#include "lib/maps.h"
#include "lib/csum.h"
#include "lib/probe.h"

int tp_hb_egress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct icmphdr *icmp;
	struct tp_probe *probe = tp_find_probe(data, end, ICMP_ECHO, &icmp);
	__u64 now;

	if (!probe)
		return TC_ACT_OK;
	now = bpf_ktime_get_ns();
	tp_csum_replace8(&icmp->checksum, probe->tx_ns, now);
	probe->tx_ns = now;

	__u32 link = probe->link;
	struct tp_health *h = tp_health.lookup(&link);
	if (h)
		__sync_fetch_and_add(&h->probes, 1);
	tp_count(TP_STAT_PROBE_STAMPED);
	return TC_ACT_OK;
}

int tp_hb_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct icmphdr *icmp;
	struct tp_probe *probe = tp_find_probe(data, end, ICMP_ECHOREPLY, &icmp);
	__u64 now, rtt;

	if (!probe)
		return TC_ACT_OK;
	now = bpf_ktime_get_ns();

	/* Accept a reply only on the link its probe left from, with a stamp
	 * from the past: anything else must not make a link look fresh. */
	__u32 link = probe->link;
	struct tp_link *l = tp_links.lookup(&link);
	struct tp_health *h = tp_health.lookup(&link);
	if (!l || !h || l->ifindex != skb->ifindex || !probe->tx_ns || probe->tx_ns > now) {
		tp_count(TP_STAT_REPLY_BAD);
		return TC_ACT_SHOT;
	}
	rtt = now - probe->tx_ns;

	if (now - h->last_reply_ns > TP_DEAD_NS)
		h->fresh_since_ns = now;
	h->last_reply_ns = now;
	h->rtt_last_ns = rtt;
	h->rtt_ewma_ns = h->rtt_ewma_ns ? h->rtt_ewma_ns + ((__s64)(rtt - h->rtt_ewma_ns) >> 3) : rtt;
	h->last_seq = probe->seq;
	__sync_fetch_and_add(&h->replies, 1);

	__u32 bucket = link * TP_HIST_BUCKETS + tp_us_bucket(rtt);
	__u64 *hist = tp_rtt_hist.lookup(&bucket);
	if (hist)
		*hist += 1;
	tp_count(TP_STAT_REPLY_OK);
	return TC_ACT_SHOT;
}
