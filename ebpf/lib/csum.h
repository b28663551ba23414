/* Incremental Internet checksum updates (RFC 1624) for direct packet writes,
 * so the hot path needs no csum helper call. */
#ifndef TP_CSUM_H
#define TP_CSUM_H

static __always_inline __u16 tp_csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/* A sum of 32-bit words folded to 16 bits: 0xffff when the words carry a
 * valid Internet checksum (RFC 1071; byte order does not matter for that). */
static __always_inline __u16 tp_csum_fold64(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)((s & 0xffff) + (s >> 16));
}

/* HC' = ~(~HC + ~m + m') for one 16-bit word m -> m'. */
static __always_inline void tp_csum_replace2(__u16 *check, __u16 old, __u16 new)
{
	__u32 s = (__u16)~*check;
	s += (__u16)~old;
	s += new;
	*check = ~tp_csum_fold(s);
}

/* The same for an 8-byte field, as four 16-bit words in memory order. */
static __always_inline void tp_csum_replace8(__u16 *check, __u64 old, __u64 new)
{
	__u32 s = (__u16)~*check;
	#pragma unroll
	for (int i = 0; i < 4; i++) {
		s += (__u16)~(__u16)(old >> (16 * i));
		s += (__u16)(new >> (16 * i));
	}
	*check = ~tp_csum_fold(s);
}

#endif
