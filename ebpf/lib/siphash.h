/* SipHash-2-4 (Aumasson & Bernstein) of a 32-byte message given as four
 * little-endian words: the heartbeat MAC. BPF has no helper for it; this is
 * 14 SipRounds of add/rotate/xor, about 200 ALU instructions, paid only by
 * heartbeat probes and replies. */
#ifndef TP_SIPHASH_H
#define TP_SIPHASH_H

#define TP_ROTL64(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define TP_SIPROUND(v0, v1, v2, v3) do {                                      \
	v0 += v1; v1 = TP_ROTL64(v1, 13); v1 ^= v0; v0 = TP_ROTL64(v0, 32);   \
	v2 += v3; v3 = TP_ROTL64(v3, 16); v3 ^= v2;                           \
	v0 += v3; v3 = TP_ROTL64(v3, 21); v3 ^= v0;                           \
	v2 += v1; v1 = TP_ROTL64(v1, 17); v1 ^= v2; v2 = TP_ROTL64(v2, 32);   \
} while (0)
#define TP_SIP_BLOCK(v0, v1, v2, v3, m) do {                                  \
	v3 ^= (m);                                                            \
	TP_SIPROUND(v0, v1, v2, v3);                                          \
	TP_SIPROUND(v0, v1, v2, v3);                                          \
	v0 ^= (m);                                                            \
} while (0)

static __always_inline __u64 tp_siphash32(__u64 k0, __u64 k1, __u64 m0, __u64 m1, __u64 m2, __u64 m3)
{
	__u64 v0 = k0 ^ 0x736f6d6570736575ULL;
	__u64 v1 = k1 ^ 0x646f72616e646f6dULL;
	__u64 v2 = k0 ^ 0x6c7967656e657261ULL;
	__u64 v3 = k1 ^ 0x7465646279746573ULL;

	TP_SIP_BLOCK(v0, v1, v2, v3, m0);
	TP_SIP_BLOCK(v0, v1, v2, v3, m1);
	TP_SIP_BLOCK(v0, v1, v2, v3, m2);
	TP_SIP_BLOCK(v0, v1, v2, v3, m3);
	TP_SIP_BLOCK(v0, v1, v2, v3, 32ULL << 56);  /* final block: the length, no tail bytes */
	v2 ^= 0xff;
	TP_SIPROUND(v0, v1, v2, v3);
	TP_SIPROUND(v0, v1, v2, v3);
	TP_SIPROUND(v0, v1, v2, v3);
	TP_SIPROUND(v0, v1, v2, v3);
	return v0 ^ v1 ^ v2 ^ v3;
}

#endif
