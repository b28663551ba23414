"""The daemon's log: one JSON object per line on stdout (journald keeps it),
through the standard logging module, so the daemon's events and any other
logger's records (appliance.edge.netlink's warnings, a library's, Python
warnings) come out in one format, each written once.

Every line starts with time (UTC wall clock), mono_ns (CLOCK_MONOTONIC, the
clock the data path stamps with) and event. An event's fields follow; any
other record is event "log" with its level, logger and message.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone
from typing import TextIO

EVENT_LOGGER = "twinpath"


class JsonFormatter(logging.Formatter):
    """Events carry event, fields and mono_ns (EventLog puts them in the
    record); a field named mono_ns (a decision's input time) overrides the
    stamp. Other records get mono_ns when first formatted, kept on the record
    so every handler writes the same: handlers run inside the logging call,
    so that is microseconds after the record was made, and the record itself
    holds only wall-clock time. A value JSON cannot hold is written as its
    repr rather than losing the line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="microseconds"),
                "mono_ns": record.__dict__.setdefault("mono_ns", time.monotonic_ns())}
        if hasattr(record, "event"):
            line.update(event=record.event, **record.fields)
        else:
            line.update(event="log", level=record.levelname.lower(), logger=record.name, message=record.getMessage())
            if record.exc_info:
                line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=repr)


class EventLog:
    """emit(event, **fields): one line, as {"time", "mono_ns", "event",
    **fields}. Thread-safe, as logging is."""

    def __init__(self, logger: logging.Logger):
        self._logger = logger

    def emit(self, event: str, **fields) -> None:
        self._logger.info(event, extra={"event": event, "fields": fields, "mono_ns": time.monotonic_ns()})


def configure(stream: TextIO | None = None, extra_handlers: tuple[logging.Handler, ...] = ()) -> EventLog:
    """Every record at INFO or above, from any logger, as JSON to stream
    (default: sys.stdout at call time) and to extra_handlers. The handlers
    sit on the root logger alone, so a record propagates to them once;
    calling this again replaces them (the JSON ones) instead of adding more."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]:
        root.removeHandler(handler)
    # StreamHandler flushes each record: journald and the tests read the lines live.
    for handler in [logging.StreamHandler(stream or sys.stdout), *extra_handlers]:
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # warnings.warn() -> the "py.warnings" logger -> a "log" line
    events = logging.getLogger(EVENT_LOGGER)
    events.setLevel(logging.INFO)  # events are written even if someone raises the root's level
    return EventLog(events)
