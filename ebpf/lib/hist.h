/* The log-scale microsecond histogram every latency map uses (heartbeat RTT,
 * arbitration lead/lag, market-data one-way latency). */
#ifndef TP_HIST_H
#define TP_HIST_H

#include "lib/layout.h"

/* 4 sub-buckets per power of two of microseconds, so 1 us resolution below
 * 8 us and at most 25% relative width above; the last bucket collects
 * everything from 114.7 ms up. appliance/layout.py decodes it. */
static __always_inline __u32 tp_us_bucket(__u64 ns)
{
	__u64 us;
	__u32 lg, b;

	/* Every ns from 2^27 (134 ms) up is past the last bucket's start. Below,
	 * a multiply and shift is ns / 1000 exactly (ceil(2^37 / 1000) * 1000
	 * exceeds 2^37 by 528 < 2^(37 - 27)) and spares the per-packet 64-bit
	 * divide the JIT would emit. */
	if (ns >= 1ULL << 27)
		return TP_HIST_BUCKETS - 1;
	us = (ns * 137438954ULL) >> 37;
	if (us < 4)
		return us;
	lg = bpf_log2l(us) - 1; /* BCC's bpf_log2l() is floor(log2) + 1 */
	b = 4 * (lg - 1) + ((us >> (lg - 2)) & 3);
	return b < TP_HIST_BUCKETS ? b : TP_HIST_BUCKETS - 1;
}

#endif
