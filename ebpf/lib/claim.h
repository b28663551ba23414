/* Exactly-once delivery across both lines and every CPU.
 *
 * A packet is forwarded iff it sets at least one sequence's bit in the feed's
 * claim words, and each bit is set by one compare-and-exchange: so no sequence
 * is ever delivered by two packets that carry nothing else, and none is lost
 * to a race. next_seq only tells where gaps are; it never decides delivery.
 */
#ifndef TP_CLAIM_H
#define TP_CLAIM_H

#include "lib/layout.h"

/* A CAS fails only if another CPU changed the word since we read it. A feed
 * flow hashes to one queue per line, so at most one other CPU contends, and it
 * would need three packets inside one claim (tens of ns) to exhaust these.
 * Exhausted, the packet counts as stale and is dropped. (More retries push
 * the verifier past its complexity limit.) */
#define TP_CAS_RETRIES      3
#define TP_CLAIM_WORDS      ((TP_ARB_MAX_MSGS + 30) / 32 + 1) /* words a run of that many can touch */
#define TP_STAMP_NS_MASK    ((1ULL << 40) - 1)
#define TP_STAMP_SEQ_MASK   0x7fffffULL

struct tp_claim {
	__u64 first_new;            /* lowest sequence this packet delivered; 0: none */
	__u32 partial;              /* it also carried sequences delivered before */
	__u32 stale;                /* some were older than the claim window */
};

/* Sets `mask` in the word for `block`; returns the bits this call set. */
static __always_inline __u32 tp_claim_word(__u64 *slot, __u64 gen, __u64 block, __u32 mask,
					   struct tp_claim *c)
{
	__u64 tag = ((gen & 0xff) << 24) | (block & 0xffffff);

	for (int r = 0; r < TP_CAS_RETRIES; r++) {
		__u64 old = *(volatile __u64 *)slot, new;
		__u64 old_tag = old >> 32;
		__u32 old_bits = (__u32)old, got;

		if (old_tag == tag) {
			got = mask & ~old_bits;
			if (!got)
				return 0;
			new = old | mask;
		} else if (!old_bits || (__s8)(gen - (old_tag >> 24)) > 0 ||
			   ((old_tag >> 24) == (gen & 0xff) && (__s32)((__u32)(block - old_tag) << 8) > 0)) {
			/* empty, of an older generation, or an older block: recycle */
			got = mask;
			new = (tag << 32) | mask;
		} else {
			c->stale = 1;
			return 0;
		}
		if (__sync_val_compare_and_swap(slot, old, new) == old)
			return got;
	}
	c->stale = 1;
	return 0;
}

/* Claims sequences [s, e) (at most TP_ARB_MAX_MSGS) in generation gen. */
static __always_inline void tp_claim_range(struct tp_feed_claims *cl, __u64 gen, __u64 s, __u64 e,
					   struct tp_claim *c)
{
	__u64 first = s >> 5, last = (e - 1) >> 5;

	for (int w = 0; w < TP_CLAIM_WORDS; w++) {
		__u64 block = first + w;
		if (block > last)
			break;
		__u64 lo = block << 5 > s ? block << 5 : s;
		__u64 hi = (block + 1) << 5 < e ? (block + 1) << 5 : e;
		__u32 mask = (__u32)(((1ULL << ((hi - lo) & 63)) - 1) << (lo & 31));
		__u32 got = tp_claim_word(&cl->claims[block & (TP_ARB_SLOTS - 1)], gen, block, mask, c);
		if (got != mask)
			c->partial = 1;
		if (got && !c->first_new)
			c->first_new = (block << 5) + bpf_log2l(got & -got) - 1; /* lowest bit; log2l is floor+1 */
	}
}

/* Raises *next to e. Returns its value just before; *advanced if this call
 * raised it, so exactly one packet reports each gap below a new high mark. */
static __always_inline __u64 tp_advance(__u64 *next, __u64 e, int *advanced)
{
	__u64 old = 0;

	for (int r = 0; r < TP_CAS_RETRIES; r++) {
		old = *(volatile __u64 *)next;
		if (e <= old)
			return old;
		if (__sync_val_compare_and_swap(next, old, e) == old) {
			*advanced = 1;
			return old;
		}
	}
	return old;
}

static __always_inline void tp_stamp(struct tp_feed_claims *cl, __u64 seq, __u32 line, __u64 now)
{
	cl->stamps[seq & (TP_ARB_STAMPS - 1)] =
		(seq & TP_STAMP_SEQ_MASK) << 41 | (__u64)line << 40 | (now & TP_STAMP_NS_MASK);
}

/* How long after the peer's first copy of `seq` this duplicate came; -1 if
 * that copy left no stamp (overwritten, or different batching). */
static __always_inline __s64 tp_lag(struct tp_feed_claims *cl, __u64 seq, __u32 line, __u64 now)
{
	__u64 v = cl->stamps[seq & (TP_ARB_STAMPS - 1)];

	if ((v >> 41) != (seq & TP_STAMP_SEQ_MASK) || ((v >> 40) & 1) == line)
		return -1;
	return (now - v) & TP_STAMP_NS_MASK;
}

#endif
