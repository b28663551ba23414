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
     * without the GIL on another thread. */
    static inline unsigned long long tp_take(unsigned long long *p)
    { return __atomic_exchange_n(p, 0ULL, __ATOMIC_RELAXED); }
    """
    unsigned long long tp_take(unsigned long long *p) nogil

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


cdef class Sender:
    """Sends probes on connected raw ICMP sockets, one per link.

    sockets: connected SOCK_RAW/IPPROTO_ICMP sockets (bound to their device).
    templates: full ICMP message per link (8-byte echo header + payload) with
    checksum and sequence zero. seq_offset: offset of the probe's u64 sequence
    number within the message (native order, like the whole probe struct).
    """
    cdef int fds[TP_MAX_LINKS]
    cdef uint8_t buf[TP_MAX_LINKS][MAX_PROBE]
    cdef int lens[TP_MAX_LINKS]
    cdef int n
    cdef int seq_off
    cdef long long interval_ns
    cdef volatile int stopping
    cdef public unsigned long long periods, late_periods, skipped_periods, max_late_ns
    cdef unsigned long long window_late_ns  # the longest lateness since take_late_ns()
    cdef unsigned long long sent_[TP_MAX_LINKS]
    cdef unsigned long long errors_[TP_MAX_LINKS]
    cdef uint64_t seq
    cdef object _sockets

    def __init__(self, sockets, templates, int seq_offset, long long interval_ns):
        if len(sockets) > TP_MAX_LINKS:
            raise ValueError(f"{len(sockets)} links: at most {TP_MAX_LINKS} (TP_MAX_LINKS, ebpf/lib/layout.h)")
        if not sockets or len(sockets) != len(templates):
            raise ValueError("need at least one socket, and one template per socket")
        if interval_ns < 10_000:
            raise ValueError("interval below 10 us is not supported")
        for t in templates:
            _check_template(t, seq_offset)
        self._sockets = list(sockets)  # keep the fds alive
        self.n = len(sockets)
        self.seq_off = seq_offset
        self.interval_ns = interval_ns
        for i, (s, t) in enumerate(zip(sockets, templates)):
            self.fds[i] = s.fileno()
            self.lens[i] = len(t)
            memcpy(self.buf[i], <const char *>t, len(t))
            self.sent_[i] = 0
            self.errors_[i] = 0
        # Microseconds since boot: a restarted sender never reuses a sequence
        # the previous one used, so the kernel's anti-replay window needs no reset.
        self.seq = mono_ns() // 1000
        self.periods = self.late_periods = self.skipped_periods = self.max_late_ns = 0
        self.window_late_ns = 0
        self.stopping = 0

    def stop(self):
        self.stopping = 1

    @property
    def last_seq(self):
        """The sequence of the latest round sent (every link's probe carries it)."""
        return self.seq

    def take_late_ns(self):
        """The longest the sender was late for a round since the last call:
        how long this host kept the sender off the CPU. (A value stored just
        as it is taken may be kept for the next call: an overstatement, never
        a loss.)"""
        return tp_take(&self.window_late_ns)

    @property
    def sent(self):
        return [self.sent_[i] for i in range(self.n)]

    @property
    def errors(self):
        return [self.errors_[i] for i in range(self.n)]

    def run(self):
        """Blocks until stop(); call it from a dedicated thread."""
        with nogil:
            self._loop()

    cdef void _send_all(self) noexcept nogil:
        cdef int i
        self.seq += 1
        for i in range(self.n):
            _fill_probe(self.buf[i], self.lens[i], self.seq_off, self.seq)
            if send(self.fds[i], self.buf[i], self.lens[i], 0) == self.lens[i]:
                self.sent_[i] += 1
            else:
                self.errors_[i] += 1  # e.g. no carrier: keep probing the others

    cdef void _loop(self) noexcept nogil:
        cdef long long deadline
        cdef Period p
        prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)  # default 50 us slack would eat a 200 us period
        deadline = mono_ns()
        while not self.stopping:
            self._send_all()
            self.periods += 1
            p = _next_period(deadline, mono_ns(), self.interval_ns)
            deadline = p.deadline
            if p.late_ns:
                self.late_periods += 1
                if <unsigned long long>p.late_ns > self.max_late_ns:
                    self.max_late_ns = p.late_ns
                if <unsigned long long>p.late_ns > self.window_late_ns:
                    self.window_late_ns = p.late_ns
                self.skipped_periods += p.skipped
            if not p.skipped:
                sleep_until(deadline)
