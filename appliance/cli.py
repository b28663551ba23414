"""twinpath command line."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading


def _load_config(path: str):
    """The config, or None after printing why it is unusable."""
    from appliance.config import ConfigError, load
    try:
        return load(path)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return None


def cmd_run(args) -> int:
    """2, with the reason on stderr, for a config that is bad or does not fit
    this gateway (preflight) and when another daemon runs this gateway;
    either is refused before anything is attached."""
    from appliance.config import ConfigError
    from appliance.gatelock import GatewayBusy
    cfg = _load_config(args.config)
    if cfg is None:
        return 2
    from appliance.daemon import Daemon, JsonLog
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        Daemon(cfg, JsonLog(), stats_interval_s=args.stats_interval).run(stop)
    except (ConfigError, GatewayBusy) as e:
        print(e, file=sys.stderr)
        return 2
    return 0


def cmd_check_config(args) -> int:
    from appliance.classify import compile_rules
    from appliance.config import PROTOCOLS
    proto_names = {v: k for k, v in PROTOCOLS.items()}
    cfg = _load_config(args.config)
    if cfg is None:
        return 2
    print(f"{args.config}: ok. heartbeat {cfg.heartbeat.interval_us} us x {cfg.heartbeat.multiplier} "
          f"(dead after {cfg.heartbeat.dead_ns / 1e6:g} ms), failback hold-down {cfg.heartbeat.holddown_ms} ms")
    for c in cfg.classes:
        print(f"  class {c.name}: links {' > '.join(c.links)}")
    for prefix, rules in compile_rules(cfg).items():
        for r in rules:
            print(f"  {prefix} proto {proto_names[r.proto]} ports {r.port_lo}-{r.port_hi} -> "
                  f"{cfg.classes[r.class_id].name}")
    return 0


def cmd_lab(args) -> int:
    from appliance.lab import faults, scenario, topology
    if args.lab_cmd == "up":
        lab = topology.up(args.name)
        topology.write_config(lab, interval_us=args.interval_us, multiplier=args.multiplier, feeds=True)
        print(f"lab {lab.name} is up; namespaces {', '.join(lab.ns(r) for r in topology.ROLES)}")
        print(f"daemon config: {lab.config_path}")
        print(f"run it:        ip netns exec {lab.ns('gw')} {sys.argv[0]} run --config {lab.config_path}")
        print(f"tear down:     {sys.argv[0]} lab down {lab.name}")
    elif args.lab_cmd == "down":
        if args.all:
            gone = topology.down_all()
            print(f"removed labs: {', '.join(gone) or 'none'}")
        elif args.name:
            topology.down(args.name)
            print(f"lab {args.name} is down")
        else:
            print("name a lab or pass --all", file=sys.stderr)
            return 2
    elif args.lab_cmd == "status":
        print(json.dumps(topology.status(args.name), indent=2))
    elif args.lab_cmd == "fault":
        lab = topology.load(args.name)
        kwargs = {"probability": args.probability} if args.fault == "loss" and not args.clear else {}
        (faults.clear if args.clear else faults.inject)(lab, args.fault, args.link, **kwargs)
        print(f"{args.fault} on link {args.link} {'cleared' if args.clear else 'injected'}")
    elif args.lab_cmd == "scenario":
        lab = topology.load(args.lab) if args.lab else None
        result = scenario.run(args.scenario, lab, rate_pps=args.rate, interval_us=args.interval_us,
                              multiplier=args.multiplier)
        print(json.dumps(result) if args.json else scenario.summary(result))
        return 0 if scenario.contract_holds(result) else 1
    return 0


def cmd_bench(args) -> int:
    from appliance.lab import arbbench
    result = arbbench.run()
    print(json.dumps(result) if args.json else arbbench.summary(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twinpath", description=(
        "Failover appliance for colocation gateways: an eBPF fast path steers order and market-data "
        "traffic over redundant links and fails over in the kernel when a link goes quiet."))
    sub = p.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="run the daemon (attaches the fast path; SIGTERM/Ctrl-C detach)")
    run.add_argument("--config", required=True, metavar="FILE.toml")
    run.add_argument("--stats-interval", type=float, default=10.0, metavar="S",
                     help="seconds between 'health' log lines (default 10)")
    run.set_defaults(func=cmd_run)

    chk = sub.add_parser("check-config", help="validate a config and show the compiled rules")
    chk.add_argument("config", metavar="FILE.toml")
    chk.set_defaults(func=cmd_check_config)

    lab = sub.add_parser("lab", help="the colo model in network namespaces (trader, gw, carA, carB, exch)")
    lab.set_defaults(func=cmd_lab)
    lsub = lab.add_subparsers(dest="lab_cmd", required=True)
    up = lsub.add_parser("up", help="build a lab and write a daemon config for it")
    up.add_argument("--name", help="lab name tpXXXX (default: a fresh one)")
    up.add_argument("--interval-us", type=int, default=1000)
    up.add_argument("--multiplier", type=int, default=3)
    down = lsub.add_parser("down", help="remove a lab (idempotent)")
    down.add_argument("name", nargs="?")
    down.add_argument("--all", action="store_true", help="every lab on this machine")
    st = lsub.add_parser("status", help="namespaces, interfaces, carrier and active faults")
    st.add_argument("name", nargs="?")
    fl = lsub.add_parser("fault", help="inject or clear a fault on a carrier")
    fl.add_argument("name")
    fl.add_argument("fault", choices=["carrier-down", "blackhole", "loss"])
    fl.add_argument("link", choices=["A", "B"])
    fl.add_argument("--clear", action="store_true")
    fl.add_argument("--probability", type=float, default=0.01, help="for loss (default 0.01)")
    sc = lsub.add_parser("scenario", help="measure a failover end to end, or an attack on it; exit 0 only if "
                                          "the scenario's contract holds")
    sc.add_argument("scenario", choices=["carrier-down", "blackhole", "spoofed-heartbeats", "forged-session"],
                    help="a fault on link A; spoofed-heartbeats: blackhole while an attacker on carrier A's "
                         "wire sends forged and replayed heartbeat replies; forged-session: a MoldUDP64 feed "
                         "with one forged packet of another session on line A (ignores the stream options)")
    sc.add_argument("--lab", metavar="NAME", help="use this lab (default: build one, tear it down after)")
    sc.add_argument("--json", action="store_true", help="print one JSON object")
    sc.add_argument("--rate", type=int, default=10_000, help="order stream packets/s (default 10000)")
    sc.add_argument("--interval-us", type=int, default=1000)
    sc.add_argument("--multiplier", type=int, default=3)

    bench = sub.add_parser("bench", help="measurement contracts, run in a lab of their own")
    bench.set_defaults(func=cmd_bench)
    bsub = bench.add_subparsers(dest="bench_cmd", required=True)
    arb = bsub.add_parser("arbitration", help=(
        "A/B arbitration: the six line-fault scenarios (sent, delivered, delivered_twice, out_of_order, "
        "gaps expected/reported), ns/packet against an empty XDP program, lab throughput"))
    arb.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
