"""`python -m lab`: the colo model in network namespaces (trader, gw, carA,
carB, exch), its fault injector and the end-to-end scenarios. Lives beside
the product: it drives `twinpath run` like an operator would."""
from __future__ import annotations

import argparse
import json
import sys

from lab import faults, scenario, topology


def cmd_up(args) -> int:
    lab = topology.up(args.name)
    topology.write_config(lab, interval_us=args.interval_us, multiplier=args.multiplier, feeds=True)
    print(f"lab {lab.name} is up; namespaces {', '.join(lab.ns(r) for r in topology.ROLES)}")
    print(f"daemon config: {lab.config_path}")
    print(f"run it:        ip netns exec {lab.ns('gw')} twinpath run --config {lab.config_path}")
    print(f"tear down:     python -m lab down {lab.name}")
    return 0


def cmd_down(args) -> int:
    if args.all:
        gone = topology.down_all()
        print(f"removed labs: {', '.join(gone) or 'none'}")
    elif args.name:
        topology.down(args.name)
        print(f"lab {args.name} is down")
    else:
        print("name a lab or pass --all", file=sys.stderr)
        return 2
    return 0


def cmd_status(args) -> int:
    print(json.dumps(topology.status(args.name), indent=2))
    return 0


def cmd_fault(args) -> int:
    lab = topology.load(args.name)
    kwargs = {"probability": args.probability} if args.fault == "loss" and not args.clear else {}
    (faults.clear if args.clear else faults.inject)(lab, args.fault, args.link, **kwargs)
    print(f"{args.fault} on link {args.link} {'cleared' if args.clear else 'injected'}")
    return 0


def cmd_scenario(args) -> int:
    lab = topology.load(args.lab) if args.lab else None
    result = scenario.run(args.scenario, lab, rate_pps=args.rate, interval_us=args.interval_us,
                          multiplier=args.multiplier)
    print(json.dumps(result) if args.json else scenario.summary(result))
    return 0 if scenario.contract_holds(result) else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lab", description=(
        "twinpath's lab: a colo modelled in network namespaces (trader, gw, carA, carB, exch), with a "
        "fault injector on the carriers and end-to-end failover and attack scenarios."))
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build a lab and write a daemon config for it")
    up.add_argument("--name", help="lab name tpXXXX (default: a fresh one)")
    up.add_argument("--interval-us", type=int, default=1000)
    up.add_argument("--multiplier", type=int, default=3)
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="remove a lab (idempotent)")
    down.add_argument("name", nargs="?")
    down.add_argument("--all", action="store_true", help="every lab on this machine")
    down.set_defaults(func=cmd_down)
    st = sub.add_parser("status", help="namespaces, interfaces, carrier and active faults")
    st.add_argument("name", nargs="?")
    st.set_defaults(func=cmd_status)
    fl = sub.add_parser("fault", help="inject or clear a fault on a carrier")
    fl.add_argument("name")
    fl.add_argument("fault", choices=faults.FAULTS)
    fl.add_argument("link", choices=["A", "B"])
    fl.add_argument("--clear", action="store_true")
    fl.add_argument("--probability", type=float, default=0.01, help="for loss (default 0.01)")
    fl.set_defaults(func=cmd_fault)
    sc = sub.add_parser("scenario", help="measure a failover end to end, or an attack on it; exit 0 only if "
                                         "the scenario's contract holds")
    sc.add_argument("scenario", choices=scenario.ALL_SCENARIOS,
                    help="a fault on link A (blackhole-tx/-rx: one direction only); spoofed-heartbeats: blackhole while an attacker on carrier A's "
                         "wire sends forged and replayed heartbeat replies; forged-session: a MoldUDP64 feed "
                         "with one forged packet of another session on line A (ignores the stream options)")
    sc.add_argument("--lab", metavar="NAME", help="use this lab (default: build one, tear it down after)")
    sc.add_argument("--json", action="store_true", help="print one JSON object")
    sc.add_argument("--rate", type=int, default=10_000, help="order stream packets/s (default 10000)")
    sc.add_argument("--interval-us", type=int, default=1000)
    sc.add_argument("--multiplier", type=int, default=3)
    sc.set_defaults(func=cmd_scenario)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
