"""twinpath command line."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from appliance import ctl


def _load_config(path: str):
    """The config, or None after printing why it is unusable."""
    from appliance.core.config import ConfigError
    from appliance.edge.configfile import load
    try:
        return load(path)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return None


def cmd_run(args) -> int:
    """2, with the reason on stderr, for a config that is bad or does not fit
    this gateway (preflight) and when another daemon runs this gateway;
    either is refused before anything is attached."""
    from appliance.core.config import ConfigError
    from appliance.edge.control import ControlError
    from appliance.edge.gatelock import GatewayBusy
    from appliance.edge.pins import PinError
    cfg = _load_config(args.config)
    if cfg is None:
        return 2
    from appliance.daemon import Daemon
    from appliance.edge import jsonlog
    stop = threading.Event()
    daemon = Daemon(cfg, jsonlog.configure(), stats_interval_s=args.stats_interval, record=args.record)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: daemon.reload_requested.set())
    try:
        daemon.run(stop)
    except (ConfigError, GatewayBusy, PinError, ControlError) as e:
        print(e, file=sys.stderr)
        return 2
    return 0


def cmd_detach(args) -> int:
    """Everything twinpath added to this gateway goes; refused while a
    daemon runs it (that daemon would re-attach, or lose its maps)."""
    from pyroute2 import IPRoute

    from appliance.edge import gatelock
    from appliance.edge.dataplane import detach_all
    from appliance.edge.pins import PinDir, default_pin_dir
    pin_dir, cfg = args.pin_dir, None
    if args.config:
        cfg = _load_config(args.config)
        if cfg is None:
            return 2
        pin_dir = pin_dir or cfg.state.pin_dir
    pins = PinDir(pin_dir or default_pin_dir())
    try:
        with gatelock.GatewayLock(), IPRoute() as ipr:
            removed = detach_all(ipr, pins)
            # A detached pair member must not keep answering for the virtual address.
            if cfg and cfg.pair and _remove_vip(ipr, cfg):
                removed.append(f"virtual address {cfg.pair.vip} on {cfg.steer.ingress}")
    except gatelock.GatewayBusy as e:
        print(e, file=sys.stderr)
        return 2
    if not removed:
        print(f"nothing to detach: no twinpath state at {pins.path}")
    for line in removed:
        print(f"removed {line}")
    return 0


def _remove_vip(ipr, cfg) -> bool:
    from appliance.edge import netlink, vip
    try:
        index = netlink.link_info(ipr, cfg.steer.ingress)[0]
    except LookupError:   # the interface is gone: so is its address
        return False
    return vip.remove(ipr, index, cfg.pair.vip)


def cmd_check_config(args) -> int:
    from appliance.core.classify import PROTOCOLS, compile_rules
    proto_names = {v: k for k, v in PROTOCOLS.items()}
    cfg = _load_config(args.config)
    if cfg is None:
        return 2
    hb, det, damp = cfg.heartbeat, cfg.detection, cfg.damping
    print(f"{args.config}: ok. heartbeat {hb.interval_us} us x {hb.multiplier} "
          f"(dead after {hb.dead_ns / 1e6:g} ms), failback hold-down {hb.holddown_ms} ms, "
          f"sender {'SCHED_FIFO ' + str(hb.sender_priority) if hb.sender_priority else 'normal scheduling'}")
    print(f"  gray: {det.quorum} of rtt (> baseline + max({det.rtt_margin_us} us, {det.rtt_margin_ratio:g} x)), "
          f"loss (> {det.loss_threshold:g} of {det.loss_window} probes or > {det.loss_burst} in a row), "
          f"jitter (> {det.jitter_threshold_us} us) for {det.confirm} readings")
    print("  damping: " + (f"penalty {damp.penalty} per flap, suppress > {damp.suppress}, reuse < {damp.reuse}, "
                            f"half-life {damp.half_life_s:g} s, at most {damp.max_suppress_s:g} s"
                            if damp.enabled else "off") +
          f"; prediction {'on above ' + format(cfg.prediction.threshold, 'g') if cfg.prediction.enabled else 'off'}")
    for c in cfg.classes:
        if c.policy == "lowest-latency":
            how = (f"lowest-latency, better by max({c.hysteresis_us} us, {c.hysteresis_ratio:g} x) for "
                   f"{c.confirm} readings, dwell {c.min_dwell_ms} ms")
        else:
            how = f"active-backup, {'preempt' if c.preempt else 'no preempt'}"
        print(f"  class {c.name}: links {' > '.join(c.links)} ({how})")
    for prefix, rules in compile_rules(cfg).items():
        for r in rules:
            print(f"  {prefix} proto {proto_names[r.proto]} ports {r.port_lo}-{r.port_hi} -> "
                  f"{cfg.classes[r.class_id].name}")
    return 0


def cmd_replay(args) -> int:
    """The decisions of a recorded run, re-made by the core from its inputs:
    the same JSON lines the daemon logged for them (without 'time')."""
    from appliance.core.decision import replay
    from appliance.edge.trace import TraceError, read
    try:
        for decision in replay(*read(args.trace)):
            print(json.dumps(decision.record()))
    except (OSError, TraceError) as e:
        print(e, file=sys.stderr)
        return 2
    except (TypeError, ValueError, KeyError, IndexError) as e:  # a well-formed line the core cannot take
        print(f"{args.trace}: input the core refuses: {e!r}", file=sys.stderr)
        return 2
    return 0


def cmd_lab(lab_args: list[str]) -> int:
    """The lab lives beside the product, not in it: from a checkout (the
    repository on sys.path, as `make` runs it) this is `python -m lab`."""
    try:
        from lab.__main__ import main as lab_main
    except ModuleNotFoundError:
        print("twinpath lab: the lab is not part of the installed product; run it from a twinpath checkout "
              "(cd twinpath && python -m lab ...)", file=sys.stderr)
        return 2
    return lab_main(lab_args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twinpath", description=(
        "Failover appliance for colocation gateways: an eBPF fast path steers order and market-data "
        "traffic over redundant links and fails over in the kernel when a link goes quiet."))
    sub = p.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="run the daemon (attaches the fast path; on SIGTERM/Ctrl-C it stays "
                                     "attached and forwarding on its last state unless state.on_stop = \"detach\")")
    run.add_argument("--config", required=True, metavar="FILE.toml")
    run.add_argument("--stats-interval", type=float, default=10.0, metavar="S",
                     help="seconds between 'health' log lines (default 10)")
    run.add_argument("--record", metavar="FILE", help=(
        "write every input the decision core consumes to FILE (JSON lines, ~220 MB/hour with two links "
        "and a feed), "
        "for `twinpath replay`"))
    run.set_defaults(func=cmd_run)

    chk = sub.add_parser("check-config", help="validate a config and show the compiled rules")
    chk.add_argument("config", metavar="FILE.toml")
    chk.set_defaults(func=cmd_check_config)

    det = sub.add_parser("detach", help="remove every program, pin and qdisc twinpath added to this gateway "
                                        "(traffic returns to kernel routing); refused while a daemon runs")
    det.add_argument("--config", metavar="FILE.toml", help="take the pin directory from this config")
    det.add_argument("--pin-dir", metavar="DIR", help="the pin directory (default: state.pin_dir, else "
                                                      "/sys/fs/bpf/twinpath/gw-<netns inode>)")
    det.set_defaults(func=cmd_detach)

    ctl.add_commands(sub)

    rep = sub.add_parser("replay", help="re-run the decision core on a trace from `run --record` and print its "
                                        "decisions as the daemon logged them")
    rep.add_argument("trace", metavar="FILE")
    rep.set_defaults(func=cmd_replay)

    lab = sub.add_parser("lab", add_help=False, help="from a checkout: the lab (`python -m lab`: a colo in network "
                                                     "namespaces, faults, scenarios); not in the installed product")
    lab.add_argument("lab_args", nargs=argparse.REMAINDER)
    lab.set_defaults(func=lambda args: cmd_lab(args.lab_args))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lab"]:   # everything after it is the lab's, --help included
        return cmd_lab(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
