"""The daemon's one log format: events and every other logger's records as
JSON lines, each written once."""
import io
import json
import logging
import time
import warnings
from datetime import datetime

import pytest

from appliance.edge import jsonlog


@pytest.fixture
def restore_logging():
    """configure() sets up the root logger; put it back for the other tests."""
    root, events = logging.getLogger(), logging.getLogger(jsonlog.EVENT_LOGGER)
    handlers, root_level, events_level = root.handlers[:], root.level, events.level
    yield
    root.handlers[:] = handlers
    root.setLevel(root_level)
    events.setLevel(events_level)
    logging.captureWarnings(False)


@pytest.fixture
def out(restore_logging):
    stream = io.StringIO()
    return stream, jsonlog.configure(stream)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_an_event_is_time_mono_ns_event_then_its_fields_in_order(out):
    stream, log = out
    before = time.monotonic_ns()
    log.emit("failover", **{"class": "orders", "from": "fiber", "to": "radio"}, detect_us=12.5)
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert list(record) == ["time", "mono_ns", "event", "class", "from", "to", "detect_us"]
    assert record["event"] == "failover" and record["detect_us"] == 12.5
    assert before <= record["mono_ns"] <= time.monotonic_ns()  # CLOCK_MONOTONIC, as the data path stamps
    assert datetime.fromisoformat(record["time"]).utcoffset().total_seconds() == 0
    assert len(record["time"].split(".")[1].split("+")[0]) == 6  # microseconds
    assert line == json.dumps(record)  # the serialization the old JsonLog wrote


def test_a_callers_mono_ns_wins_and_keeps_its_place(out):
    stream, log = out
    log.emit("switch", link="radio", mono_ns=42)
    (record,) = lines(stream)
    assert list(record) == ["time", "mono_ns", "event", "link"] and record["mono_ns"] == 42


def test_another_loggers_record_is_a_log_line(out):
    stream, _ = out
    before = time.monotonic_ns()
    logging.getLogger("appliance.edge.netlink").warning("netlink socket overrun on %s", "eth1")
    (record,) = lines(stream)
    assert list(record) == ["time", "mono_ns", "event", "level", "logger", "message"]
    assert record["event"] == "log" and record["level"] == "warning"
    assert record["logger"] == "appliance.edge.netlink" and record["message"] == "netlink socket overrun on eth1"
    assert before <= record["mono_ns"] <= time.monotonic_ns()


def test_an_exception_carries_its_traceback(out):
    stream, _ = out
    try:
        raise ValueError("bad map")
    except ValueError:
        logging.getLogger("appliance.edge.metrics").exception("snapshot failed")
    (record,) = lines(stream)
    assert record["level"] == "error" and record["message"] == "snapshot failed"
    assert record["exception"].startswith("Traceback") and record["exception"].endswith("ValueError: bad map")


def test_python_warnings_become_log_lines(out):
    stream, _ = out
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning)
    (record,) = lines(stream)
    assert record["logger"] == "py.warnings" and "deprecated thing" in record["message"]


def test_a_value_json_cannot_hold_is_written_as_its_repr(out):
    stream, log = out

    class Opaque:
        def __repr__(self):
            return "<opaque>"

    log.emit("odd", thing=Opaque(), nested={"ids": frozenset({1})})
    (record,) = lines(stream)
    assert record["thing"] == "<opaque>" and record["nested"] == {"ids": "frozenset({1})"}


def test_below_info_is_not_written(out):
    stream, _ = out
    logging.getLogger("pyroute2").debug("chatter")
    assert stream.getvalue() == ""


def test_configure_twice_writes_each_line_once(restore_logging):
    first, second, extra = io.StringIO(), io.StringIO(), io.StringIO()
    jsonlog.configure(first)
    log = jsonlog.configure(second, extra_handlers=(logging.StreamHandler(extra),))
    log.emit("started")
    logging.getLogger("somelib").warning("hello")
    assert first.getvalue() == ""
    assert [r["event"] for r in lines(second)] == ["started", "log"]
    assert extra.getvalue() == second.getvalue()  # the extra handler gets the same JSON lines
    jsonlog.configure(second)  # and is replaced too
    log.emit("again")
    assert [r["event"] for r in lines(second)] == ["started", "log", "again"]
    assert len(lines(extra)) == 2
