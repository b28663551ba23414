# cython: cdivision=True, initializedcheck=False
"""Heartbeat RTT windows summarized for the failure detector, without the GIL.

The heartbeat program keeps, per link, a ring of the last replies: slot
s % slots holds (s, rtt_ns) once probe s was answered, an older or no
sequence otherwise. For the probes sent in a window [lo, hi) of at most one
ring, summarize() returns what the detector reads (a
fastpath.reference.WindowSummary); summarize_batch() does it for many windows
(ring, lo, hi) at once: every link each tick, or a long recorded trace in
sliding windows. fastpath.reference states both in plain Python, and
tests/unit/test_detect_fastpath.py holds the two to the same answers.

Rings are uint64 buffers whose slots lie side by side (numpy arrays,
array.array, ctypes arrays; the product does not depend on numpy); windows
any 2-D uint64 buffer or an iterable of triples.
"""
from cpython.buffer cimport PyObject_CheckBuffer
from libc.stdint cimport uint64_t, UINT64_MAX
from libc.stdlib cimport malloc, free

from array import array

from fastpath.reference import WindowSummary, batch_window_error, window_error

cdef extern from *:
    # gcc and clang on 64-bit targets. A window's RTT differences can sum past
    # 2**64 (up to slots - 1 of them, each below 2**64); their sum cannot pass 2**128.
    ctypedef unsigned long long u128 "unsigned __int128"


cdef struct Summary:
    uint64_t sent, answered, lost, rtt_p50_ns, rtt_p90_ns, rtt_min_ns, rtt_max_ns, jitter_ns, longest_gap


cdef enum:
    SORT_BELOW = 16     # parts this small are insertion-sorted


cdef inline Py_ssize_t _random_place(Py_ssize_t left, Py_ssize_t right, uint64_t *state) noexcept nogil:
    # xorshift64, scaled into [left, right) by a multiply rather than a division
    state[0] ^= state[0] << 13
    state[0] ^= state[0] >> 7
    state[0] ^= state[0] << 17
    return left + <Py_ssize_t>((<u128>state[0] * <u128>(right - left)) >> 64)


cdef inline uint64_t _pivot(const uint64_t *a, Py_ssize_t left, Py_ssize_t right, uint64_t *state) noexcept nogil:
    # The median of three values from pseudo-random places. RTTs come in runs
    # (rising, falling, both): fixed places such as the ends and the middle
    # keep picking the smallest of an organ pipe, and selection turns quadratic.
    cdef uint64_t x = a[_random_place(left, right, state)], y = a[_random_place(left, right, state)]
    cdef uint64_t z = a[_random_place(left, right, state)]
    if x > y:
        x, y = y, x
    if y > z:
        y = z
    return y if y > x else x


cdef inline void _partition3(const uint64_t *src, uint64_t *dst, Py_ssize_t left, Py_ssize_t right,
                             uint64_t pivot, Py_ssize_t *below, Py_ssize_t *above) noexcept nogil:
    # src[left:right) into dst[left:right): values below pivot from the left,
    # above it from the right. dst[below:above) is left holding leftovers:
    # the values there are all pivot. Each value is written to both ends and
    # only one end advances: no branch to mispredict on random RTTs.
    cdef Py_ssize_t i, lo = left, hi = right - 1
    cdef uint64_t v
    for i in range(left, right):
        v = src[i]
        dst[lo] = v
        dst[hi] = v
        lo += v < pivot
        hi -= v > pivot
    below[0] = lo
    above[0] = hi + 1


cdef inline uint64_t _sorted_at(uint64_t *a, Py_ssize_t left, Py_ssize_t right, Py_ssize_t k) noexcept nogil:
    # a[k] once a[left:right) is insertion-sorted: cheapest for a few values.
    cdef Py_ssize_t i, j
    cdef uint64_t v
    for i in range(left + 1, right):
        v = a[i]
        j = i
        while j > left and a[j - 1] > v:
            a[j] = a[j - 1]
            j -= 1
        a[j] = v
    return a[k]


cdef uint64_t _select(uint64_t *a, uint64_t *b, Py_ssize_t left, Py_ssize_t right, Py_ssize_t k,
                      uint64_t *state) noexcept nogil:
    # The value of rank k (from 0) of all values ranked, given that a[left:right)
    # holds those of ranks left .. right-1; b[left:right) is room. Scrambles both.
    cdef Py_ssize_t below, above
    cdef uint64_t pivot
    while right - left > SORT_BELOW:
        pivot = _pivot(a, left, right, state)
        _partition3(a, b, left, right, pivot, &below, &above)
        if below <= k < above:
            return pivot
        if k < below:
            right = below
        else:
            left = above
        a, b = b, a
    return _sorted_at(a, left, right, k)


cdef void _two_ranks(uint64_t *a, uint64_t *b, Py_ssize_t n, Py_ssize_t k1, Py_ssize_t k2,
                     uint64_t *v1, uint64_t *v2) noexcept nogil:
    # The values of ranks k1 <= k2 among a[:n]: partitions while both lie on
    # one side, then selects each in its own part.
    cdef Py_ssize_t left = 0, right = n, below, above
    cdef uint64_t pivot, state = 0x9E3779B97F4A7C15   # any nonzero seed: only the time taken depends on it
    while right - left > SORT_BELOW:
        pivot = _pivot(a, left, right, &state)
        _partition3(a, b, left, right, pivot, &below, &above)
        if k2 < below:
            right = below
        elif k1 >= above:
            left = above
        else:
            v1[0] = pivot if k1 >= below else _select(b, a, left, below, k1, &state)
            v2[0] = pivot if k2 < above else _select(b, a, above, right, k2, &state)
            return
        a, b = b, a
    v1[0] = _sorted_at(a, left, right, k1)
    v2[0] = a[k2]


cdef Summary _summarize(const uint64_t *ring_seq, const uint64_t *ring_rtt_ns, uint64_t slots,
                        uint64_t lo, uint64_t hi, uint64_t *rtts) noexcept nogil:
    # rtts: room for 2 (hi - lo) RTTs. The caller checked the window.
    cdef Summary w
    cdef uint64_t s, slot, rtt, gap = 0, longest_gap = 0, rtt_min = UINT64_MAX, rtt_max = 0
    cdef Py_ssize_t n = 0
    cdef u128 jitter_sum = 0
    slot = lo % slots if hi > lo else 0   # one division per window; the loop steps the slot
    s = lo
    while s < hi:
        if ring_seq[slot] == s:
            rtt = ring_rtt_ns[slot]
            if n:
                jitter_sum += rtt - rtts[n - 1] if rtt > rtts[n - 1] else rtts[n - 1] - rtt
            rtts[n] = rtt
            n += 1
            rtt_min = min(rtt_min, rtt)
            rtt_max = max(rtt_max, rtt)
            gap = 0
        else:
            gap += 1
            longest_gap = max(longest_gap, gap)
        s += 1
        slot += 1
        if slot == slots:
            slot = 0
    w.sent = hi - lo
    w.answered = n
    w.lost = w.sent - n
    w.longest_gap = longest_gap
    w.rtt_min_ns = rtt_min if n else 0
    w.rtt_max_ns = rtt_max
    w.jitter_ns = <uint64_t>(jitter_sum // <u128>(n - 1)) if n > 1 else 0
    w.rtt_p50_ns = w.rtt_p90_ns = 0
    if n:
        # Nearest rank: p50 is the ceil(n/2)-th smallest, p90 the ceil(9n/10)-th.
        _two_ranks(rtts, rtts + n, n, (n + 1) // 2 - 1, (9 * n + 9) // 10 - 1, &w.rtt_p50_ns, &w.rtt_p90_ns)
    return w


cdef _as_summary(Summary w):
    # tuple.__new__ skips the NamedTuple's Python-level __new__: half the cost per window.
    return tuple.__new__(WindowSummary, (w.sent, w.answered, w.lost, w.rtt_p50_ns, w.rtt_p90_ns, w.rtt_min_ns,
                                         w.rtt_max_ns, w.jitter_ns, w.longest_gap))


cdef _check_side_by_side(Py_ssize_t slots, Py_ssize_t seq_stride, Py_ssize_t rtt_stride):
    # The loop walks a ring by pointer; a strided view (ring[::2]) would be misread.
    if slots > 1 and (seq_stride != sizeof(uint64_t) or rtt_stride != sizeof(uint64_t)):
        raise ValueError("a ring's slots are not side by side: need a stride of 8 bytes between slots")


def summarize(ring_seq, ring_rtt_ns, lo, hi):
    """The WindowSummary of probes lo .. hi-1 from one ring: ring_seq and
    ring_rtt_ns are 1-D uint64 buffers of one length, slots side by side."""
    cdef const uint64_t[:] seqs = ring_seq
    cdef const uint64_t[:] rtts = ring_rtt_ns
    if seqs.shape[0] != rtts.shape[0]:
        raise ValueError(f"ring_seq has {seqs.shape[0]} slots, ring_rtt_ns {rtts.shape[0]}: need one RTT per slot")
    _check_side_by_side(seqs.shape[0], seqs.strides[0], rtts.strides[0])
    if (error := window_error(seqs.shape[0], lo, hi)) is not None:
        raise ValueError(f"window {error}")
    cdef uint64_t first = lo, end = hi
    cdef uint64_t *scratch = <uint64_t *>malloc(2 * max(end - first, <uint64_t>1) * sizeof(uint64_t))
    cdef Summary w
    if scratch == NULL:
        raise MemoryError()
    with nogil:
        w = _summarize(&seqs[0] if seqs.shape[0] else NULL, &rtts[0] if rtts.shape[0] else NULL, seqs.shape[0],
                       first, end, scratch)
    free(scratch)
    return _as_summary(w)


cdef const uint64_t[:, :] _window_rows(windows, Py_ssize_t rings, Py_ssize_t slots):
    # A 2-D uint64 buffer of rows (ring, lo, hi) as it is; an iterable of
    # (ring, lo, hi) copied into one, each row checked as the reference checks
    # it. None: no windows (a memoryview cannot take the shape (0, 3)).
    if PyObject_CheckBuffer(windows):
        return windows
    rows = array("Q")
    for index, window in enumerate(windows):
        if (error := batch_window_error(index, window, rings, slots)) is not None:
            raise ValueError(error)
        rows.extend(window)
    return memoryview(rows).cast("B").cast("Q", (len(rows) // 3, 3)) if rows else None


cdef Py_ssize_t _first_bad_window(const uint64_t[:, :] rows, uint64_t rings, uint64_t slots,
                                  uint64_t *longest) noexcept nogil:
    # Index of the first row that is no window of the rings (-1: none is), and the longest window.
    cdef Py_ssize_t i
    longest[0] = 0
    for i in range(rows.shape[0]):
        if rows[i, 0] >= rings or rows[i, 2] < rows[i, 1] or rows[i, 2] - rows[i, 1] > slots:
            return i
        if rows[i, 2] - rows[i, 1] > longest[0]:
            longest[0] = rows[i, 2] - rows[i, 1]
    return -1


def summarize_batch(ring_seq, ring_rtt_ns, windows):
    """The WindowSummary of each window (ring, lo, hi), in order.

    ring_seq, ring_rtt_ns: 2-D uint64 buffers of one shape (rings, slots),
    each ring's slots side by side (rings may lie apart).
    windows: a 2-D uint64 buffer of shape (windows, 3), or an iterable of
    (ring, lo, hi) triples.
    """
    cdef const uint64_t[:, :] seqs = ring_seq
    cdef const uint64_t[:, :] rtts = ring_rtt_ns
    if seqs.shape[0] != rtts.shape[0] or seqs.shape[1] != rtts.shape[1]:
        raise ValueError("ring_seq and ring_rtt_ns are not of one shape (rings, slots): need one RTT per slot")
    _check_side_by_side(seqs.shape[1], seqs.strides[1], rtts.strides[1])
    cdef const uint64_t[:, :] rows = _window_rows(windows, seqs.shape[0], seqs.shape[1])
    if rows is None or rows.shape[0] == 0:
        return []
    if rows.shape[1] != 3:
        raise ValueError(batch_window_error(0, tuple(rows[0]), seqs.shape[0], seqs.shape[1]))
    cdef uint64_t longest
    cdef Py_ssize_t i, ring, bad = _first_bad_window(rows, seqs.shape[0], seqs.shape[1], &longest)
    if bad >= 0:
        raise ValueError(batch_window_error(bad, tuple(rows[bad]), seqs.shape[0], seqs.shape[1]))
    cdef uint64_t *scratch = <uint64_t *>malloc(2 * max(longest, <uint64_t>1) * sizeof(uint64_t))
    cdef Summary *summaries = <Summary *>malloc(max(rows.shape[0], 1) * sizeof(Summary))
    try:
        if scratch == NULL or summaries == NULL:
            raise MemoryError()
        with nogil:
            for i in range(rows.shape[0]):
                ring = <Py_ssize_t>rows[i, 0]
                summaries[i] = _summarize(&seqs[ring, 0], &rtts[ring, 0], seqs.shape[1], rows[i, 1], rows[i, 2],
                                          scratch)
        return [_as_summary(summaries[i]) for i in range(rows.shape[0])]
    finally:
        free(scratch)
        free(summaries)
