/* TC programs on each uplink that time and authenticate heartbeats in the
 * kernel.
 *
 * tp_hb_egress stamps CLOCK_MONOTONIC into each outgoing probe and signs it
 * (SipHash-2-4 under tp_keys slot 0); tp_hb_ingress accepts an echo reply
 * only if everything a genuine one must be holds, then computes the RTT and
 * records the link's health. Both ends run on this host, so RTTs exclude the
 * daemon's scheduling jitter and the key never leaves it. Replies are
 * consumed here: the daemon reads results from the maps.
 *
 * What a reply must prove, cheapest check first: it is a well-formed echo
 * reply of exactly a probe's length with valid IP and ICMP checksums; it
 * came in on its link's interface, from the link's target to the link's own
 * address (and with TTL 255 where GTSM is on); its MAC verifies under a
 * current key (so it echoes a probe this host signed, for this link and
 * these addresses, at this tx_ns); that probe left within the dead interval;
 * and its sequence was not accepted before. A forged reply fails the MAC, a
 * replayed one the window or the age. RTT statistics see accepted replies
 * only.
 */
#include <uapi/linux/bpf.h>
#include <linux/pkt_cls.h>
#include "lib/maps.h"
#include "lib/csum.h"
#include "lib/probe.h"
#include "lib/hist.h"
#include "lib/wake.h"

int tp_hb_egress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct tp_probe_pkt p;
	struct tp_probe *probe;
	__u32 zero = 0;

	if (!tp_find_probe(data, end, ICMP_ECHO, &p) || !tp_probe_well_formed(data, end, skb->len, &p))
		return TC_ACT_OK;
	probe = p.probe;

	/* Sign only a probe leaving its own link from the link's address to its
	 * target: a probe-shaped packet anywhere else stays unsigned, so no
	 * reply to it can make any link look alive. */
	__u32 link = probe->link;
	struct tp_link *l = tp_links.lookup(&link);
	struct tp_health *h = tp_health.lookup(&link);
	struct tp_key *key = tp_keys.lookup(&zero);
	if (!l || !h || !key || !key->id || l->ifindex != skb->ifindex ||
	    p.ip->saddr != l->local || p.ip->daddr != l->target) {
		tp_count(TP_STAT_PROBE_FOREIGN);
		return TC_ACT_OK;
	}

	__u64 now = bpf_ktime_get_ns();
	__u64 old_mac = probe->mac;
	/* key_id shares its 16-bit word with the first pad byte */
	__u16 old_word = *(__u16 *)&probe->key_id;
	tp_csum_replace8(&p.icmp->checksum, probe->tx_ns, now);
	probe->tx_ns = now;
	probe->key_id = (__u8)key->id;
	tp_csum_replace2(&p.icmp->checksum, old_word, *(__u16 *)&probe->key_id);
	probe->mac = tp_probe_mac(key, l, probe, probe->key_id);
	tp_csum_replace8(&p.icmp->checksum, old_mac, probe->mac);

	__sync_fetch_and_add(&h->probes, 1);
	__sync_fetch_and_add(&h->unanswered, 1);
	h->stamped_seq = probe->seq;
	/* A new round. One sender: a race only delays this by a round.
	 * started_ns before seq, so a reader that sees the round sees it too. */
	struct tp_round *round = tp_probe_round.lookup(&zero);
	if (round && probe->seq > round->seq) {
		if (!round->started_ns)
			round->started_ns = now;
		round->seq = probe->seq;
	}
	tp_count(TP_STAT_PROBE_STAMPED);
	return TC_ACT_OK;
}

/* 0, or the stat that rejects this reply. */
static __always_inline __u32 tp_check_reply(struct __sk_buff *skb, void *data, void *end,
					    struct tp_probe_pkt *p, struct tp_link *l,
					    struct tp_health *h, __u64 now)
{
	struct tp_probe *probe = p->probe;

	if (!l || !h || !tp_probe_well_formed(data, end, skb->len, p) || l->ifindex != skb->ifindex ||
	    p->ip->saddr != l->target || p->ip->daddr != l->local ||
	    ((l->flags & TP_LINK_TTL_SECURITY) && p->ip->ttl != 255) || !tp_probe_icmp_csum_ok(p, end))
		return TP_STAT_REPLY_BAD;
	struct tp_key *key = tp_probe_key(probe->key_id);
	if (!key || tp_probe_mac(key, l, probe, probe->key_id) != probe->mac)
		return TP_STAT_REPLY_FORGED;
	if (!probe->tx_ns || probe->tx_ns > now || now - probe->tx_ns > TP_DEAD_NS ||
	    !tp_replay_accept(h, probe->seq))
		return TP_STAT_REPLY_REPLAYED;
	return 0;
}

int tp_hb_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct tp_probe_pkt p;
	__u64 now, rtt, prev_top, prev_rtt;

	if (!tp_find_probe(data, end, ICMP_ECHOREPLY, &p))
		return TC_ACT_OK;
	now = bpf_ktime_get_ns();

	__u32 link = p.probe->link;
	struct tp_link *l = tp_links.lookup(&link);
	struct tp_health *h = tp_health.lookup(&link);
	prev_top = h ? h->seq_top : 0;   /* before tp_check_reply slides the replay window */
	__u32 rejected = tp_check_reply(skb, data, end, &p, l, h, now);
	if (rejected) {
		tp_count(rejected);
		return TC_ACT_SHOT;
	}
	if (!h)
		return TC_ACT_SHOT;
	rtt = now - p.probe->tx_ns;
	prev_rtt = h->rtt_last_ns;

	if (now - h->last_reply_ns > TP_DEAD_NS)
		h->fresh_since_ns = now;
	h->last_reply_ns = now;
	/* A probe stamped while this reply was on its way is counted as
	 * answered: at worst one probe later detection, never an early one. */
	h->unanswered = 0;
	h->rtt_last_ns = rtt;
	h->rtt_ewma_ns = h->rtt_ewma_ns ? h->rtt_ewma_ns + ((__s64)(rtt - h->rtt_ewma_ns) >> 3) : rtt;
	__sync_fetch_and_add(&h->replies, 1);

	struct tp_rtt_ring *ring = tp_rtt_ring.lookup(&link);
	if (ring) {
		__u32 slot = p.probe->seq & (TP_RTT_RING - 1);
		ring->rtt_ns[slot] = rtt;
		asm volatile("" ::: "memory");   /* rtt_ns before seq (x86 keeps stores in order): see tp_rtt_ring */
		ring->seq[slot] = p.probe->seq;
	}

	tp_wake_check(link, rtt, prev_rtt, p.probe->seq, prev_top, now);

	__u32 bucket = link * TP_HIST_BUCKETS + tp_us_bucket(rtt);
	__u64 *hist = tp_rtt_hist.lookup(&bucket);
	if (hist)
		*hist += 1;
	tp_count(TP_STAT_REPLY_OK);
	return TC_ACT_SHOT;
}
