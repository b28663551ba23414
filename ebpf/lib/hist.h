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
	__u64 us = ns / 1000;
	__u32 lg, b;

	if (us < 4)
		return us;
	lg = bpf_log2l(us) - 1; /* BCC's bpf_log2l() is floor(log2) + 1 */
	b = 4 * (lg - 1) + ((us >> (lg - 2)) & 3);
	return b < TP_HIST_BUCKETS ? b : TP_HIST_BUCKETS - 1;
}

#endif
