"""Progress of a bench run on stderr, so that a long run never leaves a silent
terminal: a bar per section (the security section has a second one for the
fuzz frames) with work done / total, time elapsed and an estimate of the
time left.

On a terminal, rich redraws the bars in place. Anywhere else (a CI log) each
bar prints plain lines: when it starts, at most every PLAIN_EVERY_S while it
runs, and when it ends. Quiet prints nothing.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

PLAIN_EVERY_S = 10.0

# What a section calls as units of its work finish (n, by default 1): a
# Bar's advance(), or ignore.
Advance = Callable[..., None]


def ignore(n: int = 1) -> None:
    """An Advance for work nobody watches."""


class Bar:
    """One section's work, in units (trials, rounds, frames) counted up to a
    total known in advance: the section calls advance() as units finish."""

    def __init__(self, label: str, total: int, unit: str):
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.on_advance: Callable[[Bar], None] = lambda bar: None

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.on_advance(self)


class Progress:
    """The run's bars, on `stream` (stderr by default). Enter it for the run,
    open a bar() per section."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream or sys.stderr
        self.quiet, self.clock = quiet, clock
        self.live = None
        if not quiet and self.stream.isatty():
            self.live = RichProgress(
                TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TextColumn("elapsed,"),
                TimeRemainingColumn(), TextColumn("left"), console=Console(file=self.stream))

    def __enter__(self) -> Progress:
        if self.live:
            self.live.start()
        return self

    def __exit__(self, *_exc) -> None:
        if self.live:
            self.live.stop()

    @contextmanager
    def bar(self, label: str, total: int, unit: str) -> Iterator[Bar]:
        bar = Bar(label, total, unit)
        if self.live:
            task = self.live.add_task(label, total=total, unit=unit)
            bar.on_advance = lambda b: self.live.update(task, completed=b.done)
            yield bar
        elif self.quiet:
            yield bar
        else:
            lines = _Lines(bar, self.stream, self.clock)
            bar.on_advance = lines.advanced
            try:
                yield bar
            finally:
                lines.show(ended=True)


class _Lines:
    """A bar as plain lines: at its start, at most every PLAIN_EVERY_S as it
    advances, at its end. The time left is estimated from the pace since the
    first advance, which leaves out the set-up before it (compiling, a lab
    daemon starting)."""

    def __init__(self, bar: Bar, stream: TextIO, clock: Callable[[], float]):
        self.bar, self.stream, self.clock = bar, stream, clock
        self.started = self.shown_at = clock()
        self.first: tuple[float, int] | None = None   # (when, done) at the first unit done
        print(self.count(), file=stream, flush=True)

    def advanced(self, bar: Bar) -> None:
        now = self.clock()
        if self.first is None and bar.done:
            self.first = (now, bar.done)
        if now - self.shown_at >= PLAIN_EVERY_S:
            self.shown_at = now
            self.show()

    def count(self) -> str:
        return f"bench: {self.bar.label}: {self.bar.done:,}/{self.bar.total:,} {self.bar.unit}"

    def show(self, ended: bool = False) -> None:
        now = self.clock()
        elapsed = _duration(now - self.started)
        text = self.count() + (f" in {elapsed}" if ended else f", {elapsed} elapsed")
        if not ended and self.first and self.bar.done > self.first[1]:
            pace = (now - self.first[0]) / (self.bar.done - self.first[1])
            text += f", about {_duration(pace * max(self.bar.total - self.bar.done, 0))} left"
        print(text, file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s" if m else f"{s}s"
