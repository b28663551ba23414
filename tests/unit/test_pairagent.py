"""The pair thread's own timing report (appliance.edge.pairagent.LateReadings)."""
from appliance.edge.pairagent import LateReadings

MS = 1_000_000
US = 1_000


def reader():
    logged = []
    return LateReadings(lambda event, **fields: logged.append((event, fields))), logged


def test_a_reading_on_time_and_quick_logs_nothing():
    late, logged = reader()
    late.check(None, 0, 50 * US, 200 * US)                    # the first reading: no wake planned
    late.check(10 * MS, 10 * MS + 300 * US, 10 * MS + 350 * US, 10 * MS + 900 * US)
    assert logged == []


def test_a_late_wake_and_a_slow_decision_say_where_the_time_went():
    late, logged = reader()
    late.check(10 * MS, 14 * MS, 14 * MS + 100 * US, 14 * MS + 300 * US)
    late.check(2000 * MS, 2000 * MS, 2000 * MS + 50 * US, 2021 * MS)   # 21 ms held on the core lock
    assert logged == [("pair-late", {"woke_late_us": 4000.0, "read_us": 100.0, "consume_us": 200.0,
                                     "decided": False, "unlogged_since": 0}),
                      ("pair-late", {"woke_late_us": 0.0, "read_us": 50.0, "consume_us": 20950.0,
                                     "decided": False, "unlogged_since": 0})]


def test_a_host_late_at_every_reading_is_logged_once_a_second_with_the_count():
    late, logged = reader()
    for i in range(300):                                       # 3 s of late readings 10 ms apart
        t = i * 10 * MS
        late.check(t, t + 2 * MS, t + 2 * MS, t + 2 * MS)
    assert [f["unlogged_since"] for _, f in logged] == [0, 99, 99]


def test_a_late_reading_that_decided_is_always_logged():
    late, logged = reader()
    late.check(0, 2 * MS, 2 * MS, 2 * MS)
    late.check(10 * MS, 12 * MS, 12 * MS, 12 * MS)                   # within the second: counted only
    late.check(20 * MS, 23 * MS, 23 * MS, 24 * MS, decided=True)     # the takeover's own reading
    assert [(f["woke_late_us"], f["decided"], f["unlogged_since"]) for _, f in logged] == \
        [(2000.0, False, 0), (3000.0, True, 1)]
