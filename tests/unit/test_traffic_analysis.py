"""analyze_stream and the TCP record check, on hand-built inputs (no root)."""
import json
import struct

import numpy as np
import pytest

from lab.traffic import ARRIVAL_DTYPE, MAX_LOST_RANGES, RecordStream, analyze_stream

PRIMARY, STANDBY = 2, 3


def arrivals(seqs, times=None, ifindexes=None):
    """Arrival records in the given order; by default 1 ms apart via PRIMARY."""
    n = len(seqs)
    out = np.empty(n, dtype=ARRIVAL_DTYPE)
    out["seq"] = seqs
    out["t_ns"] = times if times is not None else [1_000_000 * (i + 1) for i in range(n)]
    out["ifindex"] = ifindexes if ifindexes is not None else [PRIMARY] * n
    return out


def test_clean_stream():
    result = analyze_stream(arrivals(range(10)), sent=10, fault_ns=None, standby_ifindex=None)
    assert result == {
        "sent": 10, "received": 10, "lost": 0, "duplicated": 0, "reordered": 0, "unexpected": 0,
        "first_standby_ns": None, "lost_seqs_ranges": [], "lost_ranges_total": 0,
        "max_gap_us": 1000.0, "max_gap_start_ns": 1_000_000,
    }
    json.dumps(result)  # the scenario runner writes it out as JSON


def test_loss_ranges_include_head_and_tail():
    result = analyze_stream(arrivals([2, 3, 6, 7, 10]), sent=13, fault_ns=None, standby_ifindex=None)
    assert result["received"] == 5
    assert result["lost"] == 8
    assert result["lost_seqs_ranges"] == [[0, 1], [4, 5], [8, 9], [11, 12]]
    assert result["lost_ranges_total"] == 4


def test_loss_ranges_are_capped():
    result = analyze_stream(arrivals(range(0, 300, 2)), sent=300, fault_ns=None, standby_ifindex=None)
    assert result["lost"] == 150
    assert result["lost_ranges_total"] == 150
    assert len(result["lost_seqs_ranges"]) == MAX_LOST_RANGES
    assert result["lost_seqs_ranges"][0] == [1, 1]
    assert result["lost_seqs_ranges"][-1] == [2 * MAX_LOST_RANGES - 1, 2 * MAX_LOST_RANGES - 1]


def test_duplicates_are_counted_once_and_not_as_reordering():
    result = analyze_stream(arrivals([0, 1, 1, 2, 1, 3, 3]), sent=4, fault_ns=None, standby_ifindex=None)
    assert result["received"] == 4
    assert result["lost"] == 0
    assert result["duplicated"] == 3
    assert result["reordered"] == 0


def test_reordering_counts_late_first_arrivals():
    # 1 arrives after 2; 4 and 5 both arrive after 6.
    result = analyze_stream(arrivals([0, 2, 1, 3, 6, 4, 5, 7]), sent=8, fault_ns=None, standby_ifindex=None)
    assert result["reordered"] == 3
    assert result["duplicated"] == 0
    assert result["lost"] == 0


def test_late_duplicate_of_reordered_packet_counts_once():
    result = analyze_stream(arrivals([0, 2, 1, 1, 3]), sent=4, fault_ns=None, standby_ifindex=None)
    assert result["reordered"] == 1
    assert result["duplicated"] == 1


def test_first_standby_arrival_at_or_after_fault():
    # A stray standby packet before the fault must not count as the failover.
    times = [100, 200, 300, 400, 500, 600]
    ifindexes = [PRIMARY, STANDBY, PRIMARY, PRIMARY, STANDBY, STANDBY]
    stream = arrivals(range(6), times, ifindexes)
    assert analyze_stream(stream, 6, fault_ns=250, standby_ifindex=STANDBY)["first_standby_ns"] == 500
    assert analyze_stream(stream, 6, fault_ns=500, standby_ifindex=STANDBY)["first_standby_ns"] == 500
    assert analyze_stream(stream, 6, fault_ns=601, standby_ifindex=STANDBY)["first_standby_ns"] is None
    assert analyze_stream(stream, 6, fault_ns=None, standby_ifindex=STANDBY)["first_standby_ns"] == 200
    assert analyze_stream(stream, 6, fault_ns=250, standby_ifindex=None)["first_standby_ns"] is None


def test_max_gap_uses_time_order():
    stream = arrivals([0, 1, 2, 3], times=[1_000, 2_000, 9_500, 10_000])
    result = analyze_stream(stream, 4, fault_ns=None, standby_ifindex=None)
    assert result["max_gap_us"] == 7.5
    assert result["max_gap_start_ns"] == 2_000
    # Stamps slightly out of capture order (different CPUs) are not a gap.
    stream = arrivals([0, 1, 2, 3], times=[1_000, 5_000, 4_000, 6_000])
    result = analyze_stream(stream, 4, fault_ns=None, standby_ifindex=None)
    assert result["max_gap_us"] == 3.0
    assert result["max_gap_start_ns"] == 1_000


def test_seqs_outside_the_stream_are_ignored():
    result = analyze_stream(arrivals([0, 1, 99, 2**63 + 5, 2]), sent=3, fault_ns=None, standby_ifindex=None)
    assert result["unexpected"] == 2
    assert result["received"] == 3
    assert result["reordered"] == 0  # a huge stray seq must not make the rest look late
    assert result["duplicated"] == 0


def test_nothing_received():
    result = analyze_stream(arrivals([]), sent=100, fault_ns=5, standby_ifindex=STANDBY)
    assert result["received"] == 0
    assert result["lost"] == 100
    assert result["lost_seqs_ranges"] == [[0, 99]]
    assert result["duplicated"] == result["reordered"] == 0
    assert result["first_standby_ns"] is None
    assert result["max_gap_us"] is None


def test_nothing_sent():
    result = analyze_stream(arrivals([]), sent=0, fault_ns=None, standby_ifindex=None)
    assert (result["received"], result["lost"], result["lost_seqs_ranges"]) == (0, 0, [])
    with pytest.raises(ValueError):
        analyze_stream(arrivals([]), sent=-1, fault_ns=None, standby_ifindex=None)


def records(*seqs):
    return b"".join(struct.pack(">QQ", seq, 0) for seq in seqs)


def test_record_stream_reassembles_split_records():
    stream = RecordStream()
    data = records(*range(5))
    for i, byte in enumerate(data):
        stream.feed(bytes([byte]), arrival_ns=i)
    stream.finish()
    assert stream.records == 5
    assert stream.in_order


def test_record_stream_gap_is_between_record_arrivals():
    stream = RecordStream()
    stream.feed(records(0, 1), arrival_ns=1_000)
    stream.feed(records(2)[:10], arrival_ns=2_000)  # incomplete: not an arrival yet
    stream.feed(records(2)[10:], arrival_ns=9_000)
    stream.feed(records(3), arrival_ns=10_000)
    assert stream.max_gap_ns == 8_000
    assert stream.max_gap_at_seq == 2


@pytest.mark.parametrize("seqs, first_bad", [
    ((0, 1, 3, 4), 3),      # gap
    ((0, 1, 1, 2), 1),      # repeat
    ((1, 2, 3), 1),         # does not start at 0
    ((0, 1, 5, 6, 2), 5),   # only the first fault is reported
])
def test_record_stream_detects_gaps_and_repeats(seqs, first_bad):
    stream = RecordStream()
    stream.feed(records(*seqs), arrival_ns=0)
    stream.finish()
    assert not stream.in_order
    assert stream.first_bad_seq == first_bad


def test_record_stream_trailing_partial_record_is_a_loss():
    stream = RecordStream()
    stream.feed(records(0, 1) + records(2)[:7], arrival_ns=0)
    stream.finish()
    assert stream.records == 2
    assert stream.first_bad_seq == 2
