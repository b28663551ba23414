"""`python -m lab`: the colo model in network namespaces (trader, gw, carA,
carB, exch), its fault injector and the end-to-end scenarios. Lives beside
the product: it drives `twinpath run` like an operator would."""
from __future__ import annotations

import argparse
import json
import sys

from lab import faults, hostscenario, pair, scenario, topology
from lab.colo import LabError


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
        gone = topology.down_all() + pair.down_all()
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


# Each fault parameter's option: (type, help).
FAULT_OPTIONS = {
    "probability": (float, "loss: drop probability (default 0.01)"),
    "burst": (int, "loss: a drop starts a burst of this many packets in its direction"),
    "delay_us": (int, "delay: added one-way latency towards gw; jitter: the base delay (default 0)"),
    "ramp_to_us": (int, "delay: the delay moves linearly to this over --ramp-s, then stays"),
    "ramp_s": (float, "delay: the ramp's length in seconds"),
    "jitter_us": (int, "jitter: a uniform 0..this per packet on top of --delay-us, never reordering"),
    "down_ms": (int, "flap: down this long"),
    "up_ms": (int, "flap: then up this long, and again"),
    "count": (int, "flap: this many cycles, then stop (up)"),
    "duration_s": (float, "flap: stop (up) after this long"),
    "carrier": (None, "flap: take the carrier's veth admin down (gw loses carrier) instead of black-holing"),
    "creep_s": (float, "creep-then-blackhole: seconds the creep lasts before the blackhole"),
    "creep_delay_us": (int, "creep-then-blackhole: the delay the creep reaches, from 0"),
    "creep_loss": (float, "creep-then-blackhole: the drop probability the creep reaches, from 0"),
    "max_s": (float, f"gray faults: their helper process's longest life (default {faults.HELPER_MAX_S:g} s)"),
}
DEFAULTS = scenario.GRAY_SCENARIOS
FAULT_EPILOG = f"""\
faults on a carrier link (A or B), with their defaults:
  carrier-down          the carrier's veth admin down: gw's link loses carrier
  blackhole             everything dropped, both ways; blackhole-tx / -rx: only what gw sends / receives
  loss                  --probability, optionally --burst
  delay                 --delay-us ({DEFAULTS["delay"]["delay_us"]}) towards gw; optionally --ramp-to-us with --ramp-s
  jitter                --jitter-us ({DEFAULTS["jitter"]["jitter_us"]}) on top of --delay-us (0)
  flap                  --down-ms ({DEFAULTS["flap"]["down_ms"]}) / --up-ms ({DEFAULTS["flap"]["up_ms"]}); \
optionally --count, --duration-s, --carrier
  creep-then-blackhole  delay 0 -> --creep-delay-us ({DEFAULTS["creep-then-blackhole"]["creep_delay_us"]}) and \
loss 0 -> --creep-loss ({DEFAULTS["creep-then-blackhole"]["creep_loss"]})
                        over --creep-s ({DEFAULTS["creep-then-blackhole"]["creep_s"]:g}), then a blackhole \
both ways until cleared
Gray faults (delay, jitter, flap, creep-then-blackhole) run a helper process in the carrier's
namespace for at most --max-s; --clear ends any fault, stops its helper and restores pass-through;
`python -m lab status` shows what is active."""


def cmd_fault(args) -> int:
    lab = topology.load(args.name)
    if args.clear:
        faults.clear(lab, args.fault, args.link)
        print(f"{args.fault} on link {args.link} cleared")
        return 0
    given = {name: value for name in FAULT_OPTIONS if (value := getattr(args, name)) not in (None, False)}
    defaults = {"probability": 0.01} if args.fault == "loss" else DEFAULTS.get(args.fault, {})
    params = {**defaults, **given}
    try:
        faults.inject(lab, args.fault, args.link, **params)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{args.fault} on link {args.link} injected"
          + (f" ({', '.join(f'{k} {v}' for k, v in params.items())})" if params else ""))
    return 0


def cmd_scenario(args) -> int:
    host = args.scenario in hostscenario.HOST_SCENARIOS
    if args.peer != "twinpath" and not host:
        print(f"--peer {args.peer} is for the host scenarios ({', '.join(hostscenario.HOST_SCENARIOS)})",
              file=sys.stderr)
        return 2
    lab = (pair.load if host else topology.load)(args.lab) if args.lab else None
    result = scenario.run(args.scenario, lab, rate_pps=args.rate, interval_us=args.interval_us,
                          multiplier=args.multiplier, peer=args.peer)
    print(json.dumps(result) if args.json else scenario.summary(result))
    return 0 if scenario.contract_holds(result) else 1


def cmd_pair_up(args) -> int:
    lab = pair.up(args.name)
    print(f"pair lab {lab.name} is up; namespaces {', '.join(lab.ns(r) for r in pair.ROLES)}")
    for node in pair.NODES:
        print(f"{node} config:    {lab.config_path(node)}")
    print(f"tear down:     python -m lab pair down {lab.name}")
    return 0


def cmd_pair_down(args) -> int:
    if args.all:
        gone = pair.down_all()
        print(f"removed pair labs: {', '.join(gone) or 'none'}")
    elif args.name:
        pair.down(args.name)
        print(f"pair lab {args.name} is down")
    else:
        print("name a pair lab or pass --all", file=sys.stderr)
        return 2
    return 0


def cmd_pair_status(args) -> int:
    print(json.dumps(pair.status(args.name), indent=2))
    return 0


def cmd_pair_cut(args) -> int:
    lab = pair.load(args.name)
    try:
        (pair.heal if args.heal else pair.cut)(lab, args.what, args.node)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{args.what}{f' at {args.node}' if args.node else ''} {'healed' if args.heal else 'cut'}")
    return 0


def cmd_pair_kill(args) -> int:
    pair.kill_host(pair.load(args.name), args.node)
    print(f"{args.node} is dead: interfaces down, processes killed")
    return 0


def cmd_pair_revive(args) -> int:
    pair.revive_host(pair.load(args.name), args.node)
    print(f"{args.node} is back as a reboot leaves it: no pins, BPF or VIP; interfaces and routes up")
    return 0


def add_pair_parser(sub) -> None:
    pr = sub.add_parser("pair", help="the HA pair lab: two gateways on one LAN, a crosslink and an etcd witness")
    psub = pr.add_subparsers(dest="pair_cmd", required=True)
    up = psub.add_parser("up", help="build a pair lab and write both nodes' configs")
    up.add_argument("--name", help="lab name tqXXXX (default: a fresh one)")
    up.set_defaults(func=cmd_pair_up)
    down = psub.add_parser("down", help="remove a pair lab (idempotent)")
    down.add_argument("name", nargs="?")
    down.add_argument("--all", action="store_true", help="every pair lab on this machine")
    down.set_defaults(func=cmd_pair_down)
    st = psub.add_parser("status", help="namespaces, interfaces, cuts and who holds the VIP")
    st.add_argument("name")
    st.set_defaults(func=cmd_pair_status)
    ct = psub.add_parser("cut", help="drop everything both ways on a switch port (gray: no carrier change)")
    ct.add_argument("name", help="the pair lab (tqXXXX)")
    ct.add_argument("what", choices=["lan", "crosslink", "witness"],
                    help="lan: --node's LAN port; crosslink; witness: the witness's port, or only --node's")
    ct.add_argument("--node", choices=pair.NODES)
    ct.add_argument("--heal", action="store_true", help="remove the cut")
    ct.set_defaults(func=cmd_pair_cut)
    kl = psub.add_parser("kill", help="a gateway host dies: its interfaces down, its processes SIGKILLed")
    kl.add_argument("name")
    kl.add_argument("node", choices=pair.NODES)
    kl.set_defaults(func=cmd_pair_kill)
    rv = psub.add_parser("revive", help="a killed gateway comes back as a reboot leaves it")
    rv.add_argument("name")
    rv.add_argument("node", choices=pair.NODES)
    rv.set_defaults(func=cmd_pair_revive)


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
    fl = sub.add_parser("fault", help="inject or clear a fault on a carrier", epilog=FAULT_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    fl.add_argument("name", help="the lab (tpXXXX)")
    fl.add_argument("fault", choices=faults.FAULTS)
    fl.add_argument("link", choices=["A", "B"])
    fl.add_argument("--clear", action="store_true",
                    help="end the fault: pass-through again, its helper stopped (carrier-down: veth up)")
    for name, (kind, text) in FAULT_OPTIONS.items():
        option = "--" + name.replace("_", "-")
        if kind is None:
            fl.add_argument(option, action="store_true", help=text)
        else:
            fl.add_argument(option, type=kind, help=text)
    fl.set_defaults(func=cmd_fault)
    sc = sub.add_parser("scenario", help="measure a failover end to end, or an attack on it; exit 0 only if "
                                         "the scenario's contract holds")
    sc.add_argument("scenario", choices=scenario.ALL_SCENARIOS,
                    help="a fault on link A (blackhole-tx/-rx: one direction only); delay, jitter, flap, "
                         f"loss ({DEFAULTS['loss']['probability']}), creep-then-blackhole: a gray fault on link A "
                         "with `fault --help`'s defaults, exit 0 whether or not it fails over, but "
                         "creep-then-blackhole (it ends in a blackhole) must fail over; spoofed-heartbeats: "
                         "blackhole while an attacker on carrier A's "
                         "wire sends forged and replayed heartbeat replies; forged-session: a MoldUDP64 feed "
                         "with one forged packet of another session on line A (ignores the stream options); "
                         "host-death, host-links-down, crosslink-cut, lan-partition, witness-down, "
                         "active-daemon-restart, switchover: a fault or the operator's switchover on the active "
                         "gateway of an HA pair lab (twinpath must take over in the first two, lan-partition and "
                         "switchover only, never both gateways forwarding, and lose nothing in switchover)")
    sc.add_argument("--lab", metavar="NAME", help="use this lab (default: build one, tear it down after); "
                                                  "a pair lab (tqXXXX) for the host scenarios")
    sc.add_argument("--peer", choices=hostscenario.PEERS, default="twinpath",
                    help="host scenarios: what runs on the gateways (keepalived: the comparison, no contract)")
    sc.add_argument("--json", action="store_true", help="print one JSON object")
    sc.add_argument("--rate", type=int, default=10_000, help="order stream packets/s (default 10000)")
    sc.add_argument("--interval-us", type=int, default=1000)
    sc.add_argument("--multiplier", type=int, default=3)
    sc.set_defaults(func=cmd_scenario)
    add_pair_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LabError as exc:   # a wrong name or a missing lab: the message says what to do
        print(f"lab: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
