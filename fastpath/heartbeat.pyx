"""Heartbeat sender: one ICMP echo probe per link per period, without the GIL.

The probe bytes come from Python (appliance.layout builds them from the one
layout definition); this loop only writes the sequence number, fixes the ICMP
checksum and sends. Send times and MACs are not made here: the heartbeat
egress BPF program stamps and signs each probe in the kernel, so the jitter of
this loop never enters an RTT and the key stays in the kernel. It only has to
keep probes coming often enough.
"""
from libc.string cimport memcpy
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from fastpath._ctime cimport mono_ns, sleep_until, prctl, PR_SET_TIMERSLACK, send

DEF MAX_LINKS = 16
DEF MAX_PROBE = 128

cdef inline uint16_t inet_csum(const uint8_t *p, int n) noexcept nogil:
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


cdef class Sender:
    """Sends probes on connected raw ICMP sockets, one per link.

    sockets: connected SOCK_RAW/IPPROTO_ICMP sockets (bound to their device).
    templates: full ICMP message per link (8-byte echo header + payload) with
    checksum and sequence zero. seq_offset: offset of the probe's u64 sequence
    number within the message (native order, like the whole probe struct).
    """
    cdef int fds[MAX_LINKS]
    cdef uint8_t buf[MAX_LINKS][MAX_PROBE]
    cdef int lens[MAX_LINKS]
    cdef int n
    cdef int seq_off
    cdef long long interval_ns
    cdef volatile int stopping
    cdef public unsigned long long periods, late_periods, skipped_periods, max_late_ns
    cdef unsigned long long sent_[MAX_LINKS]
    cdef unsigned long long errors_[MAX_LINKS]
    cdef uint64_t seq
    cdef object _sockets

    def __init__(self, sockets, templates, int seq_offset, long long interval_ns):
        if not 0 < len(sockets) <= MAX_LINKS or len(sockets) != len(templates):
            raise ValueError(f"need 1..{MAX_LINKS} sockets, one template each")
        if interval_ns < 10_000:
            raise ValueError("interval below 10 us is not supported")
        self._sockets = list(sockets)  # keep the fds alive
        self.n = len(sockets)
        self.seq_off = seq_offset
        self.interval_ns = interval_ns
        for i, (s, t) in enumerate(zip(sockets, templates)):
            if not 8 <= len(t) <= MAX_PROBE or seq_offset + 8 > len(t):
                raise ValueError("probe template has a bad size")
            self.fds[i] = s.fileno()
            self.lens[i] = len(t)
            memcpy(self.buf[i], <const char *>t, len(t))
            self.sent_[i] = 0
            self.errors_[i] = 0
        # Microseconds since boot: a restarted sender never reuses a sequence
        # the previous one used, so the kernel's anti-replay window needs no reset.
        self.seq = mono_ns() // 1000
        self.periods = self.late_periods = self.skipped_periods = self.max_late_ns = 0
        self.stopping = 0

    def stop(self):
        self.stopping = 1

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
        cdef uint16_t c
        cdef uint8_t *b
        self.seq += 1
        for i in range(self.n):
            b = self.buf[i]
            b[2] = 0
            b[3] = 0
            b[6] = <uint8_t>(self.seq >> 8)
            b[7] = <uint8_t>self.seq
            memcpy(b + self.seq_off, &self.seq, 8)
            c = inet_csum(b, self.lens[i])
            b[2] = <uint8_t>(c >> 8)
            b[3] = <uint8_t>c
            if send(self.fds[i], b, self.lens[i], 0) == self.lens[i]:
                self.sent_[i] += 1
            else:
                self.errors_[i] += 1  # e.g. no carrier: keep probing the others

    cdef void _loop(self) noexcept nogil:
        cdef long long deadline, now, late
        prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)  # default 50 us slack would eat a 200 us period
        deadline = mono_ns()
        while not self.stopping:
            self._send_all()
            self.periods += 1
            deadline += self.interval_ns
            now = mono_ns()
            late = now - deadline
            if late > 0:
                self.late_periods += 1
                if <unsigned long long>late > self.max_late_ns:
                    self.max_late_ns = late
                if late > self.interval_ns:
                    # Stalled for whole periods: resume the cadence from now
                    # instead of bursting the missed probes.
                    self.skipped_periods += late // self.interval_ns
                    deadline = now
                    continue
            sleep_until(deadline)
