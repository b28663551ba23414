/* Locating, signing and verifying a twinpath heartbeat probe inside an ICMP
 * echo. Cheap checks first: every packet on a link meets tp_find_probe, and
 * only those carrying our identifier and magic go on to the MAC. */
#ifndef TP_PROBE_H
#define TP_PROBE_H

#include <linux/icmp.h>
#include "lib/layout.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/siphash.h"

#ifndef TP_PROBE_IDENT
#error "TP_PROBE_IDENT (ICMP echo identifier of our probes) must be defined by the loader"
#endif

/* A probe is exactly one IPv4 header without options, the echo header and
 * struct tp_probe: nothing else may ride along. */
#define TP_PROBE_IP_LEN (sizeof(struct iphdr) + sizeof(struct icmphdr) + sizeof(struct tp_probe))

struct tp_probe_pkt {
	struct iphdr *ip;
	struct icmphdr *icmp;
	struct tp_probe *probe;
};

/* An echo of `type` sent with our identifier and magic, or 0. Nothing about
 * it is trusted yet. */
static __always_inline int tp_find_probe(void *data, void *end, __u8 type, struct tp_probe_pkt *p)
{
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct icmphdr *icmp = (void *)(ip + 1);
	struct tp_probe *probe = (void *)(icmp + 1);

	if ((void *)(probe + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_ICMP || icmp->type != type || icmp->code != 0 ||
	    icmp->un.echo.id != bpf_htons(TP_PROBE_IDENT) || probe->magic != TP_PROBE_MAGIC)
		return 0;
	p->ip = ip;
	p->icmp = icmp;
	p->probe = probe;
	return 1;
}

/* Whether the found echo is a well-formed probe of this version: a valid,
 * unfragmented IPv4 header of exactly the probe's length. */
static __always_inline int tp_probe_well_formed(void *data, void *end, __u32 frame_len,
						struct tp_probe_pkt *p)
{
	struct iphdr *ip;

	return tp_ipv4(data, end, frame_len, &ip) == TP_IP_OK && !tp_ip_fragment(ip) &&
	       bpf_ntohs(ip->tot_len) == TP_PROBE_IP_LEN && p->probe->version == TP_PROBE_VERSION;
}

/* The ICMP checksum of a well-formed probe (fixed length, so unrolled). */
static __always_inline int tp_probe_icmp_csum_ok(struct tp_probe_pkt *p, void *end)
{
	__u32 *w = (void *)p->icmp;
	__u64 s = 0;

	if ((void *)w + sizeof(struct icmphdr) + sizeof(struct tp_probe) > end)
		return 0;
	#pragma unroll
	for (int i = 0; i < (sizeof(struct icmphdr) + sizeof(struct tp_probe)) / 4; i++)
		s += w[i];
	return tp_csum_fold64(s) == 0xffff;
}

/* The probe's MAC under `key`, over what a reply must prove: which of our
 * links and addresses sent it, when, and in which order. */
static __always_inline __u64 tp_probe_mac(struct tp_key *key, struct tp_link *l,
					  struct tp_probe *probe, __u8 key_id)
{
	__u64 addrs = (__u64)l->target << 32 | l->local;
	__u64 who = (__u64)probe->link | (__u64)key_id << 16 | (__u64)TP_PROBE_VERSION << 24;

	return tp_siphash32(key->k0, key->k1, addrs, who, probe->seq, probe->tx_ns);
}

/* The key slot whose id the probe names, or NULL (id 0 is never a key). */
static __always_inline struct tp_key *tp_probe_key(__u8 key_id)
{
	#pragma unroll
	for (__u32 slot = 0; slot < TP_KEY_SLOTS; slot++) {
		__u32 s = slot;
		struct tp_key *k = tp_keys.lookup(&s);
		if (k && k->id && k->id == key_id)
			return k;
	}
	return NULL;
}

/* Anti-replay (as IPsec's window): a sequence above the highest accepted
 * slides the window; one inside it is accepted once. Called only after the
 * MAC verified, so a forged sequence can never move the window. */
static __always_inline int tp_replay_accept(struct tp_health *h, __u64 seq)
{
	__u64 top = h->seq_top, back;

	if (seq > top) {
		__u64 shift = seq - top;
		h->seq_seen = shift >= TP_REPLAY_WINDOW ? 1 : (h->seq_seen << shift) | 1;
		h->seq_top = seq;
		return 1;
	}
	back = top - seq;
	if (back >= TP_REPLAY_WINDOW || (h->seq_seen & (1ULL << back)))
		return 0;
	h->seq_seen |= 1ULL << back;
	return 1;
}

#endif
