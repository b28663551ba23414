"""The detection section's results.json keys and REPORT.md lines, from a raw
section as bench/detection.py returns it (figures made up, shapes real)."""
from bench import detection, report


def raw_detection() -> dict:
    soak = {"seconds": 600.2, "interval_us": 1000, "multiplier": 3, "load": "stress-ng --cpu 2",
            "false_failovers": 0, "failover_events": [], "decisions": {}, "heartbeat_late_periods": 3,
            "heartbeat_max_late_us": 812.0, "bfdd": {"setting": "10ms_x3", "session_downs": 41}}
    scenario = detection.summarize(detection.SCENARIOS["delay"], [("A", 100, 100, 900)],
                                   [{"event": "failover", "class": "quotes", "from": "A", "to": "B",
                                     "cause": "lower-latency", "mono_ns": 160},
                                    {"event": "failover", "class": "orders", "from": "A", "to": "B",
                                     "cause": "heartbeat", "mono_ns": 500}], [0])
    benefit_mode = {"lost": {"min": 0, "p50": 0, "max": 0}, "lost_total": 0,
                    "left_before_blackhole_ms": {"min": 2100.0, "p50": 2400.0, "max": 2600.0},
                    "causes": ["gray"], "false_moves": 0, "trials": []}
    model = {"precision": 0.8, "recall": 1.0, "median_lead_ms": 1281.9, "false_alarms_per_hour": 0.0,
             "failures": 4, "predicted": 4, "alarms": 5, "runs": 10, "threshold": 0.98, "horizon_ms": 2000,
             "benefit": {"rate_pps": 10000, "interval_us": 1000, "multiplier": 3, "threshold": 0.98,
                         "steep": {"params": {}, "reactive": benefit_mode, "predictive": benefit_mode}}}
    return {"soak": {"1000us_x3": soak}, "scenarios": {"delay": scenario}, "model": model,
            "cython_speedup": {"batch_windows": 20000, "python_ns_per_window": 33000.0,
                               "cython_ns_per_window": 1000.0, "speedup": 33.0}}


def test_delay_counts_an_active_backup_move_as_wrong_and_times_the_latency_move():
    s = raw_detection()["scenarios"]["delay"]
    assert (s["detected"], s["failovers"], s["wrong_moves"]) == (1, 1, 1)
    assert s["detect_us"]["p50"] == 0.1   # 60 ns after the fault


def test_results_keep_the_contract_keys_and_drop_the_event_detail():
    det = report._detection(raw_detection())
    assert set(det) == {"soak", "scenarios", "model", "cython_speedup"}
    assert "failover_events" not in det["soak"]["1000us_x3"]
    assert "wrong_move_events" not in det["scenarios"]["delay"]
    assert {"precision", "recall", "median_lead_ms"} <= set(det["model"])
    assert set(det["model"]["benefit"]) == {"steep"}
    lines = "\n".join(report._detection_lines(det))
    assert "| 1000us_x3 | 600.2 | 0 | 41 |" in lines and "| steep | predictive | 0 |" in lines


def test_control_lines_show_how_quietly_each_daemon_read_and_tolerate_older_runs():
    sender = {"late_periods": 2, "max_late_us": 640.5, "probes_sent": [100, 100]}
    control = {"method": "schedstat", "cpu_percent": {"1000us_2links": 4.2, "200us_8links": 36.5},
               "carrier_napi_cpu_percent": {"1000us_2links": 1.0, "200us_8links": 9.0},
               "heartbeat_sender": {"1000us_2links": sender, "200us_8links": sender},
               "readings": {"1000us_2links": {"readings": 1250, "quiet_readings": 1180, "kernel_wakes": 3}}}
    lines = report._control_lines(control)
    assert "| 1000us_2links | 4.2 | 1.0 | 2 | 640.5 | 1,250 (1,180) | 3 |" in lines
    assert "| 200us_8links | 36.5 | 9.0 | 2 | 640.5 | – (–) | – |" in lines   # a run from before the counters
