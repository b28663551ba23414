"""fastpath.detect's Cython against fastpath.reference, no privileges needed."""
import array
import ctypes
import json
from pathlib import Path

import numpy as np
import pytest

from bench import detect_speed
from fastpath import detect, reference
from fastpath.reference import WindowSummary

SLOTS = 256                  # TP_RTT_RING
HEAD = 10**12 - 10**12 % SLOTS   # sequences are microseconds since boot; HEAD % SLOTS == 0


def make_ring(replies: dict[int, int], slots: int = SLOTS) -> tuple[np.ndarray, np.ndarray]:
    """The ring after the replies {seq: rtt_ns}, the later of two sharing a slot kept."""
    ring_seq, ring_rtt_ns = np.zeros(slots, np.uint64), np.zeros(slots, np.uint64)
    for seq, rtt in sorted(replies.items()):
        ring_seq[seq % slots], ring_rtt_ns[seq % slots] = seq, rtt
    return ring_seq, ring_rtt_ns


def summarize_both(ring_seq, ring_rtt_ns, lo: int, hi: int) -> WindowSummary:
    """The one answer of the Cython and the reference."""
    fast = detect.summarize(ring_seq, ring_rtt_ns, lo, hi)
    assert type(fast) is WindowSummary
    assert fast == reference.summarize(ring_seq, ring_rtt_ns, lo, hi)
    return fast


def test_odd_count_worked_by_hand():
    ring = make_ring({HEAD: 50, HEAD + 1: 10, HEAD + 3: 40, HEAD + 4: 20, HEAD + 9: 30})
    # jitter: (|10-50| + |40-10| + |20-40| + |30-20|) / 4; gap: HEAD+5 .. HEAD+8
    assert summarize_both(*ring, HEAD, HEAD + 10) == WindowSummary(
        sent=10, answered=5, lost=5, rtt_p50_ns=30, rtt_p90_ns=50, rtt_min_ns=10, rtt_max_ns=50, jitter_ns=25,
        longest_gap=4)


def test_even_count_takes_the_lower_median():
    ring = make_ring({HEAD: 50, HEAD + 1: 10, HEAD + 2: 60, HEAD + 3: 40, HEAD + 4: 20, HEAD + 9: 30})
    # sorted 10 20 30 40 50 60: p50 is the 3rd, p90 the ceil(5.4) = 6th; jitter (40+50+20+20+10) / 5
    assert summarize_both(*ring, HEAD, HEAD + 10) == WindowSummary(10, 6, 4, 30, 60, 10, 60, 28, 4)


@pytest.mark.parametrize("lo", [0, HEAD, HEAD + 77, 2**64 - 1])
def test_empty_window_is_all_zero(lo):
    assert summarize_both(*make_ring({HEAD: 5}), lo, lo) == WindowSummary(0, 0, 0, 0, 0, 0, 0, 0, 0)
    empty = np.zeros(0, np.uint64)
    assert summarize_both(empty, empty, lo, lo) == WindowSummary(0, 0, 0, 0, 0, 0, 0, 0, 0)


def test_nothing_answered_is_one_gap_and_no_rtt():
    assert summarize_both(*make_ring({}), HEAD, HEAD + 100) == WindowSummary(100, 0, 100, 0, 0, 0, 0, 0, 100)


def test_one_answered():
    ring = make_ring({HEAD + 7: 1234})
    assert summarize_both(*ring, HEAD, HEAD + 20) == WindowSummary(20, 1, 19, 1234, 1234, 1234, 1234, 0, 12)


def test_whole_ring_all_answered():
    ring = make_ring({s: 1000 + s % 7 for s in range(HEAD, HEAD + SLOTS)})
    summary = summarize_both(*ring, HEAD, HEAD + SLOTS)
    assert (summary.sent, summary.answered, summary.lost, summary.longest_gap) == (SLOTS, SLOTS, 0, 0)
    assert (summary.rtt_min_ns, summary.rtt_max_ns) == (1000, 1006)


def test_window_wrapping_past_the_last_slot():
    lo = HEAD + SLOTS - 6    # slots 250 .. 255, then 0 .. 5
    ring = make_ring({lo: 10, lo + 5: 20, lo + 6: 30, lo + 11: 40})
    assert summarize_both(*ring, lo, lo + 12) == WindowSummary(12, 4, 8, 20, 40, 10, 40, 10, 4)


def test_slots_of_other_laps_are_not_answers():
    # Each slot holds the reply of the lap before or after the window's: no reply to the window's probes.
    replies = {s - SLOTS: 100 for s in range(HEAD, HEAD + 128)}
    replies |= {s + SLOTS: 100 for s in range(HEAD + 128, HEAD + 200)}
    assert summarize_both(*make_ring(replies), HEAD, HEAD + 200) == WindowSummary(200, 0, 200, 0, 0, 0, 0, 0, 200)
    del replies[HEAD + 150 + SLOTS]
    replies[HEAD + 150] = 7
    assert summarize_both(*make_ring(replies), HEAD, HEAD + 200) == WindowSummary(200, 1, 199, 7, 7, 7, 7, 0, 150)


def test_jitter_is_floored():
    ring = make_ring({HEAD: 0, HEAD + 1: 1, HEAD + 2: 1})
    assert summarize_both(*ring, HEAD, HEAD + 3).jitter_ns == 0    # (1 + 0) / 2
    ring = make_ring({HEAD: 0, HEAD + 1: 3, HEAD + 2: 1})
    assert summarize_both(*ring, HEAD, HEAD + 3).jitter_ns == 2    # (3 + 2) / 2


def test_extreme_rtts_do_not_overflow():
    # 255 differences of 2**64 - 1 each: their sum passes 2**64.
    ring = make_ring({s: (2**64 - 1) * (s % 2) for s in range(HEAD, HEAD + SLOTS)})
    summary = summarize_both(*ring, HEAD, HEAD + SLOTS)
    assert summary.jitter_ns == 2**64 - 1
    assert (summary.rtt_p50_ns, summary.rtt_p90_ns, summary.rtt_min_ns, summary.rtt_max_ns) == (0, 2**64 - 1, 0,
                                                                                               2**64 - 1)


@pytest.mark.parametrize("rtts", [
    list(range(SLOTS)), list(range(SLOTS, 0, -1)), [min(i, SLOTS - i) for i in range(SLOTS)],   # sorted, organ pipe
    [i % 8 for i in range(SLOTS)], [5] * SLOTS, [i % 2 for i in range(SLOTS)],                 # sawtooth, ties
], ids=["rising", "falling", "organ-pipe", "sawtooth", "all-equal", "two-values"])
@pytest.mark.parametrize("length", [1, 2, 3, 16, 17, 100, SLOTS])
def test_ordered_and_tied_rtts(rtts, length):
    ring = make_ring({HEAD + i: rtt for i, rtt in enumerate(rtts)})
    summarize_both(*ring, HEAD, HEAD + length)


def test_other_ring_lengths():
    for slots in (1, 3, 1000):
        replies = {s: s % 97 for s in range(HEAD, HEAD + slots) if s % 5}
        for lo, hi in ((HEAD, HEAD + slots), (HEAD + 1, HEAD + slots), (HEAD + slots // 2, HEAD + slots // 2 + 1)):
            summarize_both(*make_ring(replies, slots), lo, hi)


def _random_rings(rng: np.random.Generator, rings: int, slots: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Rings as the heartbeat program leaves them around sequence head, and head."""
    head = int(rng.integers(slots, 2**62))
    seqs = np.arange(head - slots, head, dtype=np.uint64)
    ring_seq = np.empty((rings, slots), np.uint64)
    for r in range(rings):
        answered = rng.random(slots) < rng.choice([0.0, 0.3, 0.9, 1.0])
        lap_after = rng.random(slots) < 0.1
        ring_seq[r, seqs % slots] = np.where(answered, seqs, np.where(lap_after, seqs + slots, seqs - slots))
    top = [2, 100, 10**6, 2**64 - 1][rng.integers(4)]   # ties galore, ..., any u64
    ring_rtt_ns = rng.integers(0, top, (rings, slots), dtype=np.uint64, endpoint=True)
    return ring_seq, ring_rtt_ns, head


def test_matches_reference_on_random_rings_and_windows():
    rng = np.random.default_rng(11)
    checked = 0
    for _ in range(150):
        slots = int(rng.choice([SLOTS, SLOTS, SLOTS, 1, 7, 40]))
        rings = int(rng.integers(1, 5))
        ring_seq, ring_rtt_ns, head = _random_rings(rng, rings, slots)
        lengths = rng.integers(0, slots + 1, 20)
        his = head + rng.integers(-slots, slots // 2 + 1, 20)   # within the ring, partly beyond, partly before
        windows = np.stack([rng.integers(0, rings, 20), his - lengths, his], axis=1).astype(np.uint64)
        fast = detect.summarize_batch(ring_seq, ring_rtt_ns, windows)
        assert fast == reference.summarize_batch(ring_seq.tolist(), ring_rtt_ns.tolist(), windows.tolist())
        for (ring, lo, hi), summary in zip(windows.tolist(), fast):
            assert detect.summarize(ring_seq[ring], ring_rtt_ns[ring], lo, hi) == summary
        checked += len(fast)
    assert checked == 3000


def test_batch_takes_windows_as_array_list_or_iterator():
    ring_seq, ring_rtt_ns, head = _random_rings(np.random.default_rng(3), 3, SLOTS)
    windows = [(0, head - SLOTS, head), (2, head - 10, head), (1, head, head), (1, head - 100, head + 50)]
    expected = [reference.summarize(ring_seq[r], ring_rtt_ns[r], lo, hi) for r, lo, hi in windows]
    assert detect.summarize_batch(ring_seq, ring_rtt_ns, windows) == expected
    assert detect.summarize_batch(ring_seq, ring_rtt_ns, np.array(windows, np.uint64)) == expected
    assert detect.summarize_batch(ring_seq, ring_rtt_ns, iter(windows)) == expected
    assert reference.summarize_batch(ring_seq, ring_rtt_ns, iter(windows)) == expected
    for empty in ([], iter([]), np.zeros((0, 3), np.uint64)):
        assert detect.summarize_batch(ring_seq, ring_rtt_ns, empty) == []


def test_rings_from_array_and_ctypes_buffers():
    # The product does not depend on numpy: a BCC map value is a ctypes array.
    ring_seq, ring_rtt_ns = make_ring({s: s % 1000 for s in range(HEAD, HEAD + 200) if s % 3})
    expected = reference.summarize(ring_seq, ring_rtt_ns, HEAD, HEAD + SLOTS)
    as_array = (array.array("Q", ring_seq.tolist()), array.array("Q", ring_rtt_ns.tolist()))
    as_ctypes = ((ctypes.c_uint64 * SLOTS)(*ring_seq.tolist()), (ctypes.c_uint64 * SLOTS)(*ring_rtt_ns.tolist()))
    assert detect.summarize(*as_array, HEAD, HEAD + SLOTS) == expected
    assert detect.summarize(*as_ctypes, HEAD, HEAD + SLOTS) == expected
    links = ((ctypes.c_uint64 * SLOTS) * 2)(*[as_ctypes[0]] * 2), ((ctypes.c_uint64 * SLOTS) * 2)(*[as_ctypes[1]] * 2)
    assert detect.summarize_batch(*links, [(1, HEAD, HEAD + SLOTS)]) == [expected]


RING = make_ring({HEAD + 1: 10})
RINGS = (np.stack([RING[0]] * 2), np.stack([RING[1]] * 2))
BAD_INPUTS = {
    "window longer than the ring": ("summarize", (*RING, HEAD, HEAD + SLOTS + 1),
                                    "257 sequences, more than the ring's 256"),
    "fewer RTTs than sequences": ("summarize", (RING[0], RING[1][:100], HEAD, HEAD + 1), "one RTT per slot"),
    "hi below lo": ("summarize", (*RING, HEAD + 1, HEAD), r"need 0 <= lo <= hi"),
    "negative lo": ("summarize", (*RING, -1, 3), r"need 0 <= lo <= hi"),
    "hi past 2**64": ("summarize", (*RING, 2**64 - 1, 2**64), r"hi < 2\*\*64"),
    "batch of ring shapes apart": ("summarize_batch", (RINGS[0], RINGS[1][:, :100], []), "one RTT per slot"),
    "batch of ring counts apart": ("summarize_batch", (RINGS[0], RINGS[1][:1], []), "one RTT per slot"),
    "batch window longer than the ring": ("summarize_batch", (*RINGS, [(0, HEAD, HEAD + 1), (1, 0, 300)]),
                                          "window 1 of ring 1 .*300 sequences"),
    "batch array window longer than the ring": ("summarize_batch", (*RINGS, np.array([[0, 0, 300]], np.uint64)),
                                                "window 0 of ring 0 .*300 sequences"),
    "batch window of a missing ring": ("summarize_batch", (*RINGS, [(0, 0, 1), (2, 0, 1)]),
                                       "window 1: no ring 2 among 2"),
    "batch window of two values": ("summarize_batch", (*RINGS, [(0, 0)]), r"window 0: 2 values, not \(ring, lo, hi\)"),
    "batch array of four columns": ("summarize_batch", (*RINGS, np.ones((2, 4), np.uint64)), "window 0: 4 values"),
    "batch window below zero": ("summarize_batch", (*RINGS, [(0, -1, 1)]), r"window 0 of ring 0 \[-1, 1\)"),
}


@pytest.mark.parametrize("function, args, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_refused_alike(function, args, message):
    with pytest.raises(ValueError, match=message) as fast:
        getattr(detect, function)(*args)
    with pytest.raises(ValueError) as slow:
        getattr(reference, function)(*args)
    assert str(fast.value) == str(slow.value)


@pytest.mark.parametrize("ring_seq, message", [
    (np.zeros(SLOTS, np.int64), "dtype mismatch"),                # signed: not what the kernel wrote
    (np.zeros((2, SLOTS), np.uint64), "wrong number of dimensions"),
    (np.zeros(2 * SLOTS, np.uint64)[::2], "not side by side"),
])
def test_rings_of_the_wrong_form_are_refused(ring_seq, message):
    with pytest.raises(ValueError, match=message):
        detect.summarize(ring_seq, np.zeros(SLOTS, np.uint64), HEAD, HEAD + 1)


def test_rings_may_lie_apart_but_not_their_slots():
    # e.g. the rings of a per-link struct {seq[256], rtt_ns[256]}: one view of each array across links
    links = np.zeros((3, 2, SLOTS), np.uint64)
    links[:, 0], links[:, 1] = make_ring({s: s % 50 for s in range(HEAD, HEAD + 300) if s % 4})
    windows = [(link, HEAD + 44, HEAD + 300) for link in range(3)]
    expected = reference.summarize_batch(links[:, 0], links[:, 1], windows)
    assert detect.summarize_batch(links[:, 0], links[:, 1], windows) == expected
    with pytest.raises(ValueError, match="not side by side"):
        detect.summarize_batch(links[:, 0, ::2], links[:, 1, ::2], [(0, HEAD, HEAD + 1)])


def test_speed_measurement_compares_equal_answers():
    result = detect_speed.measure(windows=300, seed=2)
    assert set(result) == {"batch_windows", "python_ns_per_window", "cython_ns_per_window", "speedup"}
    assert result["batch_windows"] == 300
    # Far below the 20x goal, so a busy machine cannot fail it; measure() itself checks the answers are equal.
    assert result["speedup"] > 2


RECORDED = json.loads((Path(__file__).parent / "data" / "rtt_rings.json").read_text())


@pytest.mark.parametrize("snapshot", RECORDED, ids=[s["condition"] for s in RECORDED])
def test_cython_equals_the_reference_on_rings_recorded_in_the_lab(snapshot):
    """tp_rtt_ring as a lab daemon's kernel filled it (link A: normal, then
    300 us delay with 800 us jitter, then 20 % loss; read with bpftool), every
    window ending at its newest sequence and a sliding 20-probe window."""
    seqs, rtts = array.array("Q", snapshot["seq"]), array.array("Q", snapshot["rtt_ns"])
    top = max(snapshot["seq"]) + 1
    windows = [(top - n, top) for n in range(0, 257)] + [(lo, lo + 20) for lo in range(top - 256, top - 19)]
    got = [detect.summarize(seqs, rtts, lo, hi) for lo, hi in windows]
    assert got == [reference.summarize(snapshot["seq"], snapshot["rtt_ns"], lo, hi) for lo, hi in windows]
    whole = got[256]
    if snapshot["condition"].startswith("loss"):
        assert whole.lost > 20          # the recording saw the fault it names
    else:
        assert whole.lost < 5 and whole.rtt_max_ns > whole.rtt_min_ns
