"""FRR's bfdd on the lab's carrier links: the reference failure detector.

One single-hop IPv4 BFD session per link, between gw (`lnkA` 198.18.10.1) and
the carrier (`gwA` 198.18.10.2), at FRR 8.4's fastest timers: transmit and
receive interval 10 ms (the CLI's minimum; 9 is "No such command"), detect
multiplier 3. A benchmark compares our detection time against the gw-side
bfdd's for the same fault.

What bfdd needs (FRR 8.4.4, checked in the lab):
- bfdd alone, no zebra. `peer <carrier> local-address <gw>` without
  `interface` comes Up without zebra: bfdd binds its socket to the local
  address and the kernel's connected /30 route picks the veth. With
  `interface lnkA` the session stays disabled ("session-enable: specified
  interface lnkA (VRF default) doesn't exist") until a zebra in the same
  namespace reports the interface. zebra is avoided on purpose: it writes to
  the kernel (it installs `proto zebra` nexthop objects, `ip nexthop`, for the
  kernel routes, and tries again on carrier loss), and it adds nothing to
  detection: with zebra, carrier-down is still detected by timeout
  ("control-expired"), as without.
- One bfdd per namespace, kept apart by FRR's pathspace (`-N <namespace>`):
  pid file, vty and control sockets go to /var/run/frr/<namespace>/, which
  stop() removes (bfdd leaves it behind even on a clean exit). `-P 0` turns
  off the TCP vty. bfdd runs in the foreground as user frr, so its config
  file must be readable by frr (an unreadable one is silently ignored).

Timestamps: bfdd's own log. With `debug bfd peer` bfdd logs every state
change from the function that makes it (ptm_bfd_sess_dn(), run by the
detection timer's callback), and FRR's logger stamps a message with
CLOCK_REALTIME when it is created, not when it is written out; `log timestamp
precision 6` keeps microseconds. The alternative, sniffing bfdd's packets in
gw, only works for some faults: bfdd sends a Down packet right at detection,
which a packet socket on gw's link sees under a blackhole (the drop is on the
carrier's side), but under carrier-down gw's veth has no carrier and no tap
sees the packet (the kernel drops it on the way out). Against that packet's
kernel stamp the log stamp is 16-46 us late in 17 of 20 blackhole trials (the
rest 135-196 us): under 1 % of a 20-30 ms detection, taken the same way for
every fault, and biased against bfdd (never early). FRR formats the stamp in local time, so bfdd runs
with TZ=UTC and the parser reads UTC. Realtime becomes monotonic by an offset
measured at start(); the offset only changes if the realtime clock is stepped
(NTP slewing moves both clocks alike), which every read of the logs checks.

The gw-side log has these lines (FRR logs no reason on the way up, and the
down -> init step not at all):
    2026/11/21 12:33:28.756220 BFD: [SEY1D-NT8EQ] state-change: [mhop:no
      peer:198.18.10.2 local:198.18.10.1 vrf:default] up -> down reason:control-expired
"""

from __future__ import annotations

import calendar
import json
import os
import re
import signal
import stat
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lab.colo import LINKS, Lab, LinkSpec
from lab.traffic import realtime_minus_monotonic_ns

BFDD = Path("/usr/lib/frr/bfdd")
VTYSH = "vtysh"
FRR_RUN_DIR = Path("/var/run/frr")  # + pathspace: where bfdd puts pid file and sockets
FRR_TMP_DIR = Path("/var/tmp/frr")  # + bfdd.<pid>: FRR's per-process scratch directory
FRR_USER = "frr"
MIN_INTERVAL_MS = 10  # FRR 8.4: receive-interval / transmit-interval (10-60000)
MIN_MULTIPLIER, MAX_MULTIPLIER = 2, 255
STATES = ("admin-down", "down", "init", "up")
CLOCK_STEP_TOLERANCE_NS = 1_000_000
POLL_S = 0.002
STOP_GRACE_S = 3.0
LOG_TAIL_LINES = 15

_STATE_CHANGE_RE = re.compile(
    r"^(?P<date>\d{4}/\d{2}/\d{2}) (?P<time>\d{2}:\d{2}:\d{2})(?:\.(?P<frac>\d{1,9}))?"
    r" BFD: (?:\[[^\]]*\])+ state-change: \[(?P<session>[^\]]*)\]"
    r" (?P<from>[a-z-]+) -> (?P<to>[a-z-]+)(?: reason:(?P<diag>\S+))?\s*$"
)


class BfdError(RuntimeError):
    pass


def parse_state_changes(lines: Iterable[str], links_by_peer: Mapping[str, str],
                        realtime_minus_monotonic: int) -> list[dict]:
    """bfdd log lines (logged in UTC) -> state transitions of the sessions
    whose peer address is in links_by_peer, in log order:
    {"link", "mono_ns", "from", "to", "diag", "peer", "local"}. "diag" is
    FRR's reason (e.g. "control-expired"), None where FRR gives none (going
    up). Other lines and other peers are skipped."""
    result = []
    for line in lines:
        match = _STATE_CHANGE_RE.match(line.rstrip("\r\n"))
        if match is None:
            continue
        session = dict(item.split(":", 1) for item in match["session"].split() if ":" in item)
        link = links_by_peer.get(session.get("peer", ""))
        if link is None:
            continue
        result.append({
            "link": link,
            "mono_ns": _log_realtime_ns(match) - realtime_minus_monotonic,
            "from": match["from"],
            "to": match["to"],
            "diag": match["diag"],
            "peer": session["peer"],
            "local": session.get("local"),
        })
    return result


def _log_realtime_ns(match: re.Match) -> int:
    stamp = time.strptime(f"{match['date']} {match['time']}", "%Y/%m/%d %H:%M:%S")
    frac = match["frac"] or "0"
    return calendar.timegm(stamp) * 1_000_000_000 + int(frac.ljust(9, "0"))


def render_config(link_specs: Iterable[LinkSpec], side: str, interval_ms: int, multiplier: int) -> str:
    """bfdd's config for one namespace: side "gw" (peers are the carriers) or
    "carrier" (the peer is gw)."""
    if side not in ("gw", "carrier"):
        raise ValueError(f"side must be 'gw' or 'carrier', not {side!r}")
    peers = []
    for spec in link_specs:
        local, peer = (spec.gw_addr, spec.target) if side == "gw" else (spec.target, spec.gw_addr)
        peers.append(
            f" peer {peer} local-address {local}\n"
            f"  receive-interval {interval_ms}\n"
            f"  transmit-interval {interval_ms}\n"
            f"  detect-multiplier {multiplier}\n"
            "  no shutdown\n"
            " !\n"
        )
    return ("log stdout debugging\n"
            "log timestamp precision 6\n"
            "debug bfd peer\n"
            "!\n"
            "bfd\n" + "".join(peers) + "!\n")


@dataclass
class _Daemon:
    role: str
    ns: str
    config: Path
    log: Path
    links_by_peer: dict[str, str]
    proc: subprocess.Popen | None = None
    pid: int | None = None
    offset: int = 0  # bytes of the log parsed so far
    partial: bytes = b""
    transitions: list[dict] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return FRR_RUN_DIR / self.ns

    def read_log(self, realtime_minus_monotonic: int) -> int:
        """Parse what bfdd logged since the last call; returns how many new transitions."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        if not data:
            return 0
        self.offset += len(data)
        data = self.partial + data
        complete, _, self.partial = data.rpartition(b"\n")
        if not complete:
            return 0
        new = parse_state_changes(complete.decode(errors="replace").split("\n"),
                                  self.links_by_peer, realtime_minus_monotonic)
        self.transitions.extend(new)
        return len(new)

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class Bfdd:
    """FRR bfdd in gw and in each carrier namespace, one single-hop session per link.

    Usage: `with Bfdd(lab, workdir) as bfd: t0 = faults.inject(...);
    bfd.wait_state("A", "down", 5, since_ns=t0)`. Stop it before the lab goes
    down: topology.down() kills bfdd but leaves /var/run/frr/<namespace>/.
    """

    def __init__(self, lab: Lab, workdir: Path, links=("A", "B"), interval_ms: int = MIN_INTERVAL_MS,
                 multiplier: int = 3):
        links = tuple(links)
        unknown = [name for name in links if name not in LINKS]
        if unknown or not links or len(set(links)) != len(links):
            raise ValueError(f"links must be distinct names from {', '.join(LINKS)}; got {links!r}")
        if not MIN_INTERVAL_MS <= int(interval_ms) <= 60000:
            raise ValueError(f"FRR 8.4 accepts intervals of {MIN_INTERVAL_MS}-60000 ms; got {interval_ms}")
        if not MIN_MULTIPLIER <= int(multiplier) <= MAX_MULTIPLIER:
            raise ValueError(f"FRR accepts a detect multiplier of {MIN_MULTIPLIER}-{MAX_MULTIPLIER}; got {multiplier}")
        self.lab = lab
        self.workdir = Path(workdir)
        self.links = links
        self.interval_ms = int(interval_ms)
        self.multiplier = int(multiplier)
        self.realtime_minus_monotonic_ns: int | None = None
        self._started = False
        self._stopping_ns: int | None = None  # bfdd logs its sessions going down as it exits
        specs = [LINKS[name] for name in links]
        self._daemons: list[_Daemon] = [self._daemon("gw", {spec.target: spec.name for spec in specs})]
        for spec in specs:
            self._daemons.append(self._daemon(spec.carrier, {spec.gw_addr: spec.name}))

    def _daemon(self, role: str, links_by_peer: dict[str, str]) -> _Daemon:
        directory = self.workdir / role
        return _Daemon(role=role, ns=self.lab.ns(role), config=directory / "bfdd.conf",
                       log=directory / "bfdd.log", links_by_peer=links_by_peer)

    @staticmethod
    def available() -> bool:
        """Whether FRR's bfdd is installed."""
        return os.access(BFDD, os.X_OK)

    @property
    def gw(self) -> _Daemon:
        return self._daemons[0]

    # -- lifecycle -----------------------------------------------------------

    def start(self, timeout_s: float = 30) -> None:
        """Start bfdd everywhere and wait until every session is Up on both ends."""
        if self._started:
            raise BfdError("bfdd already started")
        if not self.available():
            raise BfdError(f"no FRR bfdd at {BFDD} (apt-get install frr)")
        self._started = True
        try:
            self._write_configs()
            self.realtime_minus_monotonic_ns = realtime_minus_monotonic_ns()
            for daemon in self._daemons:
                self._spawn(daemon)
            self._wait_all_up(timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every bfdd started here (gw first, so it logs no shutdown of
        its peers) and remove what FRR left behind; safe to call again.
        State changes logged from here on (bfdd takes its sessions down,
        "path-down", as it exits) are not reported."""
        if self._stopping_ns is None and any(d.proc is not None for d in self._daemons):
            self._stopping_ns = time.monotonic_ns()
        for daemon in self._daemons:
            proc = daemon.proc
            if proc is not None:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(STOP_GRACE_S)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(STOP_GRACE_S)
                daemon.proc = None
            if self.realtime_minus_monotonic_ns is not None:
                daemon.read_log(self.realtime_minus_monotonic_ns)
            if daemon.pid is not None:  # never another instance's files
                self._remove_leftovers(daemon)

    def __enter__(self) -> Bfdd:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- results -------------------------------------------------------------

    def transitions(self) -> list[dict]:
        """gw-side session state changes so far, in time order: {"link",
        "mono_ns", "from", "to", "diag", "peer", "local"}."""
        self._read_logs()
        return self._reported(self.gw.transitions)

    def carrier_transitions(self) -> list[dict]:
        """The same, as the carriers' bfdd saw them."""
        self._read_logs()
        return self._reported(t for d in self._daemons[1:] for t in d.transitions)

    def _reported(self, transitions: Iterable[dict]) -> list[dict]:
        cutoff = self._stopping_ns
        return sorted((t for t in transitions if cutoff is None or t["mono_ns"] < cutoff),
                      key=lambda t: t["mono_ns"])

    def state(self, link: str) -> str:
        """The gw side's state of link's session as of its last logged change."""
        self._check_link(link)
        changes = [t for t in self.transitions() if t["link"] == link]
        return changes[-1]["to"] if changes else "down"

    def wait_state(self, link: str, state: str, timeout_s: float, since_ns: int | None = None) -> dict:
        """The first gw-side transition of link to state at or after since_ns
        (monotonic ns; default: now). Pass faults.inject()'s return value to
        also catch a detection that happened before this call."""
        self._check_link(link)
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; expected one of {', '.join(STATES)}")
        since_ns = time.monotonic_ns() if since_ns is None else since_ns
        deadline = time.monotonic() + timeout_s
        while True:
            for change in self.transitions():
                if change["link"] == link and change["to"] == state and change["mono_ns"] >= since_ns:
                    return change
            self._check_running()
            if time.monotonic() >= deadline:
                raise BfdError(f"link {link} did not go {state} within {timeout_s} s; "
                               f"gw-side changes: {self.transitions()}\n{self._tails()}")
            time.sleep(POLL_S)

    def show_peers(self, role: str = "gw") -> list[dict]:
        """`show bfd peers json` from role's bfdd, via vtysh (FRR's own view, not the log)."""
        daemon = next((d for d in self._daemons if d.role == role), None)
        if daemon is None or daemon.proc is None:
            raise BfdError(f"no running bfdd in {role}")
        out = subprocess.run([VTYSH, "-N", daemon.ns, "-d", "bfdd", "-c", "show bfd peers json"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            raise BfdError(f"vtysh -N {daemon.ns} failed ({out.returncode}): {out.stderr.strip()}")
        return json.loads(out.stdout)

    # -- internals -----------------------------------------------------------

    def _check_link(self, link: str) -> None:
        if link not in self.links:
            raise ValueError(f"no session on link {link!r}; this Bfdd runs {', '.join(self.links)}")

    def _write_configs(self) -> None:
        specs = [LINKS[name] for name in self.links]
        for daemon in self._daemons:
            daemon.config.parent.mkdir(parents=True, exist_ok=True)
            daemon.config.parent.chmod(0o755)
            side_specs = specs if daemon.role == "gw" else [s for s in specs if s.carrier == daemon.role]
            daemon.config.write_text(render_config(side_specs, "gw" if daemon.role == "gw" else "carrier",
                                                   self.interval_ms, self.multiplier))
            daemon.config.chmod(0o644)
            _check_world_readable(daemon.config)

    def _spawn(self, daemon: _Daemon) -> None:
        self._clear_stale_run_dir(daemon)
        argv = [str(BFDD), "-N", daemon.ns, "-f", str(daemon.config), "-P", "0"]
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "TZ": "UTC"}
        with open(daemon.log, "wb") as log:
            daemon.proc = self.lab.spawn(daemon.role, argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        # The lab's exec wrapper execs all the way down, so this is bfdd's pid.
        daemon.pid = daemon.proc.pid
        daemon.offset, daemon.partial, daemon.transitions = 0, b"", []

    def _clear_stale_run_dir(self, daemon: _Daemon) -> None:
        pid_file = daemon.run_dir / "bfdd.pid"
        try:
            pid = int(pid_file.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            pid = 0
        if pid and _is_bfdd(pid):
            raise BfdError(f"a bfdd (pid {pid}) already runs with pathspace {daemon.ns}")
        if daemon.run_dir.exists():
            self._remove_leftovers(daemon)

    def _remove_leftovers(self, daemon: _Daemon) -> None:
        for name in ("bfdd.pid", "bfdd.sock", "bfdd.vty"):
            try:
                (daemon.run_dir / name).unlink()
            except FileNotFoundError:
                pass
        try:
            daemon.run_dir.rmdir()
        except (FileNotFoundError, OSError):
            pass  # gone, or holds something that is not ours (e.g. a zebra's sockets)
        if daemon.pid is not None:
            scratch = FRR_TMP_DIR / f"bfdd.{daemon.pid}"
            try:
                for entry in scratch.iterdir():
                    entry.unlink()
                scratch.rmdir()
            except (FileNotFoundError, NotADirectoryError):
                pass

    def _wait_all_up(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self._read_logs()
            self._check_running()
            pending = [(d.role, name) for d in self._daemons for name in self.links
                       if name in d.links_by_peer.values() and _last_state(d.transitions, name) != "up"]
            if not pending:
                self._check_pids()
                return
            if time.monotonic() >= deadline:
                raise BfdError(f"BFD sessions not Up after {timeout_s} s ({', '.join(f'{r}:{n}' for r, n in pending)})"
                               f"\n{self._tails()}")
            time.sleep(0.01)

    def _check_pids(self) -> None:
        """stop() signals the Popen's pid: it must be bfdd itself."""
        for daemon in self._daemons:
            try:
                pid = int((daemon.run_dir / "bfdd.pid").read_text().strip())
            except (OSError, ValueError) as exc:
                raise BfdError(f"bfdd in {daemon.ns} wrote no pid file: {exc}") from None
            if pid != daemon.pid:
                raise BfdError(f"bfdd in {daemon.ns} is pid {pid}, not the spawned {daemon.pid}: "
                               "lab.spawn() no longer execs its command in place")

    def _read_logs(self) -> None:
        if self.realtime_minus_monotonic_ns is None:
            return
        new = sum(d.read_log(self.realtime_minus_monotonic_ns) for d in self._daemons)
        if new:
            drift = realtime_minus_monotonic_ns() - self.realtime_minus_monotonic_ns
            if abs(drift) > CLOCK_STEP_TOLERANCE_NS:
                raise BfdError(f"CLOCK_REALTIME was stepped by {drift} ns since start(); "
                               "bfdd's log stamps can no longer be turned into monotonic time")

    def _check_running(self) -> None:
        for daemon in self._daemons:
            if daemon.proc is not None and daemon.proc.poll() is not None:
                raise BfdError(f"bfdd in {daemon.ns} exited with {daemon.proc.returncode}\n{self._tails()}")

    def _tails(self) -> str:
        return "\n".join(f"--- {d.log} (last {LOG_TAIL_LINES} lines)\n{d.tail()}" for d in self._daemons)


def _last_state(transitions: list[dict], link: str) -> str | None:
    changes = [t for t in transitions if t["link"] == link]
    return max(changes, key=lambda t: t["mono_ns"])["to"] if changes else None


def _is_bfdd(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "bfdd"
    except OSError:
        return False


def _check_world_readable(path: Path) -> None:
    """bfdd reads its config as user frr, and ignores one it cannot read."""
    for directory in reversed(path.parents):
        if not directory.stat().st_mode & stat.S_IXOTH:
            raise BfdError(f"bfdd (user {FRR_USER}) cannot reach its config {path}: {directory} is not "
                           "searchable by others; use a workdir under a world-searchable directory "
                           "(e.g. lab.dir)")
    if not path.stat().st_mode & stat.S_IROTH:
        raise BfdError(f"bfdd (user {FRR_USER}) cannot read its config {path}")
