"""`twinpath status | events | force | release | drain | undrain | reload`:
the operator's side of the daemon's control socket (appliance.edge.control).

Exit codes: 0 done, 1 the daemon refused (its reason on stderr), 2 the daemon
could not be reached (why, on stderr)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from appliance import statusview
from appliance.edge import control

REFUSED, UNREACHABLE = 1, 2


def _socket(args) -> str:
    return args.socket or control.default_socket_path()


def _call(args, cmd: str, **fields) -> tuple[int, dict[str, Any]]:
    """(exit code, the daemon's answer), the reason printed when not 0."""
    try:
        reply = control.request(_socket(args), cmd, **fields)
    except control.ControlError as e:
        print(f"twinpath {cmd}: {e}", file=sys.stderr)
        return UNREACHABLE, {}
    if not reply.get("ok"):
        print(f"twinpath {cmd}: refused: {reply.get('error', 'no reason given')}", file=sys.stderr)
        return REFUSED, reply
    return 0, reply


def cmd_status(args) -> int:
    code, reply = _call(args, "status")
    if code == 0:
        status = reply["status"]
        print(json.dumps(status, indent=2) if args.json else statusview.render(status))
    return code


def cmd_events(args) -> int:
    backlog = args.backlog if args.backlog is not None else 0 if args.follow else control.BACKLOG_LINES
    try:
        for event in control.events(_socket(args), backlog=backlog, follow=args.follow):
            print(json.dumps(event), flush=True)
    except control.ControlRefused as e:
        print(f"twinpath events: refused: {e}", file=sys.stderr)
        return REFUSED
    except control.ControlError as e:
        print(f"twinpath events: {e}", file=sys.stderr)
        return UNREACHABLE
    except KeyboardInterrupt:  # how a follow is meant to end
        pass
    except BrokenPipeError:  # `| head` had enough; keep Python's exit flush from failing too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _change(args, cmd: str, **fields: str) -> int:
    code, reply = _call(args, cmd, **fields)
    if code == 0:
        print(reply.get("message") or f"{' '.join([cmd, *fields.values()])}: done")
    return code


def cmd_force(args) -> int:
    return _change(args, "force", **{"class": args.class_name, "link": args.link})


def cmd_release(args) -> int:
    return _change(args, "release", **{"class": args.class_name})


def cmd_drain(args) -> int:
    return _change(args, "drain", link=args.link)


def cmd_undrain(args) -> int:
    return _change(args, "undrain", link=args.link)


def cmd_force_active(args) -> int:
    return _change(args, "force-active")


def cmd_force_standby(args) -> int:
    return _change(args, "force-standby")


def cmd_reload(args) -> int:
    return _change(args, "reload")


def _backlog(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


def _add(sub, name: str, summary: str, func, description: str | None = None) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=summary, description=description or summary)
    p.add_argument("--socket", metavar="PATH", help=(
        "the daemon's control socket (default: /run/twinpath/control-<network namespace inode>.sock, the daemon "
        "of the namespace this runs in; give the daemon's control.socket if its config sets one)"))
    p.set_defaults(func=func)
    return p


def add_commands(sub) -> None:
    """The operator's commands, added to twinpath's subparsers."""
    st = _add(sub, "status", "show each link's, class's and feed's state", cmd_status, (
        "Per link: state, RTT p50/p99/max, heartbeat loss and age, carrier, drained. Per class: current link, "
        "policy, failovers and the last one's cause. Per feed: copies won per line, gaps, line health."))
    st.add_argument("--json", action="store_true", help="print the daemon's status document as JSON, for scripts")

    ev = _add(sub, "events", "print the daemon's recent log lines (--follow: and new ones as they happen)",
              cmd_events, "The daemon's log, one JSON object a line, as it logs it. Without --follow: the lines it "
                          f"keeps (the last {control.BACKLOG_LINES}), then exit. With --follow: new lines until "
                          "Ctrl-C; a follower that reads too slowly gets an events-dropped line with the count.")
    ev.add_argument("--follow", "-f", action="store_true", help="keep printing new lines as they happen")
    ev.add_argument("--backlog", type=_backlog, metavar="N", help=(
        f"start with the last N lines (default: all it keeps, up to {control.BACKLOG_LINES}, without --follow; "
        "none with --follow)"))

    force = _add(sub, "force", "pin CLASS to LINK now, overriding its policy, until `twinpath release CLASS`",
                 cmd_force)
    force.add_argument("class_name", metavar="CLASS", help="a traffic class of the config, e.g. orders")
    force.add_argument("link", metavar="LINK", help="one of the class's links; it must be fresh and not drained")

    release = _add(sub, "release", "end `twinpath force` on CLASS: its policy decides again", cmd_release)
    release.add_argument("class_name", metavar="CLASS", help="a forced class")

    drain = _add(sub, "drain", "take LINK out of service (maintenance): every class leaves it now and none uses "
                               "it until `twinpath undrain LINK`", cmd_drain)
    drain.add_argument("link", metavar="LINK", help=(
        "a link of the config; refused while a class is forced onto it or it is a class's last usable link"))

    _add(sub, "force-active", "HA pair: take ownership of the virtual address from the peer now (maintenance)",
         cmd_force_active, "Asks the witness to make this gateway the owner (compare-and-swap at the token it last "
                           "read); the peer steps down when the witness tells it. Refused while this gateway is off "
                           "the LAN, has no fresh order link, or the witness is unreachable. Also ends a "
                           "force-standby hold.")
    _add(sub, "force-standby", "HA pair: hand the virtual address over to the peer now, and hold this gateway "
                               "standby (maintenance)", cmd_force_standby,
         "The active hands ownership to the peer through the witness; refused unless the peer is alive and its "
         "daemon reports the LAN and an order link. The hold keeps this gateway from taking ownership back when it "
         "is vacant or by preemption until `twinpath force-active`; it still takes over from a dead or unfit "
         "peer, since anything else would black-hole orders.")
    undrain = _add(sub, "undrain", "put a drained LINK back in service: the classes' policies may choose it again",
                   cmd_undrain)
    undrain.add_argument("link", metavar="LINK", help="a drained link")

    _add(sub, "reload", "make the daemon re-read its config file and apply what changed", cmd_reload)
