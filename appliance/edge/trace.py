"""Trace files of what the core consumed (`twinpath run --record FILE`), read
back by `twinpath replay FILE`.

JSON lines. The first is the start: {"twinpath_trace": VERSION, "start":
appliance.core.decision.Start}. Every other is one input, in the order the
core consumed it: {"kind": ..., "ts_ns": ..., "fields": {...}}; ts_ns is the
input's own time (the kernel's stamp for what the data path reports, the
arrival of a netlink message for carrier and neighbour changes, the reading
for health and feed lines). Health is read every 5 ms and each feed's lines
every 10 ms, so a trace grows by ~60 KB/s (~220 MB an hour) with two links
and one feed: record for an incident window, not forever.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.core.decision import Start

VERSION = 1


class TraceError(ValueError):
    """A file that is not a trace this version can replay."""


class Recorder:
    """Appends the core's inputs to a trace file, one flushed line each, so
    a crash loses nothing already consumed."""

    def __init__(self, path: str | Path, start: Start):
        self._file = open(path, "w", buffering=1)
        self._lock = threading.Lock()
        self._write({"twinpath_trace": VERSION, "start": start.to_json()})

    def _write(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def input(self, kind: str, ts_ns: int, fields: dict[str, Any]) -> None:
        self._write({"kind": kind, "ts_ns": ts_ns, "fields": fields})

    def close(self) -> None:
        self._file.close()


def read(path: str | Path) -> tuple[Start, Iterator[tuple[str, int, dict[str, Any]]]]:
    """The start and the inputs of a trace (read lazily). TraceError says
    what is wrong, with the line number."""
    f = open(path)
    head = f.readline()
    try:
        first = json.loads(head)
        if first.get("twinpath_trace") != VERSION:
            raise TraceError(f"{path}: not a version {VERSION} twinpath trace "
                             f"(first line has twinpath_trace={first.get('twinpath_trace')!r})")
        start = Start.from_json(first["start"])
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        f.close()
        raise TraceError(f"{path}:1: not a twinpath trace start line ({e})") from None

    def inputs() -> Iterator[tuple[str, int, dict[str, Any]]]:
        with f:
            for lineno, line in enumerate(f, start=2):
                try:
                    rec = json.loads(line)
                    yield rec["kind"], int(rec["ts_ns"]), dict(rec["fields"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                    if not line.endswith("\n"):  # the recorder was cut off mid-line: the end
                        return
                    raise TraceError(f"{path}:{lineno}: not a trace input ({e})") from None
    return start, inputs()
