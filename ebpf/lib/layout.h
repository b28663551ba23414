/* The one definition of every map key/value of the product's BPF programs
 * (ebpf/) and of the probe payload. Product only: the lab's programs keep
 * theirs in lab/ebpf/lab_layout.h.
 *
 * appliance/layout.py is the Python view of these structs (ctypes), and
 * tests/kernel/test_layout.py asserts its sizes and field offsets against the
 * types BCC compiled from this file. Change both together; the test fails
 * otherwise. Padding is explicit so that no layout depends on the compiler.
 */
#ifndef TP_LAYOUT_H
#define TP_LAYOUT_H

#include <linux/types.h>

#define TP_MAX_LINKS        8
#define TP_MAX_CLASSES      16
#define TP_MAX_PREFIXES     256
#define TP_RULES_PER_PREFIX 8
#define TP_HIST_BUCKETS      64
#define TP_RTT_RING         256         /* accepted replies kept per link for the daemon's detectors */

/* A/B market-data arbitration (ebpf/arbitrate.c). */
#define TP_ARB_FEEDS        16
#define TP_ARB_LINES        2           /* line A = 0, line B = 1 */
#define TP_ARB_SLOTS        1024        /* claim words per feed, 32 sequences each */
#define TP_ARB_STAMPS       4096        /* first-copy arrival stamps per feed */
#define TP_ARB_MAX_MSGS     128         /* most MoldUDP64 message blocks a packet may carry */
#define TP_ARB_COPIES       256         /* copy records per feed, for packets that span claim words */
/* Evidence and plausibility bounds (the rules: ebpf/arbitrate.c's comment). */
#define TP_ARB_SEQ_BITS     56          /* sequences are below 2^56; per-session words carry an 8-bit generation tag above */
#define TP_ARB_CONFIRM      16          /* this many unconfirmed packets in a row are believed from one line */
#define TP_ARB_FAR          32768       /* a sequence more than this beyond next_seq is far ahead */
#define TP_ARB_BEHIND       16777216    /* 2^24: a sequence more than this below next_seq is far behind (stale) */
#define TP_ARB_SWEEP        33554432    /* 2^25: next_seq moves this far between claim sweeps */
#define TP_ARB_NEWGEN       67108864    /* 2^26: a resync this far voids all claims (new generation) */

/* tp_feed_state.cand_meta: the evidence for a session other than the current one. */
#define TP_CAND_COUNT       0xff        /* unconfirmed packets since the last of the current session, saturating */
#define TP_CAND_LINES_SHIFT 8           /* 2 bits: lines that showed the candidate since their last current packet */
#define TP_CAND_ENDED_SHIFT 10          /* 2 bits: lines that showed the current session's end of session since */
#define TP_CAND_TOLD_SHIFT  12          /* 2 bits: lines whose sight of this candidate was reported (an event) */
#define TP_CAND_LOCK        0x8000      /* a CPU is writing the candidate's name */
#define TP_CAND_VERSION_SHIFT 32        /* bumped with each new candidate name */
/* tp_feed_state.prev_session[1]: set with a name (its word 1 holds 2 bytes), so
 * that an all-zero name is told from none. */
#define TP_PREV_SESSION     0x10000

/* tp_feed.proto */
#define TP_PROTO_MOLDUDP64  1
#define TP_PROTO_MDP3       2

/* tp_arb_event.kind */
#define TP_ARB_GAP          1           /* [first, last]: neither line has delivered these yet */
#define TP_ARB_FILL         2           /* [first, last]: a late packet delivered (part of) a gap */
#define TP_ARB_SESSION      3           /* the feed switched to a MoldUDP64 session; first = the packet's sequence */
#define TP_ARB_CANDIDATE    4           /* a packet of another session (new name, or a line's first sight); first = its sequence */
#define TP_ARB_FAR_AHEAD    5           /* a line began a run of far-ahead packets; first = its sequence, last = next_seq */
#define TP_ARB_RESYNC       6           /* a far sequence was believed; first = next_seq before, last = the sequence */
#define TP_ARB_FAR_BEHIND   7           /* a line began a run of far-behind packets; first = its sequence, last = next_seq */

#define TP_PROBE_MAGIC      0x54505042u /* "BPPT" in memory: a twinpath probe */
#define TP_PROBE_VERSION    2           /* 2: key_id + SipHash-2-4 mac */
#define TP_KEY_SLOTS        2           /* tp_keys: slot 0 signs, every slot verifies */
#define TP_REPLAY_WINDOW    64          /* replies accepted up to this many sequences late */

/* tp_arb_gstats[line * TP_ARB_STAT_MAX + stat], per CPU: packets the
 * arbitration program passed to the stack without touching them. */
enum tp_arb_stat {
	TP_ARB_STAT_NOT_IPV4 = 0,   /* ARP, IPv6, ... */
	TP_ARB_STAT_NOT_FEED,       /* IPv4 but not a configured feed: orders, heartbeats, ... */
	TP_ARB_STAT_FRAGMENT,       /* an IP fragment: ports unknown or payload split */
	TP_ARB_STAT_IP_OPTIONS,     /* IPv4 with options: never fast-pathed (lib/parse.h) */
	TP_ARB_STAT_TRUNCATED,      /* an IP header ip_rcv() rejects (lengths, checksum, version) or a UDP
	                             * header cut short: the stack drops it */
	TP_ARB_STAT_TTL_EXPIRED,    /* a feed packet with TTL <= 1: the stack answers it */
	TP_ARB_STAT_NO_OUTPUT,      /* a feed packet whose receiver's MAC is not known yet */
	TP_ARB_STAT_MAX,
};

/* tp_links[link].flags, written by the daemon. */
#define TP_LINK_CARRIER     (1u << 0)   /* netlink reports carrier */
#define TP_LINK_NEXTHOP     (1u << 1)   /* next-hop MAC resolved */
#define TP_LINK_TTL_SECURITY (1u << 2)  /* GTSM (RFC 5082): heartbeat replies must arrive with TTL 255 */
#define TP_LINK_XDP_XMIT    (1u << 3)   /* the device takes XDP redirects now (its xdp_features has
                                         * NDO_XMIT): steer may forward to it at XDP (lib/steer.h) */

/* tp_event.cause */
#define TP_CAUSE_HEARTBEAT  1           /* no heartbeat reply for the dead interval */
#define TP_CAUSE_CARRIER    2           /* carrier lost (reported by the daemon) */
#define TP_CAUSE_WAKE       3           /* no failover: a reply the daemon asked to hear about (tp_wake) */

/* tp_gstats indexes: per-CPU packet counters of the programs' side exits. */
enum tp_stat {
	TP_STAT_NOT_IPV4 = 0,       /* steer: passed to the stack (ARP, IPv6, ...) */
	TP_STAT_NO_RULE,            /* steer: no rule matched; kernel routing */
	TP_STAT_UNPARSED,           /* steer: IP options, fragment, or ports past the IP packet; kernel routing */
	TP_STAT_MALFORMED,          /* steer: an IPv4 header ip_rcv() rejects (version, length, checksum);
	                             * passed to the stack, which drops and counts it */
	TP_STAT_TTL_EXPIRED,        /* steer: TTL <= 1; the stack sends time-exceeded */
	TP_STAT_NO_NEXTHOP,         /* steer: link without a resolved next hop; kernel routing */
	TP_STAT_ALL_STALE,          /* steer: current link stale and no fresh standby; stayed */
	TP_STAT_PROBE_STAMPED,      /* heartbeat egress: probes stamped and signed */
	TP_STAT_PROBE_FOREIGN,      /* heartbeat egress: probe-shaped, but not from its link's device and
	                             * addresses; left unsigned, so no reply to it can be accepted */
	TP_STAT_REPLY_OK,           /* heartbeat ingress: replies accepted */
	TP_STAT_REPLY_BAD,          /* heartbeat ingress: ours by magic, but wrong header, length, checksum,
	                             * link, interface, addresses or TTL; dropped */
	TP_STAT_REPLY_FORGED,       /* heartbeat ingress: unknown key or MAC mismatch; dropped */
	TP_STAT_REPLY_REPLAYED,     /* heartbeat ingress: valid MAC, but sent outside the dead interval or
	                             * a sequence already seen or older than the window; dropped */
	TP_STAT_XDP_FORWARDED,      /* steer: forwarded at XDP, before the kernel built an skb (the
	                             * rest of what steer forwards went through its TC program) */
	TP_STAT_MAX,
};

/* tp_links[link]: where a link sends and whether it may be used. */
struct tp_link {
	__u32 ifindex;
	__u32 flags;                /* TP_LINK_* */
	__u8  src_mac[6];           /* the link's own MAC */
	__u8  dst_mac[6];           /* its next hop's MAC */
	__u32 local;                /* the link's own IPv4 address, network order: probes leave from it */
	__u32 target;               /* its heartbeat target, network order: replies come from it */
};

/* tp_health[link]: written by the heartbeat programs, read by steer and the daemon. */
struct tp_health {
	__u64 last_reply_ns;        /* CLOCK_MONOTONIC of the last valid reply */
	__u64 fresh_since_ns;       /* start of the current unbroken run of replies */
	__u64 rtt_ewma_ns;          /* EWMA with weight 1/8 */
	__u64 rtt_last_ns;
	__u64 replies;
	__u64 probes;               /* probes stamped on egress */
	__u64 seq_top;              /* highest probe sequence accepted back */
	__u64 seq_seen;             /* bit i: seq_top - i was accepted (anti-replay window) */
	__u64 unanswered;           /* probes stamped since the last accepted reply: a link is dead
	                             * only once probes went unanswered, not merely because time passed */
	__u64 stamped_seq;          /* sequence of the last probe stamped on this link */
};

/* tp_probe_round[0]: the probe sender's progress, as the egress program
 * stamps it. A round is one probe on every link, all with one sequence. */
struct tp_round {
	__u64 seq;                  /* highest probe sequence stamped on any link */
	__u64 started_ns;           /* when the running sender's first round was stamped (0: not
	                             * yet; zeroed by the daemon before it starts a sender): links
	                             * owed no answer before it (lib/reflex.h) */
};

/* tp_rtt_ring[link]: the link's last TP_RTT_RING accepted replies, in slot
 * seq % TP_RTT_RING. The daemon reads it whole each tick: a probe sent more
 * than the dead interval ago whose slot does not hold its sequence was lost.
 * The ingress program writes rtt_ns before seq, and a reader copies seq[]
 * before rtt_ns[], so a slot whose seq matches holds that reply's RTT. */
struct tp_rtt_ring {
	__u64 seq[TP_RTT_RING];     /* the probe sequence answered (0: none yet) */
	__u64 rtt_ns[TP_RTT_RING];
};

/* tp_keys[slot]: heartbeat MAC keys, written by the daemon. Slot 0 signs new
 * probes; a reply verifies under whichever slot's id its probe names, so a
 * key rotation loses no reply in flight. id 0: empty slot. */
struct tp_key {
	__u64 k0;                   /* key bytes 0..7, little-endian (SipHash's k0) */
	__u64 k1;                   /* key bytes 8..15 */
	__u32 id;                   /* 1..255, carried in the probe */
	__u32 _pad;
};

/* tp_classes[class]: the class's links in preference order. */
struct tp_class {
	__u32 n_links;
	__u32 links[TP_MAX_LINKS];
};

/* tp_rules: longest-prefix match on the IPv4 destination, then the first
 * matching rule of that prefix. The daemon copies into each prefix the rules of
 * every configured prefix containing it, in config order, so this two-step
 * lookup gives first-match-in-config-order semantics. */
struct tp_lpm_key {
	__u32 prefixlen;
	__u32 addr;                 /* network byte order */
};

struct tp_rule {
	__u8  proto;                /* IPPROTO_*, 0 = any */
	__u8  class_id;
	__u16 port_lo;              /* destination port range, host order */
	__u16 port_hi;
	__u16 _pad;
};

struct tp_prefix_rules {
	__u32 n_rules;
	struct tp_rule rules[TP_RULES_PER_PREFIX];
};

/* tp_prefix_table: the same prefixes and rules as tp_rules when there are at
 * most TP_SMALL_PREFIXES of them, longest first, so that steer matches with
 * inlined array reads and a masked compare per prefix instead of the trie's
 * walk (about 40 ns a packet here). [0].live names the table in use (1 or
 * 2; 0: the rule set is larger, use tp_rules). The daemon fills the other
 * table and then flips live, so a packet meets the old rule set or the new
 * one, never a half-written one. */
#define TP_SMALL_PREFIXES   8

struct tp_prefix_slot {
	__u32 addr;                 /* network byte order, host bits zero */
	__u32 mask;                 /* network byte order */
	struct tp_prefix_rules rules;
};

struct tp_prefix_table {
	__u32 live;                 /* [0] only: 1 or 2, the table in use; 0: none, use tp_rules */
	__u32 n;                    /* slots in use */
	struct tp_prefix_slot slots[TP_SMALL_PREFIXES];
};

/* tp_steer_stats[class * TP_MAX_LINKS + link], per CPU. */
struct tp_counters {
	__u64 packets;
	__u64 bytes;
	__u64 redirects;
	__u64 failovers;            /* reflex switches away from this link */
};

/* tp_pair[0]: an HA pair's gate (lib/pair.h). Written by the daemon only
 * after the witness granted ownership (token: its fencing token), so a
 * standby never forwards class traffic the trader still sends it. */
#define TP_PAIR_NONE        0           /* no pair configured: forward */
#define TP_PAIR_STANDBY     1           /* drop class traffic */
#define TP_PAIR_ACTIVE      2           /* forward */
struct tp_pair {
	__u32 mode;                 /* TP_PAIR_* */
	__u32 _pad;
	__u64 token;                /* the witness's fencing token of this node's ownership; 0: none */
	__u64 fenced;               /* class packets dropped while standby */
};

/* tp_wake[link]: while the daemon reads its links calmly (seldom, since
 * nothing moves), an accepted reply that could start a change wakes it:
 * - one after two or more lost probes (a sequence gap): a loss run;
 * - TP_WAKE_MAJORITY of the last TP_WAKE_HISTORY replies beyond an RTT
 *   bound (above rtt_above_ns, below rtt_below_ns) or after one lost probe:
 *   what moves a window's median, or lowest-latency's judgement of it;
 * - the smoothed change from one RTT to the next (gain 1/8, each change
 *   capped at twice change_ns) above change_ns: what moves the jitter
 *   detector. The daemon seeds it with its own jitter when it arms.
 * A majority and a smoothed change, not single replies: this VM's veths show
 * lone 0.1-2 ms spikes, and at 200 us x 8 links a wake on three such replies
 * in a row came every few ms, so the daemon never read calmly. The daemon
 * arms it (history empty); the ingress program disarms it as it wakes the
 * daemon, so one arming makes at most one event (lib/wake.h). */
#define TP_WAKE_HISTORY     8
#define TP_WAKE_MAJORITY    5
#define TP_WAKE_JITTER_SHIFT 3
struct tp_wake {
	__u64 rtt_above_ns;
	__u64 rtt_below_ns;         /* 0: none */
	__u64 change_ns;
	__u64 jitter_ns;            /* the smoothed RTT change so far */
	__u32 armed;
	__u32 beyond;               /* the last TP_WAKE_HISTORY replies, newest in bit 0: 1 beyond */
};

/* tp_events ring buffer record: one per reflex failover, or (cause
 * TP_CAUSE_WAKE) a wake for the daemon, from_link = to_link = the link. */
struct tp_event {
	__u64 ts_ns;                /* CLOCK_MONOTONIC when the data path switched */
	__u64 silence_ns;           /* age of the abandoned link's last reply then */
	__u32 class_id;
	__u32 from_link;
	__u32 to_link;
	__u32 cause;                /* TP_CAUSE_* */
};

/* ICMP echo payload of a heartbeat probe. Native byte order: this host writes
 * it and this host reads the echo. tx_ns, key_id and mac are written by the
 * egress program, never by user space, so sender jitter stays out of the RTT
 * and the key never leaves the kernel's maps. mac = SipHash-2-4 under the
 * key named by key_id over the 32 bytes local, target (network order),
 * link:u16, key_id:u8, version:u8, 4 zero bytes, seq:u64, tx_ns:u64 (see
 * lib/siphash.h); a far end that only echoes cannot forge or refresh it. */
struct tp_probe {
	__u32 magic;
	__u16 version;
	__u16 link;
	__u64 seq;                  /* the sender's, increasing */
	__u64 tx_ns;                /* CLOCK_MONOTONIC at egress */
	__u8  key_id;
	__u8  _pad[7];
	__u64 mac;
};

/* tp_feeds: which UDP destinations are arbitrated feeds. */
struct tp_feed_key {
	__u32 addr;                 /* destination, network byte order */
	__u16 port;                 /* destination port, network byte order */
	__u16 _pad;
};

/* Where a feed's winners go: written by the daemon once the trader's MAC is
 * known; until then ifindex is 0 and the feed passes to kernel routing. */
struct tp_feed {
	__u32 id;                   /* index into tp_feed_state and tp_line_stats */
	__u32 proto;                /* TP_PROTO_* */
	__u32 ifindex;              /* the trader-facing link */
	__u8  src_mac[6];           /* its MAC */
	__u8  dst_mac[6];           /* the receiver's (or the group's) MAC */
};

/* tp_feed_index: the arbitration programs' view of tp_feeds, which stays the
 * daemon's record. A hash lookup cost about 65 ns a packet here, on every
 * packet of the market-data lines; this is two inlined array reads and one
 * compare. The feed of destination (addr, port) is in the slot
 * ((addr << 16 | port) * mult) >> (64 - TP_FEED_INDEX_BITS) of the table in
 * use, or nowhere: the daemon picks an odd mult that gives every configured
 * feed a slot of its own (a perfect hash: no probing, no fallback). [0].live
 * names the table in use (1 or 2; 0: no feeds); the daemon fills the other one
 * and then flips live, as for tp_prefix_table. */
#define TP_FEED_INDEX_BITS  8
#define TP_FEED_INDEX_SLOTS 256                 /* 1 << TP_FEED_INDEX_BITS */
#define TP_FEED_SLOT_USED   0x8000000000000000  /* 1 << 63 */
_Static_assert(TP_FEED_INDEX_SLOTS == 1 << TP_FEED_INDEX_BITS, "TP_FEED_INDEX_SLOTS");

struct tp_feed_slot {
	__u64 key;                  /* TP_FEED_SLOT_USED | addr << 16 | port (both as the packet holds them); 0: empty */
	struct tp_feed feed;
};

struct tp_feed_index {
	__u32 live;                 /* [0] only: 1 or 2, the table in use; 0: none (no packet is a feed) */
	__u32 _pad;
	__u64 mult;                 /* odd; this table's hash multiplier */
	struct tp_feed_slot slots[TP_FEED_INDEX_SLOTS];
};

/* tp_copy_mac() (lib/forward.h) moves a MAC as three 16-bit words. */
_Static_assert(__builtin_offsetof(struct tp_link, src_mac) % 2 == 0 &&
	       __builtin_offsetof(struct tp_link, dst_mac) % 2 == 0 &&
	       __builtin_offsetof(struct tp_feed_slot, feed) % 2 == 0 &&
	       __builtin_offsetof(struct tp_feed, src_mac) % 2 == 0 &&
	       __builtin_offsetof(struct tp_feed, dst_mac) % 2 == 0, "a MAC the forwarding step copies at an odd offset");

/* tp_feed_state[feed] and tp_feed_claims[feed]: shared by both lines on every
 * CPU; split so that the daemon's frequent reads of the first stay small.
 * Fields that decide delivery change only by compare-and-exchange. A sequence
 * is delivered by the packet that sets its bit in `claims`; each word there is
 * gtag:8 | block:24 | bits:32 for sequences block*32 .. block*32+31, so a slot
 * still holding an older block (or generation) is recycled in the same CAS.
 *
 * `gen` is a seqlock over the session: even while stable, odd while one CPU
 * switches (name, next_seq and the per-session words below); it only grows,
 * by 2 per switch, and 0 means no session yet. A packet's generation tag
 * (gtag) is (gen >> 1) & 0xff. Every per-session sequence word (next_seq,
 * line_next_seq, end_seq, swept_seq, far_seq) holds gtag << 56 | sequence, so
 * a CPU still working under the previous generation never moves it.
 * next_seq says where gaps are: below it, an unclaimed sequence is missing.
 * Grouped by cache line: read on every packet, written as the feed moves, rare. */
struct tp_feed_state {
	__u64 gen;                  /* session seqlock and claim generation; 0: no session yet */
	__u64 session[2];           /* the session's 10 bytes: bytes 0-7 and 8-9, little-endian words; MDP3: 0 */
	__u64 cand_meta;            /* evidence for another session: TP_CAND_* */
	__u32 far_count[TP_ARB_LINES];     /* consecutive consistent far-ahead packets per line */
	__u64 _pad0[3];
	__u64 next_seq;             /* gtag | one past the highest sequence delivered or announced; 0: no baseline yet */
	__u64 line_last_ns[TP_ARB_LINES];  /* last packet of this feed per line */
	__u64 line_next_seq[TP_ARB_LINES]; /* gtag | one past the highest sequence each line carried in range */
	__u64 hb_last;              /* last forwarded heartbeat: 1 << 63 | (ns >> 12) & (2^36 - 1); 0: none */
	__u64 end_seq;              /* gtag | 1 + the next sequence of the last forwarded end of session */
	__u64 swept_seq;            /* gtag | next_seq at the last claim sweep */
	__u64 cand[2];              /* the candidate session's 10 bytes, valid while cand_meta is unlocked */
	__u64 far_seq[TP_ARB_LINES];       /* gtag | each line's last far-ahead sequence */
	__u64 prev_session[2];      /* the session the feed last left, as session | TP_PREV_SESSION in
	                             * word 1; 0: none yet. Written under the seqlock, like session */
	__u64 _pad1[2];
};

struct tp_feed_claims {
	__u64 claims[TP_ARB_SLOTS];
	/* stamps[seq % TP_ARB_STAMPS] = (seq & 0x7fffff) << 41 | line << 40 | ns & (2^40 - 1),
	 * written by the packet that delivered seq first: the loser's lag. */
	__u64 stamps[TP_ARB_STAMPS];
	/* copies[(s >> 5) % TP_ARB_COPIES] = 1 << 63 | gtag << 55 | (count - 1) << 48 | s & (2^48 - 1):
	 * the last packet [s, s + count) spanning claim words that began its
	 * claim there; an identical copy that finds it leaves the claim to it. */
	__u64 copies[TP_ARB_COPIES];
};

/* tp_arb_config[0], written by the daemon: what changes while it runs.
 * (The heartbeat dedup window is a compile-time constant, TP_HB_DEDUP_NS.) */
struct tp_arb_config {
	__s64 mono_to_real_ns;      /* CLOCK_REALTIME - CLOCK_MONOTONIC, for MDP3 SendingTime */
};

/* tp_line_stats[feed * TP_ARB_LINES + line], per CPU. */
struct tp_line_stats {
	__u64 packets;              /* well-formed packets of the feed */
	__u64 won;                  /* forwarded: carried at least one new sequence */
	__u64 lost;                 /* dropped: the peer had delivered every sequence */
	__u64 overlap;              /* won, and also carried already-delivered sequences */
	__u64 fills;                /* won with sequences from below next_seq (a gap) */
	__u64 heartbeats;           /* heartbeats and end-of-session packets */
	__u64 heartbeats_forwarded;
	__u64 stale;                /* dropped: older than the claim window, or raced a session switch */
	__u64 malformed;            /* feed payload truncated or inconsistent; dropped */
	__u64 events_lost;          /* ring buffer full */
	__u64 unconfirmed;          /* dropped: of a session other than the current one, not (yet) believed */
	__u64 far_ahead;            /* dropped: far beyond next_seq, not (yet) believed */
	__u64 lag_hist[TP_HIST_BUCKETS];   /* per duplicate: how long after the peer's copy it came */
	__u64 owd_hist[TP_HIST_BUCKETS];   /* MDP3: one-way latency from SendingTime */
};

/* tp_arb_events ring buffer record. */
struct tp_arb_event {
	__u64 ts_ns;                /* CLOCK_MONOTONIC */
	__u64 first;
	__u64 last;
	__u32 feed;
	__u16 line;                 /* the line whose packet revealed it */
	__u16 kind;                 /* TP_ARB_* */
	__u64 session[2];           /* SESSION, CANDIDATE: that session's 10 bytes, as tp_feed_state.session */
};

#endif
