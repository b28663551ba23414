/* XDP on the trader-facing interface: forwards what steer would forward to a
 * link that takes XDP redirects, before the kernel builds an skb; passes
 * everything else, untouched and uncounted, to the TC program (lib/steer.h). */
#include <uapi/linux/bpf.h>
#include "lib/steer.h"

int tp_steer_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;

	return tp_steer_frame(data, end, end - data, 1);
}
