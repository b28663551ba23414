/* XDP on both market-data uplinks: forward the first copy of each sequence
 * to the trader (L2 rewrite + redirect), drop the copy that lost the race,
 * report gaps, and keep per-line won/lost counts and lead/lag histograms.
 * Anything that is not a configured feed passes to the stack untouched.
 *
 * One entry per line: the line is a constant of the attachment, not a lookup.
 * Overlapping batches: a packet with any new sequence is forwarded whole; the
 * trader's handler skips messages whose sequence it already has (the rule the
 * lab's checker applies).
 *
 * The per-packet rules, in order (a reference model follows these; constants
 * are in lib/layout.h; "counted X" means tp_line_stats.X += 1 for the
 * packet's line; l is the packet's line, o the other one).
 *
 *  0. Not IPv4 (not_ipv4), an IPv4 header lib/parse.h rejects (bad
 *     checksum, lengths, version: truncated), IP options (ip_options), not
 *     UDP (not_feed), fragments, a UDP header cut short (truncated), not a
 *     configured feed, no receiver MAC yet, TTL <= 1: XDP_PASS untouched,
 *     counted in tp_arb_gstats, in that order.
 *     Malformed feed payload (feedparse.h, including a data packet with
 *     seq + count >= 2^56 and a heartbeat or end announcing >= 2^56):
 *     XDP_DROP, counted malformed. Otherwise counted packets, and heartbeats
 *     if it is a heartbeat (count 0) or an end of session (count 0xffff);
 *     line_last_ns[l] = now.
 *  1. Session. The feed's session is its 10 bytes, compared in full (MDP3:
 *     all zero). A switch is under way (gen odd, or gen changed while read):
 *     drop, counted stale. If the feed has no session yet (gen 0), the
 *     packet's session becomes current at once. If the packet's session is
 *     the current one: a data packet or heartbeat withdraws line l's
 *     evidence (cand_meta: l's candidate bit and l's ended bit cleared) and
 *     zeroes the candidate count; an end of session sets l's ended bit and
 *     zeroes the count. Otherwise the packet is a candidate: if it names the
 *     recorded candidate, l's candidate bit is set and the count goes up
 *     (saturating at 255); else it becomes the recorded candidate with only
 *     l's bit and count 1 (the ended bits stay). A `session-candidate`
 *     event (TP_ARB_CANDIDATE) is emitted the first time each line shows
 *     the recorded candidate (TP_CAND_TOLD bits, cleared by a new candidate).
 *     The feed switches to the candidate when, for both lines, the line
 *     showed the candidate or the current session's end of session since
 *     its last packet of the current session, or when the count reaches
 *     TP_ARB_CONFIRM and the candidate is not the session the feed last
 *     left (prev_session; none before the feed's second session): one line
 *     lagging TP_ARB_CONFIRM packets behind a session change would otherwise
 *     take the feed back and deliver the old session twice, while both lines
 *     can still take it back from a session forged on one line. Otherwise
 *     the packet is dropped, counted unconfirmed.
 *     A switch (one CPU wins gen -> gen + 1, the others drop, counted
 *     unconfirmed) sets the name (the one it replaces, if any, becomes
 *     prev_session), next_seq = 1 (0 for the feed's first session: its
 *     first data packet sets the baseline), line marks 0, candidate, far,
 *     heartbeat and end records empty; gen += 2 and every claim of an older
 *     generation is void (and emptied). MoldUDP64 feeds emit
 *     TP_ARB_SESSION. The packet then runs again from rule 0 (counted once),
 *     now as a packet of the current session.
 *  2. Bounds. n = next_seq; x = the packet's sequence (data: its first
 *     sequence; heartbeat and end: the next sequence it announces). With
 *     n > 0, x is far if x > n + TP_ARB_FAR (ahead) or x + TP_ARB_BEHIND < n
 *     (behind). A far packet sets line l's far record to x, with its count
 *     + 1 if the record held a sequence within TP_ARB_FAR of x (either way)
 *     and a non-zero count, else 1. If the record did not hold a sequence
 *     within TP_ARB_FAR of x in this generation (a new far region), it emits
 *     TP_ARB_FAR_AHEAD or TP_ARB_FAR_BEHIND (first x, last n). It is believed if line o's count
 *     is non-zero and o's far sequence is within TP_ARB_FAR of x, or if l's
 *     count reached TP_ARB_CONFIRM: TP_ARB_RESYNC (first n, last x), both
 *     counts zeroed, next_seq = x, with TP_ARB_GAP [n, x - 1] if x > n; a
 *     new generation (claims void, line marks lowered to at most x) if x < n
 *     or x - n >= TP_ARB_NEWGEN; then the packet runs again from rule 0
 *     (counted once), now in range. Not believed: dropped, counted far_ahead
 *     (ahead) or stale (behind); it moves neither next_seq nor any line mark.
 *     A packet that is not far zeroes both lines' far counts. (Then, once n
 *     is TP_ARB_SWEEP past the last sweep, one CPU empties the claim words
 *     of blocks below (n - TP_ARB_BEHIND) / 32 and the packet runs again:
 *     no verdict changes, lib/claim.h says why.)
 *  3. Data [s, e) (e = s + count): line_next_seq[l] = max(., e). If [s, e)
 *     spans claim words and the copy record of block s / 32 holds (gtag, s,
 *     count): dropped unclaimed, counted lost (an identical copy claims);
 *     else such a packet writes that record. Each
 *     sequence's bit is claimed (lib/claim.h). None newly set: dropped,
 *     counted stale if a claim word held a newer block, else lost (and the
 *     lag histogram). Otherwise forwarded, counted won (and overlap if some
 *     were already set): next_seq = max(n, e); if this packet raised it and
 *     the previous value p was non-zero and s > p, TP_ARB_GAP [p, s - 1]; if
 *     the lowest newly claimed sequence f < p, TP_ARB_FILL [f, min(e, p) - 1].
 *  4. Heartbeat or end of session announcing N: if n > 0, line_next_seq[l] =
 *     max(., N), next_seq = max(n, N), and if this raised it from p > 0 and
 *     N > p, TP_ARB_GAP [p, N - 1] (with n = 0 nothing moves: an
 *     announcement never sets the baseline). An end of session is forwarded
 *     once per (session, N): a copy with the same N as the last forwarded
 *     end is dropped. A heartbeat is dropped if N < n (behind the feed: the
 *     late copy of a heartbeat on a line that lags by more than the dedup
 *     window), or as a copy if a heartbeat was forwarded less than
 *     TP_HB_DEDUP_NS ago (kept in 4096-ns units), whatever either announces
 *     (each line names the next sequence it will carry, so the copies of one
 *     heartbeat differ after a loss); otherwise forwarded. Ends and
 *     heartbeats never deduplicate each other.
 *     Forwarded ones count heartbeats_forwarded.
 *  Races: every per-session word carries the generation tag, so a CPU that
 *  read the generation before a switch moves nothing of the new one; a data
 *  packet that finds gen changed after its claim is dropped, counted stale.
 *  Two copies racing for one CAS may both lose (both dropped): the first
 *  packet of a session can be lost that way, and is reported as a gap.
 */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/in.h>
#include "lib/feed_maps.h"
#include "lib/parse.h"
#include "lib/feedparse.h"
#include "lib/claim.h"
#include "lib/forward.h"
#include "lib/hist.h"

#ifndef TP_HB_DEDUP_NS
#error "TP_HB_DEDUP_NS (a heartbeat this soon after a forwarded one is its copy) must be defined by the loader"
#endif

/* tp_feed_state.hb_last: when the last heartbeat was forwarded, in 4096-ns
 * units (36 bits, compared modulo 2^36: 78 hours), with a flag so that 0
 * means none since the session began. */
#define TP_HB_TIME_SHIFT    12
#define TP_HB_TIME_MASK     ((1ULL << 36) - 1)
#define TP_HB_FORWARDED     (1ULL << 63)

#define TP_CAND_VERSION     (1ULL << TP_CAND_VERSION_SHIFT)

enum { TP_CLEAR_NONE = 0, TP_CLEAR_GEN, TP_CLEAR_SWEEP };
enum { TP_SWITCH_SESSION = 1, TP_SWITCH_RESYNC };

struct tp_arb_ctx {
	struct ethhdr *eth;
	struct iphdr *ip;
	struct tp_feed_state *st;
	struct tp_feed_claims *cl;
	struct tp_line_stats *ls;
	struct tp_feed *feed;
	__u64 now;
	__u64 gen;                  /* the session seqlock value this packet works under (even) */
	__u64 gtag;                 /* its generation tag */
	__u64 sweep_floor;          /* TP_CLEAR_SWEEP: claim words of blocks below this are emptied */
	__u32 clear;                /* TP_CLEAR_*: claim words tp_arb_clear empties */
	__u32 rerun;                /* run the packet again from the start (after the clear) */
	__u32 id;                   /* the feed's */
	__u32 line;
};

/* The packet goes on to the feed's receiver. */
static __always_inline int tp_to_receiver(struct tp_arb_ctx *a)
{
	return tp_forward(a->eth, a->ip, a->feed->src_mac, a->feed->dst_mac, a->feed->ifindex);
}

/* A packet of the current session on this line: it withdraws the line's
 * evidence for a candidate (or, an end of session, gives its end) and
 * restarts the count. Writes only when something changes. */
static __always_inline void tp_seen_current(struct tp_arb_ctx *a, __u64 meta, int end)
{
	__u64 lbit = 1ULL << (a->line & 1);
	__u64 ended = lbit << TP_CAND_ENDED_SHIFT;
	__u64 mask = TP_CAND_COUNT | ended | (end ? 0 : lbit << TP_CAND_LINES_SHIFT);
	__u64 want = end ? ended : 0;

	for (int r = 0; r < TP_CAS_RETRIES; r++) {
		if ((meta & mask) == want || (meta & TP_CAND_LOCK))
			return;
		__u64 seen = __sync_val_compare_and_swap(&a->st->cand_meta, meta, (meta & ~mask) | want);
		if (seen == meta)
			return;
		meta = seen;
	}
}

/* A packet of another session: records it as evidence. Returns whether the
 * feed should now switch to it. The candidate's name is written under a lock
 * bit and a version in cand_meta, and every update is a CAS from the meta
 * read before the name was compared, so a name is never half-matched. */
static __always_inline int tp_candidate(struct tp_arb_ctx *a, struct tp_feed_packet *pkt, __u64 meta)
{
	struct tp_feed_state *st = a->st;
	__u64 lbit = 1ULL << (a->line & 1), seen = lbit << TP_CAND_LINES_SHIFT, told = lbit << TP_CAND_TOLD_SHIFT;
	__u64 new;

	if (meta & TP_CAND_LOCK)
		return 0;
	if (*(volatile __u64 *)&st->cand[0] == pkt->session[0] &&
	    *(volatile __u64 *)&st->cand[1] == pkt->session[1]) {
		__u64 count = meta & TP_CAND_COUNT;
		new = (meta & ~(__u64)TP_CAND_COUNT) | seen | told | (count < TP_CAND_COUNT ? count + 1 : count);
		if (__sync_val_compare_and_swap(&st->cand_meta, meta, new) != meta)
			return 0;
		if (meta & told)
			goto judge; /* one event per line and candidate, however often it comes */
	} else {
		__u64 locked = ((meta & ~(TP_CAND_VERSION - 1)) + TP_CAND_VERSION) |
			       (meta & (3ULL << TP_CAND_ENDED_SHIFT)) | TP_CAND_LOCK;
		if (__sync_val_compare_and_swap(&st->cand_meta, meta, locked) != meta)
			return 0;
		*(volatile __u64 *)&st->cand[0] = pkt->session[0];
		*(volatile __u64 *)&st->cand[1] = pkt->session[1];
		new = (locked & ~(__u64)TP_CAND_LOCK) | seen | told | 1;
		if (__sync_val_compare_and_swap(&st->cand_meta, locked, new) != locked)
			return 0; /* a switch reset the record meanwhile */
	}
	tp_arb_event_s(a->ls, a->now, a->id, a->line, TP_ARB_CANDIDATE, pkt->seq, pkt->seq,
		       pkt->session[0], pkt->session[1]);
judge:;
	__u64 said = ((new >> TP_CAND_LINES_SHIFT) | (new >> TP_CAND_ENDED_SHIFT)) & 3;
	if (said == 3)
		return 1;
	/* The count never takes the feed back to the session it left (rule 1).
	 * A read torn by a switch only drops: tp_switch's CAS on gen fails. */
	return (new & TP_CAND_COUNT) >= TP_ARB_CONFIRM &&
	       !(*(volatile __u64 *)&st->prev_session[0] == pkt->session[0] &&
		 *(volatile __u64 *)&st->prev_session[1] == (pkt->session[1] | TP_PREV_SESSION));
}

/* Starts generation a->gen + 2: for a new session (its name, sequences from
 * the start) or a resync to sequence x (same session; next_seq = x, a gap
 * below it reported, line marks at most x, every claim void). Returns 0 if another CPU switched
 * first. The seqlock: gen is odd while the words change, and the closing CAS
 * is the barrier that publishes them. Then the packet runs again. */
static __always_inline int tp_switch(struct tp_arb_ctx *a, struct tp_feed_packet *pkt, int why, __u64 x)
{
	struct tp_feed_state *st = a->st;
	__u64 gen = a->gen, t = tp_gtag(gen + 2), n;

	if (__sync_val_compare_and_swap(&st->gen, gen, gen + 1) != gen)
		return 0;
	if (why == TP_SWITCH_SESSION) {
		if (gen) { /* the feed's first session replaces none */
			st->prev_session[0] = st->session[0];
			st->prev_session[1] = st->session[1] | TP_PREV_SESSION;
		}
		st->session[0] = pkt->session[0];
		st->session[1] = pkt->session[1];
		n = gen ? 1 : 0;
		st->line_next_seq[0] = tp_tagged(t, 0);
		st->line_next_seq[1] = tp_tagged(t, 0);
		st->end_seq = tp_tagged(t, 0);
		st->hb_last = 0;
		st->cand_meta = (*(volatile __u64 *)&st->cand_meta & ~(TP_CAND_VERSION - 1)) + TP_CAND_VERSION;
	} else {
		__u64 m0 = st->line_next_seq[0] & TP_SEQ_MASK, m1 = st->line_next_seq[1] & TP_SEQ_MASK;
		n = *(volatile __u64 *)&st->next_seq & TP_SEQ_MASK;
		if (x > n)
			tp_arb_event(a->ls, a->now, a->id, a->line, TP_ARB_GAP, n, x - 1);
		n = x;
		st->line_next_seq[0] = tp_tagged(t, m0 < x ? m0 : x);
		st->line_next_seq[1] = tp_tagged(t, m1 < x ? m1 : x);
		st->end_seq = tp_tagged(t, st->end_seq & TP_SEQ_MASK);
	}
	st->next_seq = tp_tagged(t, n);
	st->swept_seq = tp_tagged(t, n);
	st->far_seq[0] = 0;
	st->far_seq[1] = 0;
	*(volatile __u64 *)st->far_count = 0;
	__sync_val_compare_and_swap(&st->gen, gen + 1, gen + 2);
	a->gtag = t;
	a->clear = TP_CLEAR_GEN;
	a->rerun = 1;
	return 1;
}

static __always_inline int tp_near(__u64 x, __u64 y)
{
	return (x > y ? x - y : y - x) <= TP_ARB_FAR;
}

/* Sequence x lies more than TP_ARB_FAR beyond next_seq n, or more than
 * TP_ARB_BEHIND below it: not believed from one packet. Records it for line
 * l; returns whether it is believed now. */
static __always_inline int tp_far(struct tp_arb_ctx *a, __u64 x, __u64 n)
{
	struct tp_feed_state *st = a->st;
	__u32 l = a->line & 1, o = l ^ 1;
	__u64 mine = *(volatile __u64 *)&st->far_seq[l], other = *(volatile __u64 *)&st->far_seq[o];
	__u32 count = st->far_count[l];

	int region = (mine >> TP_ARB_SEQ_BITS) == a->gtag && tp_near(x, mine & TP_SEQ_MASK);

	if (!count || !region)
		count = 0;
	if (count < TP_ARB_CONFIRM)
		count += 1;
	st->far_seq[l] = tp_tagged(a->gtag, x);
	st->far_count[l] = count;
	if (!region) /* one event per line and far region, however often it comes */
		tp_arb_event(a->ls, a->now, a->id, a->line, x > n ? TP_ARB_FAR_AHEAD : TP_ARB_FAR_BEHIND, x, n);
	if (count < TP_ARB_CONFIRM &&
	    !(st->far_count[o] && (other >> TP_ARB_SEQ_BITS) == a->gtag && tp_near(x, other & TP_SEQ_MASK)))
		return 0;
	*(volatile __u64 *)st->far_count = 0;
	tp_arb_event(a->ls, a->now, a->id, a->line, TP_ARB_RESYNC, n, x);
	return 1;
}

/* A believed far sequence x: next_seq moves to x (a gap below it is
 * reported), in a new generation if x is behind or the jump is
 * TP_ARB_NEWGEN or more, and the packet runs again, now in range. */
static __always_inline int tp_resync(struct tp_arb_ctx *a, struct tp_feed_packet *pkt, __u64 x, __u64 n)
{
	int advanced = 0;
	__u64 old;

	if (x < n || x - n >= TP_ARB_NEWGEN)
		return tp_switch(a, pkt, TP_SWITCH_RESYNC, x);
	old = tp_advance(&a->st->next_seq, a->gtag, x, &advanced);
	if (advanced && old && x > old)
		tp_arb_event(a->ls, a->now, a->id, a->line, TP_ARB_GAP, old, x - 1);
	a->rerun = 1;
	return 1;
}

/* Once next_seq (n) is TP_ARB_SWEEP past the last sweep, one CPU empties the
 * claim words that fell more than TP_ARB_BEHIND behind it (lib/claim.h),
 * and its packet runs again. Decided before the claim, so that the claim
 * path stays one path for the verifier. */
static __always_inline int tp_sweep_due(struct tp_arb_ctx *a, __u64 n)
{
	__u64 sw = *(volatile __u64 *)&a->st->swept_seq;

	if ((sw >> TP_ARB_SEQ_BITS) != a->gtag || n - (sw & TP_SEQ_MASK) < TP_ARB_SWEEP ||
	    __sync_val_compare_and_swap(&a->st->swept_seq, sw, tp_tagged(a->gtag, n)) != sw)
		return 0;
	a->clear = TP_CLEAR_SWEEP;
	a->sweep_floor = (n - TP_ARB_BEHIND) >> 5;
	a->rerun = 1;
	return 1;
}

/* Heartbeat or end of session: `next` is the next sequence the exchange will
 * send. It delivers nothing, but reveals a gap below it; one copy goes on. */
static __always_inline int tp_announce(struct tp_arb_ctx *a, int end, __u64 next, __u64 n)
{
	struct tp_feed_state *st = a->st;
	int advanced = 0;
	__u64 old;

	if (n) {
		tp_raise(&st->line_next_seq[a->line & 1], a->gtag, next);
		old = tp_advance(&st->next_seq, a->gtag, next, &advanced);
		if (advanced && old && next > old)
			tp_arb_event(a->ls, a->now, a->id, a->line, TP_ARB_GAP, old, next - 1);
	}
	if (end) {
		__u64 want = tp_tagged(a->gtag, next + 1), cur = *(volatile __u64 *)&st->end_seq;
		if (cur == want || tp_newer(cur >> TP_ARB_SEQ_BITS, a->gtag) ||
		    __sync_val_compare_and_swap(&st->end_seq, cur, want) != cur)
			return XDP_DROP;
	} else {
		/* A heartbeat naming less than the feed has already reached is
		 * behind it: the trader has heard more from the other line or
		 * from data. This drops the late copy of a heartbeat whose lines
		 * drift apart by more than the dedup window while data flows. */
		if (next < n)
			return XDP_DROP;
		/* One heartbeat per dedup window, whatever it announces: each
		 * line names the next sequence *it* will carry, so after a loss
		 * the two copies of one heartbeat can differ. The arbiter's own
		 * gap accounting above has seen both. */
		__u64 hb = *(volatile __u64 *)&st->hb_last;
		__u64 t = (a->now >> TP_HB_TIME_SHIFT) & TP_HB_TIME_MASK;
		if (hb && ((t - hb) & TP_HB_TIME_MASK) < (TP_HB_DEDUP_NS >> TP_HB_TIME_SHIFT))
			return XDP_DROP;
		if (__sync_val_compare_and_swap(&st->hb_last, hb, t | TP_HB_FORWARDED) != hb)
			return XDP_DROP;
	}
	a->ls->heartbeats_forwarded += 1;
	return tp_to_receiver(a);
}

static __always_inline int tp_data(struct tp_arb_ctx *a, __u64 s, __u64 e)
{
	struct tp_feed_state *st = a->st;
	struct tp_line_stats *ls = a->ls;
	struct tp_claim c = {};
	int advanced = 0;
	__u64 old;

	tp_raise(&st->line_next_seq[a->line & 1], a->gtag, e);
	if (!tp_copy_seen(a->cl, a->gtag, s, e))
		tp_claim_range(a->cl, a->gtag, s, e, &c);
	if (!c.first_new) {
		__s64 lag = tp_lag(a->cl, s, a->line, a->now);
		/* branch-free: a branch on a known 0/1 makes the verifier keep
		 * the claim path's variants apart, and it has many */
		ls->stale += c.stale;
		ls->lost += 1 - c.stale;
		if (lag >= 0)
			ls->lag_hist[tp_us_bucket(lag) & (TP_HIST_BUCKETS - 1)] += 1;
		return XDP_DROP;
	}
	/* The claim's CAS is a full barrier: a switch that began before it shows
	 * here, and then the claim was made in a generation that is void. */
	if (*(volatile __u64 *)&st->gen != a->gen) {
		ls->stale += 1;
		return XDP_DROP;
	}
	tp_stamp(a->cl, c.first_new, a->line, a->now);
	old = tp_advance(&st->next_seq, a->gtag, e, &advanced);
	if (advanced && old && s > old)
		tp_arb_event(ls, a->now, a->id, a->line, TP_ARB_GAP, old, s - 1);
	if (c.first_new < old) {
		ls->fills += 1;
		tp_arb_event(ls, a->now, a->id, a->line, TP_ARB_FILL, c.first_new, (e < old ? e : old) - 1);
	}
	ls->won += 1;
	ls->overlap += c.partial;
	return tp_to_receiver(a);
}

/* Rules 1 and 2 of the comment at the top, then 3 or 4. A switch or a
 * believed far-ahead sequence sets a->rerun: the packet then runs again from
 * the start (by tail call), so the claim path below is reached one way only. */
static __always_inline int tp_judge(struct tp_arb_ctx *a, struct tp_feed_packet *pkt, int kind)
{
	struct tp_feed_state *st = a->st;
	__u64 gen = *(volatile __u64 *)&st->gen;
	__u64 s0 = *(volatile __u64 *)&st->session[0];
	__u64 s1 = *(volatile __u64 *)&st->session[1];
	__u64 meta = *(volatile __u64 *)&st->cand_meta;

	if ((gen & 1) || *(volatile __u64 *)&st->gen != gen) {
		a->ls->stale += 1; /* a switch is under way */
		return XDP_DROP;
	}
	a->gen = gen;
	a->gtag = tp_gtag(gen);
	if (!gen || s0 != pkt->session[0] || s1 != pkt->session[1]) {
		if ((gen && !tp_candidate(a, pkt, meta)) || !tp_switch(a, pkt, TP_SWITCH_SESSION, 0)) {
			a->ls->unconfirmed += 1;
			return XDP_DROP;
		}
		if (a->feed->proto == TP_PROTO_MOLDUDP64)
			tp_arb_event_s(a->ls, a->now, a->id, a->line, TP_ARB_SESSION, pkt->seq, pkt->seq,
				       pkt->session[0], pkt->session[1]);
		return XDP_DROP;
	}
	tp_seen_current(a, meta, kind == TP_FEED_END);

	__u64 n = *(volatile __u64 *)&st->next_seq, x = pkt->seq;
	if ((n >> TP_ARB_SEQ_BITS) != a->gtag) {
		a->ls->stale += 1; /* switched after this packet read the generation */
		return XDP_DROP;
	}
	n &= TP_SEQ_MASK;
	if (n && (x > n + TP_ARB_FAR || x + TP_ARB_BEHIND < n)) {
		if (!tp_far(a, x, n)) {
			if (x > n)
				a->ls->far_ahead += 1;
			else
				a->ls->stale += 1;
			return XDP_DROP;
		}
		if (!tp_resync(a, pkt, x, n))
			a->ls->stale += 1;
		return XDP_DROP;
	}
	if (*(volatile __u64 *)st->far_count)
		*(volatile __u64 *)st->far_count = 0;
	if (tp_sweep_due(a, n))
		return XDP_DROP;
	if (kind == TP_FEED_DATA)
		return tp_data(a, x, x + pkt->count);
	return tp_announce(a, kind == TP_FEED_END, x, n);
}

/* A packet about to run again is counted by its second run: take back
 * the first run's counts (sign -1), or restore them (+1) if it cannot. */
static __always_inline void tp_recount(struct tp_arb_ctx *a, int kind, int owd_b, __s64 sign)
{
	a->ls->packets += sign;
	if (kind != TP_FEED_DATA)
		a->ls->heartbeats += sign;
	if (owd_b >= 0)
		a->ls->owd_hist[owd_b & (TP_HIST_BUCKETS - 1)] += sign;
}

/* The rare paths' second half (see tp_arb_progs): hand the job to
 * tp_arb_clear, or run the packet again at once. */
static __always_inline int tp_hand_over(struct xdp_md *ctx, struct tp_arb_ctx *a, int verdict, int kind, int owd_b)
{
	__u32 zero = 0;
	struct tp_arb_job *job;

	if (a->rerun) {
		verdict = XDP_DROP;
		tp_recount(a, kind, owd_b, -1);
	}
	if (a->clear && (job = tp_arb_job.lookup(&zero))) {
		job->gtag = a->gtag;
		job->floor_block = a->sweep_floor;
		job->feed = a->id;
		job->line = a->line;
		job->clear = a->clear;
		job->rerun = a->rerun;
		job->verdict = verdict;
		tp_arb_progs.call(ctx, TP_ARB_CLEAR_PROG);
	} else if (a->rerun) {
		tp_arb_progs.call(ctx, a->line & 1);
	}
	if (a->rerun) { /* no program to run it again: the loader did not fill tp_arb_progs */
		tp_recount(a, kind, owd_b, 1);
		a->ls->stale += 1;
	}
	return verdict;
}

static __always_inline int tp_arbitrate(struct xdp_md *ctx, const __u32 line)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct tp_arb_ctx a = {.eth = data, .line = line};
	struct iphdr *ip;

	switch (tp_ipv4(data, end, end - data, &ip)) {
	case TP_IP_OK:
		break;
	case TP_IP_NOT_IPV4:
		tp_arb_count(line, TP_ARB_STAT_NOT_IPV4);
		return XDP_PASS;
	case TP_IP_OPTIONS:
		tp_arb_count(line, TP_ARB_STAT_IP_OPTIONS);
		return XDP_PASS;
	default:
		/* Never claim a sequence with a header the trader's kernel would
		 * drop: the genuine copies would be dropped here as duplicates. */
		tp_arb_count(line, TP_ARB_STAT_TRUNCATED);
		return XDP_PASS;
	}
	a.ip = ip;
	if (ip->protocol != IPPROTO_UDP) {
		tp_arb_count(line, TP_ARB_STAT_NOT_FEED);
		return XDP_PASS;
	}
	if (tp_ip_fragment(ip)) {
		tp_arb_count(line, TP_ARB_STAT_FRAGMENT);
		return XDP_PASS;
	}
	__u32 ihl = sizeof(*ip);
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end) {
		tp_arb_count(line, TP_ARB_STAT_TRUNCATED);
		return XDP_PASS;
	}
	struct tp_feed *feed = tp_feed_of(ip->daddr, udp->dest);
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
	if (kind != TP_FEED_DATA)
		a.ls->heartbeats += 1;
	a.st->line_last_ns[line] = a.now;
	__u32 zero = 0; /* tp_arb_config only for MDP3's SendingTime */
	struct tp_arb_config *cfg = pkt.sending_time ? tp_arb_config.lookup(&zero) : NULL;
	int owd_b = -1;
	if (cfg) {
		__s64 owd = (__s64)(a.now + cfg->mono_to_real_ns - pkt.sending_time);
		if (owd >= 0) {
			owd_b = tp_us_bucket(owd) & (TP_HIST_BUCKETS - 1);
			a.ls->owd_hist[owd_b] += 1;
		}
	}
	int verdict = tp_judge(&a, &pkt, kind);
	if (a.clear || a.rerun)
		return tp_hand_over(ctx, &a, verdict, kind, owd_b);
	return verdict;
}

/* tp_arb_progs[TP_ARB_CLEAR_PROG]: empties the claim words the job names
 * (lib/claim.h), then runs the packet again or returns its verdict (a
 * redirect chosen by the line program stands: tail calls keep it). */
int tp_arb_clear(struct xdp_md *ctx)
{
	__u32 zero = 0, feed;
	struct tp_arb_job *job = tp_arb_job.lookup(&zero);
	struct tp_feed_claims *cl;

	if (!job)
		return XDP_DROP;
	feed = job->feed;
	cl = tp_feed_claims.lookup(&feed);
	if (cl)
		tp_clear_claims(cl, job->gtag, job->floor_block, job->clear == TP_CLEAR_SWEEP);
	if (job->rerun) {
		tp_arb_progs.call(ctx, job->line & 1);
		return XDP_DROP;
	}
	return job->verdict;
}

int tp_arb_line_a(struct xdp_md *ctx)
{
	return tp_arbitrate(ctx, 0);
}

int tp_arb_line_b(struct xdp_md *ctx)
{
	return tp_arbitrate(ctx, 1);
}
