/* Locating a twinpath heartbeat probe inside an ICMP echo. */
#ifndef TP_PROBE_H
#define TP_PROBE_H

#include <linux/icmp.h>
#include "lib/layout.h"
#include "lib/parse.h"
#include "lib/hist.h"

#ifndef TP_PROBE_IDENT
#error "TP_PROBE_IDENT (ICMP echo identifier of our probes) must be defined by the loader"
#endif

/* The probe in an echo of `type` sent with our identifier, or NULL. */
static __always_inline struct tp_probe *tp_find_probe(void *data, void *end, __u8 type,
						      struct icmphdr **icmp_out)
{
	int is_ipv4;
	struct iphdr *ip = tp_plain_ipv4(data, end, &is_ipv4);
	struct icmphdr *icmp;
	struct tp_probe *probe;

	if (!ip || ip->protocol != IPPROTO_ICMP)
		return NULL;
	icmp = (void *)(ip + 1);
	probe = (void *)(icmp + 1);
	if ((void *)(probe + 1) > end || icmp->type != type || icmp->code != 0 ||
	    icmp->un.echo.id != bpf_htons(TP_PROBE_IDENT) || probe->magic != TP_PROBE_MAGIC)
		return NULL;
	*icmp_out = icmp;
	return probe;
}

#endif
