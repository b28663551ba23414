/* XDP on both market-data uplinks: forward the first copy of each sequence
 * to the trader (L2 rewrite + redirect), drop the copy that lost the race,
 * report gaps, and keep per-line won/lost counts and lead/lag histograms.
 * Anything that is not a configured feed passes to the stack untouched.
 *
 * One entry per line: the line is a constant of the attachment, not a lookup.
 * Overlapping batches: a packet with any new sequence is forwarded whole; the
 * trader's handler skips messages whose sequence it already has (the rule the
 * lab's checker applies).
 */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/in.h>
#include "lib/feed_maps.h"
#include "lib/feedparse.h"
#include "lib/claim.h"
#include "lib/csum.h"
#include "lib/hist.h"

#ifndef TP_HB_DEDUP_NS
#error "TP_HB_DEDUP_NS (a heartbeat this soon after a forwarded one is its copy) must be defined by the loader"
#endif

struct tp_arb_ctx {
	struct ethhdr *eth;
	struct iphdr *ip;
	struct tp_feed_state *st;
	struct tp_feed_claims *cl;
	struct tp_line_stats *ls;
	struct tp_feed *feed;
	__u64 now;
	__u64 gen;                  /* claim generation of the packet's session */
	__u32 id;                   /* the feed's */
	__u32 line;
};

static __always_inline int tp_forward(struct tp_arb_ctx *a)
{
	struct iphdr *ip = a->ip;
	__u16 old_word = *(__u16 *)&ip->ttl; /* TTL shares its word with the protocol */

	ip->ttl -= 1;
	tp_csum_replace2(&ip->check, old_word, *(__u16 *)&ip->ttl);
	__builtin_memcpy(a->eth->h_dest, a->feed->dst_mac, ETH_ALEN);
	__builtin_memcpy(a->eth->h_source, a->feed->src_mac, ETH_ALEN);
	return bpf_redirect(a->feed->ifindex, 0);
}

/* Follows the feed into a new MoldUDP64 session (key and generation in one
 * CAS: claims of the old one are void). Returns the session word to claim
 * under, or 0 for a straggler of the previous session. */
static __always_inline __u64 tp_enter_session(struct tp_arb_ctx *a, __u64 key, __u64 cur, __u64 first)
{
	struct tp_feed_state *st = a->st;
	__u64 next = key | ((cur + 1) & TP_GEN_MASK);

	if ((cur & ~TP_GEN_MASK) && key == st->prev_session)
		return 0;
	if (__sync_val_compare_and_swap(&st->session, cur, next) != cur) {
		cur = *(volatile __u64 *)&st->session; /* the other line switched first */
		return (cur & ~TP_GEN_MASK) == key ? cur : 0;
	}
	st->prev_session = cur & ~TP_GEN_MASK;
	st->next_seq = 0;
	st->line_next_seq[0] = 0;
	st->line_next_seq[1] = 0;
	tp_arb_event(a->ls, a->now, a->id, a->line, TP_ARB_SESSION, first, first);
	return next;
}

/* Heartbeat or end of session: `next` is the next sequence the exchange will
 * send. It delivers nothing, but reveals a gap below it; one copy goes on. */
static __always_inline int tp_heartbeat(struct tp_arb_ctx *a, __u64 next)
{
	struct tp_feed_state *st = a->st;
	int advanced = 0;
	__u64 old, last;

	a->ls->heartbeats += 1;
	if (next > st->line_next_seq[a->line & 1])
		st->line_next_seq[a->line & 1] = next;
	old = tp_advance(&st->next_seq, next, &advanced);
	if (advanced && old && next > old)
		tp_arb_event(a->ls, a->now, a->id, a->line, TP_ARB_GAP, old, next - 1);
	last = st->hb_last_ns;
	if (a->now - last < TP_HB_DEDUP_NS ||
	    __sync_val_compare_and_swap(&st->hb_last_ns, last, a->now) != last)
		return XDP_DROP;
	a->ls->heartbeats_forwarded += 1;
	return tp_forward(a);
}

static __always_inline int tp_data(struct tp_arb_ctx *a, __u64 s, __u64 e)
{
	struct tp_feed_state *st = a->st;
	struct tp_line_stats *ls = a->ls;
	struct tp_claim c = {};
	int advanced = 0;
	__u64 old;

	if (e > st->line_next_seq[a->line & 1])
		st->line_next_seq[a->line & 1] = e;
	tp_claim_range(a->cl, a->gen, s, e, &c);
	if (!c.first_new) {
		__s64 lag = tp_lag(a->cl, s, a->line, a->now);
		if (c.stale)
			ls->stale += 1;
		else
			ls->lost += 1;
		if (lag >= 0)
			ls->lag_hist[tp_us_bucket(lag) & (TP_HIST_BUCKETS - 1)] += 1;
		return XDP_DROP;
	}
	tp_stamp(a->cl, c.first_new, a->line, a->now);
	old = tp_advance(&st->next_seq, e, &advanced);
	if (advanced && old && s > old)
		tp_arb_event(ls, a->now, a->id, a->line, TP_ARB_GAP, old, s - 1);
	if (c.first_new < old) {
		ls->fills += 1;
		tp_arb_event(ls, a->now, a->id, a->line, TP_ARB_FILL, c.first_new, (e < old ? e : old) - 1);
	}
	ls->won += 1;
	if (c.partial)
		ls->overlap += 1;
	return tp_forward(a);
}

static __always_inline int tp_arbitrate(struct xdp_md *ctx, const __u32 line)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct tp_arb_ctx a = {.eth = data, .ip = data + sizeof(struct ethhdr), .line = line};
	struct iphdr *ip = a.ip;

	if ((void *)(ip + 1) > end || a.eth->h_proto != bpf_htons(ETH_P_IP)) {
		tp_arb_count(line, TP_ARB_STAT_NOT_IPV4);
		return XDP_PASS;
	}
	if (ip->protocol != IPPROTO_UDP) {
		tp_arb_count(line, TP_ARB_STAT_NOT_FEED);
		return XDP_PASS;
	}
	if (ip->frag_off & bpf_htons(0x3fff)) {
		tp_arb_count(line, TP_ARB_STAT_FRAGMENT);
		return XDP_PASS;
	}
	__u32 ihl = ip->ihl * 4;
	struct udphdr *udp = (void *)ip + ihl;
	if (ihl < sizeof(*ip) || (void *)(udp + 1) > end) {
		tp_arb_count(line, TP_ARB_STAT_TRUNCATED);
		return XDP_PASS;
	}
	struct tp_feed_key key = {.addr = ip->daddr, .port = udp->dest};
	struct tp_feed *feed = tp_feeds.lookup(&key);
	if (!feed) {
		tp_arb_count(line, TP_ARB_STAT_NOT_FEED);
		return XDP_PASS;
	}
	__u32 proto = feed->proto, stats_idx = feed->id * TP_ARB_LINES + line;
	a.feed = feed;
	a.id = feed->id;
	a.st = tp_feed_state.lookup(&a.id);
	a.cl = tp_feed_claims.lookup(&a.id);
	a.ls = tp_line_stats.lookup(&stats_idx);
	if (!a.st || !a.cl || !a.ls)
		return XDP_PASS;
	if (!feed->ifindex) {
		tp_arb_count(line, TP_ARB_STAT_NO_OUTPUT);
		return XDP_PASS;
	}
	if (ip->ttl <= 1) {
		tp_arb_count(line, TP_ARB_STAT_TTL_EXPIRED);
		return XDP_PASS;
	}

	/* A feed packet from here on: whatever is wrong with it is dropped,
	 * never forwarded half-understood. */
	struct tp_feed_packet pkt = {};
	__u32 udp_len = bpf_ntohs(udp->len);
	__u8 *payload = (void *)(udp + 1);
	int kind = TP_FEED_MALFORMED;
	if (udp_len >= sizeof(*udp) && udp_len <= TP_MAX_PAYLOAD && (void *)udp + udp_len <= end &&
	    bpf_ntohs(ip->tot_len) >= ihl + udp_len) {
		__u32 len = udp_len - sizeof(*udp);
		if (proto == TP_PROTO_MOLDUDP64)
			kind = tp_parse_mold(payload, end, len, &pkt);
		else if (proto == TP_PROTO_MDP3)
			kind = tp_parse_mdp3(payload, end, len, &pkt);
	}
	if (kind == TP_FEED_MALFORMED) {
		a.ls->malformed += 1;
		return XDP_DROP;
	}

	a.now = bpf_ktime_get_ns();
	a.ls->packets += 1;
	a.st->line_last_ns[line] = a.now;
	__u32 zero = 0; /* tp_arb_config only for MDP3's SendingTime */
	struct tp_arb_config *cfg = pkt.sending_time ? tp_arb_config.lookup(&zero) : NULL;
	if (cfg) {
		__s64 owd = (__s64)(a.now + cfg->mono_to_real_ns - pkt.sending_time);
		if (owd >= 0)
			a.ls->owd_hist[tp_us_bucket(owd) & (TP_HIST_BUCKETS - 1)] += 1;
	}
	__u64 session = *(volatile __u64 *)&a.st->session;
	if ((session & ~TP_GEN_MASK) != pkt.session) {
		session = tp_enter_session(&a, pkt.session, session, pkt.seq);
		if (!session) {
			a.ls->stale += 1;
			return XDP_DROP;
		}
	}
	a.gen = session & TP_GEN_MASK;
	if (kind == TP_FEED_HEARTBEAT)
		return tp_heartbeat(&a, pkt.seq);
	return tp_data(&a, pkt.seq, pkt.seq + pkt.count);
}

int tp_arb_line_a(struct xdp_md *ctx)
{
	return tp_arbitrate(ctx, 0);
}

int tp_arb_line_b(struct xdp_md *ctx)
{
	return tp_arbitrate(ctx, 1);
}
