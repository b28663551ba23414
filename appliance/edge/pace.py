"""When the main thread reads its links (a health reading: tp_health,
tp_active, the RTT rings, then the core).

Every tick (5 ms) while anything may be about to change; every `quiet_s`
while the core finds every link quiet (Core.quiet): no decision waits on
time or on a run of readings, and every detector reads at most half its
threshold. Meanwhile the kernel is armed (tp_wake, ebpf/lib/wake.h) to wake
the daemon when accepted replies go beyond those halves: most of the last
few beyond an RTT bound, the smoothed RTT change above its bound, a loss
run. A wake, or an input that may change a link decision (Daemon's
LINK_CHANGES, a line's health), makes a reading due at once, then one every
tick for `settle_s` (the waking reply's fate is final `multiplier` rounds
on, and then judged in a tick-sized window) before the links can be called
quiet again. The windows merged while quiet are
ordinary readings: the detectors count probes, not readings, while no
detector is near its threshold.

Pure (the caller passes its clock), so it is tested without a kernel.
"""
from __future__ import annotations

from appliance.core.links import WakeBounds


class ReadingPace:
    def __init__(self, tick_s: float, quiet_s: float, settle_s: float):
        self.tick_s, self.quiet_s, self.settle_s = tick_s, quiet_s, settle_s
        self.next_s = 0.0                               # the next reading is due then
        self.tick_until_s = 0.0                         # every tick until then, quiet or not
        self.armed: list[WakeBounds] | None = None   # the thresholds the kernel holds, armed
        self.quiet_now = False
        # Since the daemon started: readings, those after which the links
        # were left quiet, and the kernel's wakes (status and metrics).
        self.readings = self.quiet_readings = self.wakes = 0

    def woken(self, now_s: float, disarmed: bool) -> None:
        """A reading is due now, and every tick for settle_s. disarmed: the
        kernel's wake, which disarmed it."""
        self.next_s = now_s
        self.tick_until_s = now_s + self.settle_s
        self.quiet_now = False
        if disarmed:
            self.armed = None
            self.wakes += 1

    def due(self, now_s: float) -> bool:
        return now_s >= self.next_s

    def read(self, now_s: float, wakes: list[WakeBounds] | None) -> list[WakeBounds] | None:
        """After a reading at now_s whose core found `wakes` (None: not
        quiet): schedules the next one, and returns the thresholds to arm
        the kernel with (None: nothing to write; what it holds serves)."""
        self.readings += 1
        self.quiet_now = wakes is not None and now_s >= self.tick_until_s
        if not self.quiet_now:
            self.next_s = now_s + self.tick_s
            return None
        self.quiet_readings += 1
        self.next_s = now_s + self.quiet_s
        if self.armed is not None and [w.bounds() for w in wakes] == [w.bounds() for w in self.armed]:
            return None   # the kernel keeps its own smoothed change meanwhile
        self.armed = wakes
        return wakes
