/* Sequence numbers out of MoldUDP64 and CME MDP 3.0 packet headers. */
#ifndef TP_FEEDPARSE_H
#define TP_FEEDPARSE_H

#include "lib/layout.h"

#define TP_MOLD_HEADER      20          /* session[10] seq:be64 count:be16 */
#define TP_MOLD_HEARTBEAT   0
#define TP_MOLD_END         0xffff
#define TP_MDP3_HEADER      12          /* MsgSeqNum:le32 SendingTime:le64 */
#define TP_MAX_PAYLOAD      9000        /* jumbo frame: bounds offsets for the verifier */

/* MDP3 is little-endian on the wire and read as is. */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "feedparse.h assumes a little-endian BPF target"
#endif

enum tp_feed_kind { TP_FEED_MALFORMED = 0, TP_FEED_DATA, TP_FEED_HEARTBEAT, TP_FEED_END };

#define TP_SEQ_LIMIT        (1ULL << TP_ARB_SEQ_BITS) /* every sequence a packet names is below this */

struct tp_feed_packet {
	__u64 session[2];           /* the session's 10 bytes, as tp_feed_state.session; 0 for MDP3 */
	__u64 seq;                  /* first sequence; for heartbeats and ends the next one */
	__u64 count;                /* sequences carried; 0 for heartbeats and ends */
	__u64 sending_time;         /* MDP3 SendingTime, ns since the epoch; 0 for MoldUDP64 */
};

/* The session is compared in full: all 10 bytes, as two words. */
static __always_inline void tp_mold_session(const __u8 *p, struct tp_feed_packet *out)
{
	__u16 tail;
	__builtin_memcpy(&out->session[0], p, 8);
	__builtin_memcpy(&tail, p + 8, 2);
	out->session[1] = tail;
}

/* MoldUDP64: every message block must lie inside the payload, so a truncated
 * copy never claims sequences it does not carry. */
static __always_inline int tp_parse_mold(__u8 *p, void *end, __u32 len, struct tp_feed_packet *out)
{
	__u64 seq_be;
	__u16 count_be;
	__u32 count;
	__u64 off = TP_MOLD_HEADER;

	if (len < TP_MOLD_HEADER || (void *)(p + TP_MOLD_HEADER) > end)
		return TP_FEED_MALFORMED;
	__builtin_memcpy(&seq_be, p + 10, 8);
	__builtin_memcpy(&count_be, p + 18, 2);
	tp_mold_session(p, out);
	out->seq = __builtin_bswap64(seq_be);
	count = bpf_ntohs(count_be);
	if (count == TP_MOLD_HEARTBEAT || count == TP_MOLD_END) {
		if (out->seq >= TP_SEQ_LIMIT)
			return TP_FEED_MALFORMED;
		return count == TP_MOLD_END ? TP_FEED_END : TP_FEED_HEARTBEAT;
	}
	if (count > TP_ARB_MAX_MSGS || out->seq == 0 || out->seq >= TP_SEQ_LIMIT - count)
		return TP_FEED_MALFORMED;
	for (__u32 i = 0; i < TP_ARB_MAX_MSGS; i++) {
		__u8 *block = p + off;
		if (i >= count)
			break;
		if ((void *)(block + 2) > end)
			return TP_FEED_MALFORMED;
		off += 2 + ((__u32)block[0] << 8 | block[1]);
		if (off > len)
			return TP_FEED_MALFORMED;
		/* off <= len < TP_MAX_PAYLOAD already, but the verifier needs
		 * a bound it can see, in asm so that clang cannot drop it */
		asm volatile("%[off] &= 0x3fff" : [off] "+r"(off));
	}
	/* Re-read the count: each loop exit knows it exactly, and carrying
	 * that on would make the verifier walk the rest once per exit. */
	count = bpf_ntohs(*(volatile __u16 *)(p + 18));
	if (count > TP_ARB_MAX_MSGS)
		return TP_FEED_MALFORMED;
	out->count = count;
	return TP_FEED_DATA;
}

static __always_inline int tp_parse_mdp3(__u8 *p, void *end, __u32 len, struct tp_feed_packet *out)
{
	__u32 seq;

	if (len < TP_MDP3_HEADER || (void *)(p + TP_MDP3_HEADER) > end)
		return TP_FEED_MALFORMED;
	__builtin_memcpy(&seq, p, 4);
	__builtin_memcpy(&out->sending_time, p + 4, 8);
	out->seq = seq;
	out->count = 1;
	return out->seq ? TP_FEED_DATA : TP_FEED_MALFORMED;
}

#endif
