/* Exactly-once delivery across both lines and every CPU.
 *
 * A packet is forwarded iff it sets at least one sequence's bit in the feed's
 * claim words, and each bit is set by one compare-and-exchange: so no sequence
 * is ever delivered by two packets that carry nothing else, and none is lost
 * to a race. A packet spanning several words is claimed by one copy only
 * (tp_copy_seen), so two copies never split its words between them.
 * next_seq only tells where gaps are; it never decides delivery.
 *
 * A claim word's tag is gtag:8 | block:24 and, in effect, compares the full
 * block number. Blocks: arbitrate.c claims only sequences within
 * [next_seq - TP_ARB_BEHIND, next_seq + TP_ARB_FAR] (+ one packet's 128),
 * next_seq only grows within a generation (by at most TP_ARB_FAR + 128 per
 * packet, or a believed jump below TP_ARB_NEWGEN), and once it is
 * TP_ARB_SWEEP past the last sweep, tp_clear_claims() empties the words
 * whose block fell more than TP_ARB_BEHIND below it before anything else is
 * claimed. So the blocks of the current generation's words and of any packet
 * that claims lie within (TP_ARB_BEHIND + TP_ARB_SWEEP + TP_ARB_NEWGEN +
 * 2 * TP_ARB_FAR) / 32 < 2^22 blocks of each other, inside the 2^23 that the
 * serial 24-bit comparison decides exactly. A jump down, or up by
 * TP_ARB_NEWGEN or more, starts a new generation instead. Generations: the
 * CPU that starts one empties every word of another generation, so words hold
 * only the current generation or (a CPU that raced the switch) the one just
 * before it, and the serial 8-bit comparison of gtags is exact.
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
#define TP_SEQ_MASK         ((1ULL << TP_ARB_SEQ_BITS) - 1)
#define TP_COPY_SEQ_MASK    ((1ULL << 48) - 1)

/* The generation tag of seqlock value gen (even), as claim words and the
 * per-session words of tp_feed_state carry it. */
static __always_inline __u64 tp_gtag(__u64 gen)
{
	return (gen >> 1) & 0xff;
}

static __always_inline __u64 tp_tagged(__u64 gtag, __u64 seq)
{
	return gtag << TP_ARB_SEQ_BITS | seq;
}

/* Whether tag a is newer than tag b (serially: only adjacent ones ever meet). */
static __always_inline int tp_newer(__u64 a, __u64 b)
{
	return (__s8)(a - b) > 0;
}

struct tp_claim {
	__u64 first_new;            /* lowest sequence this packet delivered; 0: none */
	__u32 partial;              /* it also carried sequences delivered before */
	__u32 stale;                /* some were older than the claim window */
};

/* Sets `mask` in the word for `block`; returns the bits this call set. */
static __always_inline __u32 tp_claim_word(__u64 *slot, __u64 gtag, __u64 block, __u32 mask,
					   struct tp_claim *c)
{
	__u64 tag = ((gtag & 0xff) << 24) | (block & 0xffffff);

	for (int r = 0; r < TP_CAS_RETRIES; r++) {
		__u64 old = *(volatile __u64 *)slot, new;
		__u64 old_tag = old >> 32;
		__u32 old_bits = (__u32)old, got;

		if (old_tag == tag) {
			got = mask & ~old_bits;
			if (!got)
				return 0;
			new = old | mask;
		} else if (!old_bits || (__s8)(gtag - (old_tag >> 24)) > 0 ||
			   ((old_tag >> 24) == (gtag & 0xff) && (__s32)((__u32)(block - old_tag) << 8) > 0)) {
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

/* Claims sequences [s, e) (at most TP_ARB_MAX_MSGS) in generation tag gtag. */
static __always_inline void tp_claim_range(struct tp_feed_claims *cl, __u64 gtag, __u64 s, __u64 e,
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
		__u32 got = tp_claim_word(&cl->claims[block & (TP_ARB_SLOTS - 1)], gtag, block, mask, c);
		if (got != mask)
			c->partial = 1;
		if (got && !c->first_new)
			c->first_new = (block << 5) + bpf_log2l(got & -got) - 1; /* lowest bit; log2l is floor+1 */
	}
}

/* A packet whose sequences span claim words takes them one CAS at a time:
 * two copies of it on two CPUs could each win a word, and both would be
 * forwarded. So before its claim such a packet records (gtag, s, count) in
 * copies[] and a copy that finds that record there is dropped unclaimed:
 * the packet that wrote it claims everything both carry. Returns whether
 * this packet is such a copy. A record overwritten meanwhile by a packet of
 * other batching (both lines batching differently) only protects less:
 * the claim then decides as before. */
static __always_inline int tp_copy_seen(struct tp_feed_claims *cl, __u64 gtag, __u64 s, __u64 e)
{
	__u64 *slot = &cl->copies[(s >> 5) & (TP_ARB_COPIES - 1)];
	__u64 mine = 1ULL << 63 | (gtag & 0xff) << 55 | ((e - s - 1) & 0x7f) << 48 | (s & TP_COPY_SEQ_MASK);

	if ((s >> 5) == ((e - 1) >> 5))
		return 0; /* one word: its CAS alone decides */
	for (int r = 0; r < TP_CAS_RETRIES; r++) {
		__u64 old = *(volatile __u64 *)slot;
		if (old == mine)
			return 1;
		if (__sync_val_compare_and_swap(slot, old, mine) == old)
			return 0;
	}
	return 0;
}

/* Raises the tagged word *next to e within generation tag gtag. Returns its
 * sequence just before; *advanced if this call raised it, so exactly one
 * packet reports each gap below a new high mark. A word of another generation
 * is left alone (the session switched under this packet): returns 0. */
static __always_inline __u64 tp_advance(__u64 *next, __u64 gtag, __u64 e, int *advanced)
{
	__u64 old = 0;

	for (int r = 0; r < TP_CAS_RETRIES; r++) {
		old = *(volatile __u64 *)next;
		if ((old >> TP_ARB_SEQ_BITS) != gtag)
			return 0;
		old &= TP_SEQ_MASK;
		if (e <= old)
			return old;
		if (__sync_val_compare_and_swap(next, tp_tagged(gtag, old), tp_tagged(gtag, e)) ==
		    tp_tagged(gtag, old)) {
			*advanced = 1;
			return old;
		}
	}
	return old;
}

/* Raises a line's tagged high mark (a plain store: it only informs). */
static __always_inline void tp_raise(__u64 *mark, __u64 gtag, __u64 e)
{
	__u64 v = *(volatile __u64 *)mark, t = v >> TP_ARB_SEQ_BITS;

	if (t == gtag ? (v & TP_SEQ_MASK) < e : tp_newer(gtag, t))
		*(volatile __u64 *)mark = tp_tagged(gtag, e);
}

/* Empties the claim words that could alias under generation tag gtag: every
 * word of another generation and, for a sweep, every word of this one whose
 * block is older than floor_block (serially). One CAS each: a word that
 * changed meanwhile was just claimed, so it is current. The caller guarantees
 * one call site per program (the verifier walks the loop per call site). */
static __always_inline void tp_clear_claims(struct tp_feed_claims *cl, __u64 gtag, __u64 floor_block, int sweep)
{
	for (__u32 i = 0; i < TP_ARB_SLOTS; i++) {
		__u64 v = *(volatile __u64 *)&cl->claims[i & (TP_ARB_SLOTS - 1)];
		__u32 tag = v >> 32;

		if (!v)
			continue;
		if ((tag >> 24) == (gtag & 0xff) &&
		    (!sweep || (__s32)((__u32)(tag - floor_block) << 8) >= 0))
			continue;
		__sync_val_compare_and_swap(&cl->claims[i & (TP_ARB_SLOTS - 1)], v, 0);
	}
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
