/* Lab only: a kernel-speed UDP reflector and sink at the exchange, so that
 * latency and throughput benchmarks time the gateway, not a Python echo.
 *
 * A direct-action TC classifier on ingress of exch's handoffs (hA, hB).
 * IPv4/UDP without IP options or fragments whose destination port has a
 * reflect_cfg entry is either reflected (back out of the handoff it came in
 * on, as the exchange's own replies leave) or counted and dropped; anything
 * else passes untouched. lab/reflect.py loads it and writes
 * reflect_cfg through a pinned map.
 *
 * sink_xdp: the same sink as an XDP program, for counting at the first hop
 * past the gateway (bench/capacity.py) without an skb: a port set to sink is
 * counted and dropped, everything else passes.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <linux/udp.h>
#include "lab_layout.h"
#include "lib/parse.h"

BPF_HASH(reflect_cfg, __u32, struct tp_reflect_port, TP_REFLECT_PORTS);
/* Created (zero) by reflect.py with each port's rule, so no insert here. */
BPF_PERCPU_HASH(reflect_stats, __u32, __u64, TP_REFLECT_PORTS);

#define TP_UDP_CHECK_OFF (ETH_HLEN + sizeof(struct iphdr) + offsetof(struct udphdr, check))

int reflect(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;

	if (tp_ipv4(data, end, skb->len, &ip) != TP_IP_OK || tp_ip_fragment(ip) || ip->protocol != IPPROTO_UDP)
		return TC_ACT_OK;
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end)
		return TC_ACT_OK;
	__u32 port = bpf_ntohs(udp->dest);
	struct tp_reflect_port *cfg = reflect_cfg.lookup(&port);
	if (!cfg || cfg->action == TP_REFLECT_PASS)
		return TC_ACT_OK;
	__u64 *count = reflect_stats.lookup(&port);
	if (count)
		*count += 1;
	if (cfg->action == TP_REFLECT_SINK)
		return TC_ACT_SHOT;

	__u8 mac[ETH_ALEN];
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	/* A swap keeps the IP checksum and the UDP pseudo-header sum. */
	__be32 addr = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = addr;
	__be16 old_sport = udp->source;
	__be16 reply = bpf_htons(cfg->reply_port);
	udp->source = udp->dest;
	udp->dest = reply;
	/* Not a zero checksum: a veth sender's packet carries only the
	 * pseudo-header sum (CHECKSUM_PARTIAL) and the handoff completes it on
	 * the way out, which would turn a 0 into garbage. The helper fixes a
	 * complete checksum and leaves a partial one to the handoff; the ports'
	 * sum changes as if sport became the reply port (dport only moves). */
	if (bpf_l4_csum_replace(skb, TP_UDP_CHECK_OFF, old_sport, reply,
				BPF_F_MARK_MANGLED_0 | sizeof(reply)) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

int sink_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct iphdr *ip;

	if (tp_ipv4(data, end, end - data, &ip) != TP_IP_OK || tp_ip_fragment(ip) || ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end)
		return XDP_PASS;
	__u32 port = bpf_ntohs(udp->dest);
	struct tp_reflect_port *cfg = reflect_cfg.lookup(&port);
	if (!cfg || cfg->action != TP_REFLECT_SINK)
		return XDP_PASS;
	__u64 *count = reflect_stats.lookup(&port);
	if (count)
		*count += 1;
	return XDP_DROP;
}
