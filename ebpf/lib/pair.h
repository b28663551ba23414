/* The HA pair's gate on the steer path: a standby gateway drops class
 * traffic (orders) rather than forward it, so a trader whose neighbour cache
 * still names it, or that it answers by mistake, never gets orders through
 * two gateways at once. Traffic no rule matches keeps kernel routing. */
#ifndef TP_PAIR_H
#define TP_PAIR_H

#include "lib/maps.h"

static __always_inline struct tp_pair *tp_pair_standby(void)
{
	__u32 zero = 0;
	struct tp_pair *p = tp_pair.lookup(&zero);

	return p && p->mode == TP_PAIR_STANDBY ? p : NULL;
}

/* Whether to drop it, counted in tp_pair.fenced. */
static __always_inline int tp_pair_fenced(void)
{
	struct tp_pair *p = tp_pair_standby();

	if (!p)
		return 0;
	__sync_fetch_and_add(&p->fenced, 1);
	return 1;
}

#endif
