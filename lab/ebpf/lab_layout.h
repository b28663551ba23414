/* The one definition of the lab programs' map keys and values (lab/ebpf/);
 * the product's are in ebpf/lib/layout.h.
 *
 * lab/layout.py is the Python view of these structs (ctypes), and
 * tests/kernel/test_layout.py asserts its sizes and field offsets against the
 * types BCC compiled from this file. Change both together; the test fails
 * otherwise. Padding is explicit so that no layout depends on the compiler.
 */
#ifndef TP_LAB_LAYOUT_H
#define TP_LAB_LAYOUT_H

#include <linux/types.h>

/* ---- The carriers' fault injector (fault.c) ---- */

/* tp_fault_config.mode */
#define TP_FAULT_PASS       0
#define TP_FAULT_BLACKHOLE  1           /* drop everything, both directions */
#define TP_FAULT_LOSS       2           /* drop when bpf_get_prandom_u32() < loss_threshold */
#define TP_FAULT_BLACKHOLE_TX 3         /* drop only what the gateway sends (orders, probes) */
#define TP_FAULT_BLACKHOLE_RX 4         /* drop only what comes to the gateway (replies, market data) */
#define TP_FAULT_DELAY      5           /* what comes to the gateway goes to the delay line (lab/delayline.py) */

/* The delay line's own frames carry this skb mark (SO_MARK): in DELAY mode
 * they pass to the gateway instead of going round the line again. No other
 * lab socket or rule sets it (exch's fwmarks are 1 and 2). */
#define TP_FAULT_DELAY_MARK 0x74706c79

/* fault_cfg[0] and fault_stats[0] (per CPU). */
struct tp_fault_config {
	__u32 mode;                 /* TP_FAULT_* */
	__u32 loss_threshold;       /* LOSS: a frame starts a burst when bpf_get_prandom_u32() < this */
	__u32 burst_len;            /* LOSS: frames a burst drops in its direction (0 and 1: just that one) */
	__u32 redirect_ifindex;     /* DELAY: the delay line's veth in the carrier namespace */
	__u32 burst_left[2];        /* fault.c's state: frames still to drop, [0] from the gateway, [1]
	                             * towards it; writing the config (zeros here) ends any burst */
};

struct tp_fault_counters {
	__u64 passed;
	__u64 dropped;
	__u64 delayed;              /* handed to the delay line (counted again as passed when it sends them) */
};

/* ---- exch's kernel-speed UDP reflector / sink (reflect.c) ---- */

#define TP_REFLECT_PORTS    64          /* configured destination ports per handoff */

/* tp_reflect_port.action */
#define TP_REFLECT_PASS     0           /* untouched, not counted: what an unlisted port gets */
#define TP_REFLECT_REFLECT  1           /* answer from the port to reply_port, out of the same handoff */
#define TP_REFLECT_SINK     2           /* count and drop */

/* reflect_cfg[UDP destination port, host order]; reflect_stats[same key],
 * per CPU, is a __u64 packet count. */
struct tp_reflect_port {
	__u16 action;               /* TP_REFLECT_* */
	__u16 reply_port;           /* REFLECT: the reply's destination port, host order */
};

/* ---- The capacity bench's generator (blast.c, driven by lab/blast.py) ---- */

#define TP_BLAST_OUTPUTS    2           /* devmap slots: one frame per slot per message (A/B copies) */
#define TP_BLAST_HDR        42          /* Ethernet + IPv4 + UDP, rewritten per output */
#define TP_BLAST_NO_SEQ     0xFFFF      /* tp_blast.seq_offset: frames carry no sequence number */

/* blast_cfg[0]: written whole by lab/blast.py before a run; blast.c then
 * advances `sent` and the clock fields (one CPU runs it, so no atomics). */
struct tp_blast {
	__u64 frames;               /* frames to send in all, over every output */
	__u64 period_ps;            /* between frames, in picoseconds (1e12 / rate) */
	__u64 first_seq;            /* the first message's sequence number */
	__u64 sent;                 /* frames handed to the redirect so far */
	__u64 start_ns;             /* the first frame's time (0: not yet) */
	__u64 last_ns;              /* the latest frame's time */
	__u16 outputs;              /* 1 or 2: message i goes out on slot j as frame i * outputs + j */
	__u16 seq_offset;           /* where the big-endian u64 sequence number goes, or TP_BLAST_NO_SEQ */
	__u16 frame_len;            /* the template's length: seq_offset + 8 must fit in it */
	__u16 pad;
	__u8 hdr[TP_BLAST_OUTPUTS * TP_BLAST_HDR];  /* output j's headers at j * TP_BLAST_HDR, checksums complete */
	__u8 pad2[4];
};

#endif
