"""The bench's pure analysis: trial attribution of losses and failovers."""
import numpy as np

from bench import analysis

DTYPE = np.dtype([("seq", "u8"), ("t_ns", "i8"), ("ifindex", "i4"), ("sent_ns", "i8")])
PERIOD = 100_000          # 10,000 packets/s
START = 5_000_000_000     # seq 0's intended send time
ONE_WAY = 30_000
PRIMARY, STANDBY = 11, 12


def stream(issued, lost=(), standby_from=(), dup=(), swap=()):
    """Arrivals of seqs 0..issued-1 minus `lost`; seqs in any [a, b) of
    `standby_from` arrive on the standby; `dup` arrive twice; `swap` pairs
    (s, s+1) arrive in reverse order."""
    rows = []
    for s in range(issued):
        if s in lost:
            continue
        ifindex = STANDBY if any(a <= s < b for a, b in standby_from) else PRIMARY
        sent = START + s * PERIOD
        rows.append((s, sent + ONE_WAY, ifindex, sent))
        if s in dup:
            rows.append((s, sent + ONE_WAY + 1, ifindex, sent))
    for s in swap:
        i = next(k for k, r in enumerate(rows) if r[0] == s)
        rows[i], rows[i + 1] = rows[i + 1], rows[i]
    return np.array(rows, dtype=DTYPE)


def at(seq):
    return START + seq * PERIOD


def test_schedule_start_is_recovered_despite_stray_send_times():
    arrivals = stream(1000, lost=set(range(100, 200)))
    arrivals["sent_ns"][:3] = 0   # e.g. a previous stream's stragglers
    assert analysis.schedule_start_ns(arrivals, PERIOD) == START


def test_losses_and_failover_are_attributed_to_their_trial():
    faults = [at(1000) + 50_000, at(5000) + 50_000]
    clears = [at(3000), at(7000)]
    lost = set(range(1001, 1031)) | set(range(5001, 5005))
    arrivals = stream(10_000, lost=lost, standby_from=[(1031, 3000), (5005, 7000)])
    r = analysis.stream_trials(arrivals, 10_000, PERIOD, faults, clears, STANDBY)
    assert r["lost"] == [30, 4]
    assert r["lost_after_clear"] == [0, 0]
    assert r["lost_outside_trials"] == 0
    assert r["failover_us"] == [round((at(1031) + ONE_WAY - faults[0]) / 1000, 1),
                                round((at(5005) + ONE_WAY - faults[1]) / 1000, 1)]
    assert r["duplicated"] == r["reordered"] == 0


def test_loss_before_the_first_trial_and_at_the_tail_is_counted():
    faults, clears = [at(1000)], [at(2000)]
    arrivals = stream(3000, lost={10, 2999})   # before the trial; the last one sent
    r = analysis.stream_trials(arrivals, 3000, PERIOD, faults, clears, STANDBY)
    assert r["lost"] == [1]                    # the tail belongs to the last trial
    assert r["lost_after_clear"] == [1]
    assert r["lost_outside_trials"] == 1


def test_no_standby_arrival_before_the_clear_means_no_failover():
    faults, clears = [at(100)], [at(200)]
    arrivals = stream(1000, lost=set(range(100, 200)), standby_from=[(300, 400)])
    r = analysis.stream_trials(arrivals, 1000, PERIOD, faults, clears, STANDBY)
    assert r["failover_us"] == [None]
    assert r["lost"] == [100]


def test_duplicates_and_reordering_are_counted():
    arrivals = stream(100, dup={5, 6}, swap=(50,))
    r = analysis.stream_trials(arrivals, 100, PERIOD, [at(10)], [at(20)], STANDBY)
    assert r["duplicated"] == 2 and r["reordered"] == 1 and r["lost"] == [0]


def test_first_after_only_counts_events_inside_the_fault():
    faults, limits = [1000, 5000, 9000], [2000, 6000, 10000]
    assert analysis.first_after([1500, 1700, 7000, 9000], faults, limits) == [0.5, None, 0.0]


def test_outside_counts_events_with_no_fault_behind_them():
    assert analysis.outside([5, 15, 25, 35], [(10, 20), (30, 40)]) == 2  # 5 and 25


def test_cpu_percent_of_run_time():
    assert analysis.cpu_percent_ns(1_000_000_000, 1_500_000_000, 10.0) == 5.0
