"""The flapper: a carrier link that goes down and up on a schedule (lab.faults' flap).

lab.faults starts it in the carrier's namespace as
`python -m lab.flapper --lab NAME --link A --down-ms 50 --up-ms 450 ...`.
Down is the link's blackhole in its fault map, or with --carrier the carrier's
gw-facing veth admin down (gw's link loses carrier); up is pass-through, or
the veth admin up with the carrier's routes restored. Cycle k goes down at
start + k x (down + up), an absolute schedule, so late wake-ups never drift.
Every transition is an event in lab.faults.events(): "down" or "up" with the
CLOCK_MONOTONIC time taken just before the change.

It is bounded: it ends after --count cycles or --duration-s, after --max-s,
on SIGTERM, or when the map no longer holds what it last wrote (someone
cleared the fault). Except in that last case it leaves the link up. Then an
"exit" event with the reason and the cycles begun.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

from pyroute2 import IPRoute

from lab import faults, layout
from lab.colo import LINKS, Lab

POLL_S = 0.05   # longest sleep before SIGTERM is looked at


class Flapper:
    def __init__(self, lab: Lab, link: str, carrier: IPRoute | None):
        self.lab, self.link, self.carrier = lab, link, carrier
        self.down = False

    def set(self, down: bool) -> int:
        """Take the link down or up, record the transition and return its time."""
        if self.carrier:
            changed_ns = faults.set_carrier_admin(self.carrier, LINKS[self.link], up=not down)
        else:
            mode = faults.MODE_BLACKHOLE if down else faults.MODE_PASS
            changed_ns = faults.write_cfg(self.lab, self.link, layout.FaultConfig(mode))
        self.down = down
        faults.record_event(self.lab, self.link, "down" if down else "up", changed_ns)
        return changed_ns

    def holds(self) -> bool:
        """The map still holds what this flapper wrote last (the carrier's admin state is its own)."""
        if self.carrier:
            return True
        expected = faults.MODE_BLACKHOLE if self.down else faults.MODE_PASS
        return faults.read_cfg(self.lab, self.link).mode == expected


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    faults.helper_setup()
    lab = Lab(args.lab)
    with contextlib.ExitStack() as stack:
        # One netlink handle for the whole run: opening one per transition would cost milliseconds.
        carrier = stack.enter_context(IPRoute()) if args.carrier else None
        flapper = Flapper(lab, args.link, carrier)
        started_ns = flapper.set(down=True)
        faults.announce(started_ns)
        reason, cycles = flap(flapper, started_ns, args)
        if reason != "cleared" and flapper.down:
            flapper.set(down=False)
    faults.record_event(lab, args.link, "exit", time.monotonic_ns(), reason=reason, cycles=cycles)
    return 0


def flap(flapper: Flapper, started_ns: int, args) -> tuple[str, int]:
    """Run the schedule from the first down at started_ns; returns why it
    ended and the cycles begun."""
    down_ns, period_ns = args.down_ms * 1_000_000, (args.down_ms + args.up_ms) * 1_000_000
    lifetime_ns = started_ns + round(args.max_s * 1e9)
    end_ns = min(lifetime_ns, started_ns + round(args.duration_s * 1e9)) if args.duration_s else lifetime_ns
    cycle = 0
    while True:
        cycle_ns = started_ns + cycle * period_ns
        if not sleep_until(min(cycle_ns + (down_ns if flapper.down else period_ns), end_ns)):
            return "stopped", cycle + 1
        if time.monotonic_ns() >= end_ns:
            return ("lifetime" if end_ns == lifetime_ns else "duration"), cycle + 1
        if not flapper.holds():
            return "cleared", cycle + 1
        if flapper.down:
            flapper.set(down=False)
            if args.count and cycle + 1 >= args.count:
                return "count", cycle + 1
        else:
            cycle += 1
            flapper.set(down=True)


def sleep_until(deadline_ns: int) -> bool:
    """Sleep until deadline_ns; False if SIGTERM came first."""
    while not faults.HelperStop.requested and (left_ns := deadline_ns - time.monotonic_ns()) > 0:
        time.sleep(min(left_ns / 1e9, POLL_S))
    return not faults.HelperStop.requested


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lab.flapper", description=(
        "A lab carrier link going down and up on a schedule; started by lab.faults in the carrier's namespace."))
    p.add_argument("--lab", required=True)
    p.add_argument("--link", required=True, choices=sorted(LINKS))
    p.add_argument("--down-ms", type=int, required=True)
    p.add_argument("--up-ms", type=int, required=True)
    p.add_argument("--count", type=int, help="cycles, then stop (up)")
    p.add_argument("--duration-s", type=float, help="stop (up) after this long")
    p.add_argument("--carrier", action="store_true",
                   help="take the carrier's gw-facing veth admin down instead of black-holing")
    p.add_argument("--max-s", type=float, default=faults.HELPER_MAX_S, help="longest life")
    return p


if __name__ == "__main__":
    sys.exit(main())
