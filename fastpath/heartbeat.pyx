"""Heartbeat sender: one ICMP echo probe per link per period, without the GIL.

The probe bytes come from Python (appliance.layout builds them from the one
layout definition); this loop only writes the sequence number, fixes the ICMP
checksum and sends. Send times and MACs are not made here: the heartbeat
egress BPF program stamps and signs each probe in the kernel, so the jitter of
this loop never enters an RTT and the key stays in the kernel. It only has to
keep probes coming often enough.

The loop's pure steps (checksum, probe, cadence) are C-only inline functions;
inet_csum, probe_bytes and next_period expose them to Python so that
tests/unit/test_fastpath.py can check them against fastpath.reference.
"""
from libc.string cimport memcpy
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from fastpath._ctime cimport mono_ns, sleep_until, prctl, PR_SET_TIMERSLACK, send

cdef extern from "layout.h":
    enum: TP_MAX_LINKS

cdef extern from *:
    """
    /* The daemon takes the sender's lateness window while the sender runs
     * without the GIL, on another thread or in another process. */
    static inline uint64_t tp_take(uint64_t *p)
    { return __atomic_exchange_n(p, 0ULL, __ATOMIC_RELAXED); }
    """
    uint64_t tp_take(uint64_t *p) nogil

cdef enum:
    MAX_PROBE = 128     # most bytes of ICMP message per link

cdef struct Period:
    long long deadline  # when the next probes are due
    long long late_ns   # how far past that deadline the clock already is; 0: on time
    long long skipped   # whole periods missed: the cadence restarts from now


cdef inline uint16_t _inet_csum(const uint8_t *p, int n) noexcept nogil:
    # n <= MAX_PROBE: the 32-bit sum cannot overflow before the fold.
    cdef uint32_t s = 0
    cdef int i = 0
    while i + 1 < n:
        s += (<uint32_t>p[i] << 8) | p[i + 1]
        i += 2
    if i < n:
        s += <uint32_t>p[i] << 8
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return <uint16_t>(~s & 0xFFFF)


cdef inline void _fill_probe(uint8_t *b, int n, int seq_off, uint64_t seq) noexcept nogil:
    cdef uint16_t c
    b[2] = 0
    b[3] = 0
    b[6] = <uint8_t>(seq >> 8)
    b[7] = <uint8_t>seq
    memcpy(b + seq_off, &seq, 8)
    c = _inet_csum(b, n)
    b[2] = <uint8_t>(c >> 8)
    b[3] = <uint8_t>c


cdef inline Period _next_period(long long deadline, long long now, long long interval) noexcept nogil:
    cdef Period p
    p.deadline = deadline + interval
    p.late_ns = now - p.deadline
    p.skipped = 0
    if p.late_ns <= 0:
        p.late_ns = 0
    elif p.late_ns > interval:
        # Stalled for whole periods: resume the cadence from now instead of
        # bursting the missed probes.
        p.skipped = p.late_ns // interval
        p.deadline = now
    return p


cdef _check_template(bytes template, int seq_offset):
    if not (8 <= seq_offset and seq_offset + 8 <= len(template) <= MAX_PROBE):
        raise ValueError(f"probe template of {len(template)} bytes with its sequence at {seq_offset}: "
                         f"need an 8-byte echo header, then the sequence, within {MAX_PROBE} bytes")


def inet_csum(bytes data):
    """RFC 1071 checksum of `data` (at most MAX_PROBE bytes), as the loop computes it."""
    if len(data) > MAX_PROBE:
        raise ValueError(f"the sender checksums at most {MAX_PROBE} bytes")
    return _inet_csum(data, len(data))


def probe_bytes(bytes template, int seq_offset, uint64_t seq):
    """The message the loop sends for `seq` from `template`."""
    _check_template(template, seq_offset)
    cdef uint8_t b[MAX_PROBE]
    memcpy(b, <const char *>template, len(template))
    _fill_probe(b, len(template), seq_offset, seq)
    return (<char *>b)[:len(template)]


def next_period(long long deadline, long long now, long long interval):
    """(next deadline, late_ns, skipped) as the loop computes them after
    sending the probes due at `deadline`, the clock reading `now`."""
    cdef Period p = _next_period(deadline, now, interval)
    return p.deadline, p.late_ns, p.skipped


cdef struct Shared:
    uint64_t seq                # the latest round's sequence (every link's probe carries it)
    uint64_t window_late_ns     # the longest lateness since the last take_late_ns()
    uint64_t periods
    uint64_t late_periods
    uint64_t skipped_periods
    uint64_t max_late_ns
    uint64_t sent[TP_MAX_LINKS]
    uint64_t errors[TP_MAX_LINKS]

STATS_SIZE = sizeof(Shared)


cdef class Stats:
    """A sender's counters, in memory the sender and the daemon may share
    across processes (appliance.edge.probesender maps one memfd in both);
    by default a private buffer. Fields are 64-bit and written by one
    sender: a reader sees each whole, never torn."""
    cdef Shared *st
    cdef object _buf
    cdef int n

    def __init__(self, int n_links, buf=None):
        cdef unsigned char[::1] mem
        if not 1 <= n_links <= TP_MAX_LINKS:
            raise ValueError(f"{n_links} links: 1 to {TP_MAX_LINKS} (TP_MAX_LINKS, ebpf/lib/layout.h)")
        if buf is None:
            buf = bytearray(STATS_SIZE)
        mem = buf
        if mem.shape[0] < STATS_SIZE:
            raise ValueError(f"stats buffer of {mem.shape[0]} bytes: need {STATS_SIZE}")
        self._buf = buf
        self.st = <Shared *>&mem[0]
        self.n = n_links

    def reset(self, uint64_t last_seq):
        """Counters to zero; the first round sent will be last_seq + 1."""
        cdef int i
        for i in range(TP_MAX_LINKS):
            self.st.sent[i] = 0
            self.st.errors[i] = 0
        self.st.periods = self.st.late_periods = self.st.skipped_periods = self.st.max_late_ns = 0
        self.st.window_late_ns = 0
        self.st.seq = last_seq

    @property
    def last_seq(self):
        """The sequence of the latest round sent (every link's probe carries it)."""
        return self.st.seq

    def take_late_ns(self):
        """The longest the sender was late for a round since the last call:
        how long this host kept the sender off the CPU. (A value stored just
        as it is taken may be kept for the next call: an overstatement, never
        a loss.)"""
        return tp_take(&self.st.window_late_ns)

    @property
    def periods(self):
        return self.st.periods

    @property
    def late_periods(self):
        return self.st.late_periods

    @property
    def skipped_periods(self):
        return self.st.skipped_periods

    @property
    def max_late_ns(self):
        return self.st.max_late_ns

    @property
    def sent(self):
        return [self.st.sent[i] for i in range(self.n)]

    @property
    def errors(self):
        return [self.st.errors[i] for i in range(self.n)]


cdef class Sender:
    """Sends probes on connected raw ICMP sockets, one per link.

    sockets: connected SOCK_RAW/IPPROTO_ICMP sockets (bound to their device).
    templates: full ICMP message per link (8-byte echo header + payload) with
    checksum and sequence zero. seq_offset: offset of the probe's u64 sequence
    number within the message (native order, like the whole probe struct).
    stats: where the counters go (Stats; a private one by default).
    last_seq: the first round sends last_seq + 1; by default microseconds
    since boot, so a restarted sender never reuses a sequence the previous
    one used and the kernel's anti-replay window needs no reset.
    """
    cdef int fds[TP_MAX_LINKS]
    cdef uint8_t buf[TP_MAX_LINKS][MAX_PROBE]
    cdef int lens[TP_MAX_LINKS]
    cdef int n
    cdef int seq_off
    cdef long long interval_ns
    cdef volatile int stopping
    cdef Shared *st
    cdef readonly Stats stats
    cdef object _sockets

    def __init__(self, sockets, templates, int seq_offset, long long interval_ns, Stats stats=None,
                 last_seq=None):
        if len(sockets) > TP_MAX_LINKS:
            raise ValueError(f"{len(sockets)} links: at most {TP_MAX_LINKS} (TP_MAX_LINKS, ebpf/lib/layout.h)")
        if not sockets or len(sockets) != len(templates):
            raise ValueError("need at least one socket, and one template per socket")
        if interval_ns < 10_000:
            raise ValueError("interval below 10 us is not supported")
        for t in templates:
            _check_template(t, seq_offset)
        self.stats = stats if stats is not None else Stats(len(sockets))
        self.st = self.stats.st
        self._sockets = list(sockets)  # keep the fds alive
        self.n = len(sockets)
        self.seq_off = seq_offset
        self.interval_ns = interval_ns
        for i, (s, t) in enumerate(zip(sockets, templates)):
            self.fds[i] = s.fileno()
            self.lens[i] = len(t)
            memcpy(self.buf[i], <const char *>t, len(t))
        self.stats.reset(mono_ns() // 1000 if last_seq is None else last_seq)
        self.stopping = 0

    def stop(self):
        self.stopping = 1

    def run(self):
        """Blocks until stop(); call it from a dedicated thread."""
        with nogil:
            self._loop()

    cdef void _send_all(self) noexcept nogil:
        cdef int i
        cdef uint64_t seq = self.st.seq + 1
        for i in range(self.n):
            _fill_probe(self.buf[i], self.lens[i], self.seq_off, seq)
            if send(self.fds[i], self.buf[i], self.lens[i], 0) == self.lens[i]:
                self.st.sent[i] += 1
            else:
                self.st.errors[i] += 1  # e.g. no carrier: keep probing the others
        self.st.seq = seq

    cdef void _loop(self) noexcept nogil:
        cdef long long deadline
        cdef Period p
        prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)  # default 50 us slack would eat a 200 us period
        deadline = mono_ns()
        while not self.stopping:
            self._send_all()
            self.st.periods += 1
            p = _next_period(deadline, mono_ns(), self.interval_ns)
            deadline = p.deadline
            if p.late_ns:
                self.st.late_periods += 1
                if <unsigned long long>p.late_ns > self.st.max_late_ns:
                    self.st.max_late_ns = p.late_ns
                if <unsigned long long>p.late_ns > self.st.window_late_ns:
                    self.st.window_late_ns = p.late_ns
                self.st.skipped_periods += p.skipped
            if not p.skipped:
                sleep_until(deadline)
