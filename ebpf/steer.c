/* TC ingress on the trader-facing interface: decides and counts every
 * packet (lib/steer.h), including those the XDP program passed on. */
#include <uapi/linux/bpf.h>
#include "lib/steer.h"

int tp_steer(struct __sk_buff *skb)
{
	return tp_steer_frame((void *)(long)skb->data, (void *)(long)skb->data_end, skb->len, 0);
}
