"""Constant-rate datagram sender for lab streams, without the GIL.

Each datagram carries a big-endian u64 sequence number and the u64 monotonic
time it was meant to leave at (not when it did), so receivers measure against
the intended schedule and a stalled sender cannot hide its stall.
"""
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memset
from libc.stdlib cimport malloc, free
from fastpath._ctime cimport mono_ns, sleep_until, prctl, PR_SET_TIMERSLACK, send


cdef inline void put_be64(uint8_t *p, uint64_t v) noexcept nogil:
    cdef int k
    for k in range(8):
        p[k] = <uint8_t>(v >> (56 - 8 * k))


def send_stream(sock, double rate_pps, unsigned long long count, int size=64,
                long long start_ns=0, unsigned long long first_seq=0):
    """Sends `count` datagrams on connected `sock` at `rate_pps`, starting at
    monotonic `start_ns` (now if 0). Returns (sent, errors, first_ns, last_ns)."""
    if rate_pps <= 0 or rate_pps > 2_000_000:
        raise ValueError("rate must be in (0, 2e6] packets/s")
    if not 16 <= size <= 9000:
        raise ValueError("size must be 16..9000 bytes")
    cdef int fd = sock.fileno()
    cdef double period = 1e9 / rate_pps
    cdef unsigned long long i, sent = 0, errors = 0
    cdef long long t0, due, first_ns = 0, last_ns = 0
    cdef uint8_t *buf = <uint8_t *>malloc(size)
    if buf == NULL:
        raise MemoryError()
    memset(buf, 0, size)
    with nogil:
        prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
        t0 = start_ns if start_ns > 0 else mono_ns()
        for i in range(count):
            due = t0 + <long long>(i * period)
            sleep_until(due)
            put_be64(buf, first_seq + i)
            put_be64(buf + 8, <uint64_t>due)
            if send(fd, buf, size, 0) == size:
                sent += 1
            else:
                errors += 1
            if i == 0:
                first_ns = mono_ns()
        last_ns = mono_ns()
    free(buf)
    return sent, errors, first_ns, last_ns
