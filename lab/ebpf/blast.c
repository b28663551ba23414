/* Lab only: the capacity bench's frame generator, paced in the kernel.
 *
 * lab/blast.py runs this XDP program with BPF_PROG_TEST_RUN in live-frames
 * mode (BPF_F_TEST_XDP_LIVE_FRAMES): every run is a real frame from a page
 * pool, and XDP_REDIRECT transmits it, batched, through ndo_xdp_xmit into the
 * gateway's receiving veth, as a NIC would hand it frames: no skb on the
 * sending side. A run whose turn has not come (start + sent * period) is
 * dropped unsent, so the test run's loop is the pacing spin itself, with the
 * kernel clock, and bursts never exceed the test run's batch.
 *
 * Frame i goes to devmap slot i % outputs with that slot's headers and, for a
 * feed, message i / outputs's sequence number: A/B copies leave together.
 */
#include <uapi/linux/bpf.h>
#include "lab_layout.h"

BPF_ARRAY(blast_cfg, struct tp_blast, 1);
BPF_DEVMAP(blast_devs, TP_BLAST_OUTPUTS);

int blast(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct tp_blast *c = blast_cfg.lookup(&zero);

	if (!c || c->sent >= c->frames)
		return XDP_DROP;
	__u64 now = bpf_ktime_get_ns();
	if (!c->start_ns)
		c->start_ns = now;
	else if (now < c->start_ns + c->sent * c->period_ps / 1000)
		return XDP_DROP;
	if (data + TP_BLAST_HDR > end)
		return XDP_ABORTED;
	__u32 slot = c->outputs == 2 ? (__u32)(c->sent & 1) : 0;
	__u64 message = c->outputs == 2 ? c->sent >> 1 : c->sent;
	__builtin_memcpy(data, slot ? c->hdr + TP_BLAST_HDR : c->hdr, TP_BLAST_HDR);
	if (c->seq_offset != TP_BLAST_NO_SEQ) {
		__u8 *seq = data + (c->seq_offset & 0x7FF);
		if ((void *)(seq + 8) > end)
			return XDP_ABORTED;
		__u64 v = c->first_seq + message;
#pragma unroll
		for (int k = 0; k < 8; k++)
			seq[k] = (__u8)(v >> (56 - 8 * k));
	}
	c->sent += 1;
	c->last_ns = now;
	return blast_devs.redirect_map(slot, 0);
}
