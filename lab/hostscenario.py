"""The host failover scenarios of `python -m lab scenario`: a fault on the
active gateway of an HA pair (lab.pair), measured from the exchange.

A sequence-numbered UDP order stream (10,000/s) runs trader -> VIP ->
exch for the whole trial; at before_s the active gateway (gw1 on a fresh
pair) takes a fault:

  host-death             kill_host: every interface down, every process SIGKILLed
  host-links-down        both of its carrier links black-holed
  crosslink-cut          the crosslink between the gateways cut (to the end)
  lan-partition          its LAN port cut for PARTITION_S, then healed: split brain shows at the heal
  witness-down           the witness's own port cut
  active-daemon-restart  twinpath: SIGTERM (fail static) and a new daemon on the same config;
                         keepalived: SIGTERM and started again
  switchover             the operator's controlled switchover (a rolling upgrade's): twinpath
                         force-standby on the active, which must lose no order; keepalived:
                         SIGTERM (its priority-0 advert hands over at once), started again after

Which gateway each order came through (exch's handoffs: lab.pair.exch_gateways)
gives took_over, takeover_us and dual_active_us (lab.hostanalysis); host-death
also carries a TCP order session, reported as tcp_session_survived. The peer
software is twinpath (a daemon per gateway and an etcd witness) or keepalived
(VRRP, gw1 priority 150, gw2 100, adverts every 10 ms; plain kernel routing),
the comparison.

A HostPair (prepare()) keeps the peer software running across trials, so a
caller runs trial() back to back on one lab: each waits until the pair has
settled (one active owning the VIP, the trader's next hop, the other
standby), faults the active, and restores the lab after (heals every cut,
brings links back, revives a killed host and restarts only the software
that died: starting a daemon compiles its programs, seconds). twinpath does not preempt, so after a
takeover the roles stay swapped and the next trial faults gw2; keepalived
preempts back to gw1.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from appliance.edge.configfile import load as load_config
from lab import pair, topology
from lab.hostanalysis import analyze_host
from lab.processes import ORDERS_PORT, DaemonProcess, ScenarioError, Tool, stop_stream, udp_stream

HOST_SCENARIOS = ("host-death", "host-links-down", "crosslink-cut", "lan-partition", "witness-down",
                  "active-daemon-restart", "switchover")
PEERS = ("twinpath", "keepalived")
# Whether twinpath must move orders to the other gateway (its contract).
EXPECT = {"host-death": True, "host-links-down": True, "lan-partition": True, "crosslink-cut": False,
          "witness-down": False, "active-daemon-restart": False, "switchover": True}
# Where twinpath must lose no order at all.
LOSSLESS = ("switchover",)
NODES = pair.NODES
KEEPALIVED_PRIORITY = {"gw1": 150, "gw2": 100}
KEEPALIVED_ADVERT_S = 0.01
PARTITION_S = 1.0
# How long an operation may take while the stream flows: a new daemon
# compiles its programs first (seconds; tens of seconds on a loaded 2-core host).
OPERATION_S = {"lan-partition": PARTITION_S, "active-daemon-restart": 60.0}
# witness-down is watched past twice write_config's lease (2 s): what the
# lease's expiry does is the point.
MIN_AFTER_S = {"witness-down": 5.0}
STREAM_SLACK_S = 2.0     # the stream is stopped once after_s has passed; this keeps it from ending first
DAEMON_START_S = 90.0    # BCC compiles the programs: slow on a loaded 2-core host
SETTLE_S = 120.0         # a revived host's daemon compiles before the pair can settle
QUIET_S = 1.0            # a settled pair's roles have not changed for this long
TCP_PORT = 9001          # the orders rule's ports, as bench/failover.py
TCP_ORDERS_PER_S = 1000
# The order sender runs SCHED_FIFO above the gateways' threads (probe sender
# 10, pair thread 9): the trader is a host of its own in the colo, and on this
# 2-core lab a normal sender fell up to 2.7 ms behind its schedule right at
# the takeover, which the exchange then measured as takeover time.
TRADER_PRIORITY = 20
STATS_INTERVAL_S = 3600  # no health lines: the logs are read at every settle poll


class HostPair:
    """A pair lab with its peer software running on both gateways, reused
    across trials (start() once, stop() at the end)."""

    def __init__(self, lab: pair.PairLab, peer: str = "twinpath", interval_us: int = 1000, multiplier: int = 3,
                 workdir: Path | None = None):
        """workdir: where each trial's captures, results and the daemons' logs
        go (default: a directory in the lab's, removed with the lab)."""
        if peer not in PEERS:
            raise ScenarioError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")
        self.lab, self.peer = lab, peer
        self.interval_us, self.multiplier = interval_us, multiplier
        self.workdir = workdir or lab.dir / f"host-{peer}-{time.strftime('%H%M%S')}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.daemons: dict[str, DaemonProcess] = {}
        self.keepalived: dict[str, subprocess.Popen] = {}
        self.witness: subprocess.Popen | None = None
        self.trials = 0
        self._started = 0
        # What restore() must undo, noted before each fault is injected.
        self._killed: set[str] = set()
        self._links_down: set[str] = set()

    # ---------------------------------------------------------- software

    def start(self) -> HostPair:
        if self.peer == "twinpath":
            self.witness = pair.start_witness(self.lab)
            for node in NODES:
                pair.write_config(self.lab, node, interval_us=self.interval_us, multiplier=self.multiplier)
            self._vacate_witness()
            # gw1 first: it takes the vacant ownership, gw2 then finds an owner.
            _wait_role(self._start_daemon("gw1"), ("active",))
            _wait_role(self._start_daemon("gw2"), ("standby",))
        else:
            for node in NODES:
                self._start_keepalived(node)
        self.settle()
        return self

    def stop(self) -> None:
        """Stops the peer software (twinpath: detached, so the lab is left as built)."""
        for daemon in self.daemons.values():
            daemon.stop()
        for proc in self.keepalived.values():
            if proc.poll() is None:
                # By its Popen (its process group's leader), not keepalived_stop's pid file: one restarted
                # a moment ago may not have replaced its predecessor's file yet.
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
        if self.witness is not None:
            pair.stop_witness(self.lab)

    def _vacate_witness(self) -> None:
        """Deletes the pair's keys: ownership outlives the daemons (fail
        static), so a reused lab's witness would still name its last owner,
        and the start order needs it vacant."""
        prefix = load_config(self.lab.config_path("gw1")).pair.prefix.rstrip("/") + "/"
        script = ("import base64, json, sys, urllib.request\n"
                  "key, end = (base64.b64encode(k.encode()).decode() for k in sys.argv[2:])\n"
                  "urllib.request.urlopen(sys.argv[1] + '/v3/kv/deleterange', json.dumps("
                  "{'key': key, 'range_end': end}).encode(), timeout=5).read()\n")
        # range_end: the prefix with its last byte ('/') raised by one, etcd's "every key under it".
        self.lab.run("gw1", [sys.executable, "-c", script, pair.witness_url(self.lab), prefix, prefix[:-1] + "0"])

    def _start_daemon(self, node: str) -> DaemonProcess:
        self._started += 1
        self.daemons[node] = DaemonProcess(self.lab, self.lab.config_path(node),
                                           self.workdir / f"daemon-{node}-{self._started}.jsonl",
                                           stats_interval_s=STATS_INTERVAL_S, role=node)
        return self.daemons[node]

    def _start_keepalived(self, node: str) -> None:
        self.keepalived[node] = pair.keepalived_start(self.lab, node, KEEPALIVED_PRIORITY[node],
                                                      advert_s=KEEPALIVED_ADVERT_S, preempt=True)

    # ---------------------------------------------------------- state

    def restore(self) -> None:
        """Undoes every fault and restarts the software that died; settle()
        then waits for the pair."""
        pair.heal_all(self.lab)
        for node in sorted(self._links_down):
            pair.links_up(self.lab, node)
        self._links_down.clear()
        for node in sorted(self._killed):
            pair.revive_host(self.lab, node)
        self._killed.clear()
        if self.peer == "twinpath":
            for node, daemon in list(self.daemons.items()):
                if daemon.proc.poll() is not None:
                    daemon.stop(detach=False)  # what a killed host's daemon left, revive_host removed
                    self._start_daemon(node)
        else:
            for node, proc in self.keepalived.items():
                if proc.poll() is not None:
                    self._start_keepalived(node)

    def candidate(self) -> str | None:
        """Who looks active, cheaply: twinpath's daemons' last pair-role
        (one active, one standby), keepalived's VIP on gw1 (it preempts)."""
        if self.peer == "keepalived":
            return "gw1" if pair.vip_holder(self.lab, "gw1") else None
        roles = {node: _last_role(daemon) for node, daemon in self.daemons.items()}
        if sorted(map(str, roles.values())) != ["active", "standby"]:
            return None
        return next(node for node, role in roles.items() if role == "active")

    def confirm(self, active: str) -> list[str]:
        """What keeps `active` from being settled (empty: nothing): it must
        hold the VIP alone and be the trader's next hop; twinpath's status
        must show the roles, both gateways on the LAN with an order link,
        and the witness reachable."""
        problems = []
        if self.peer == "twinpath":
            for node in NODES:
                status = self.pair_status(node)
                want = "active" if node == active else "standby"
                if status is None:
                    problems.append(f"{node}: no status")
                elif (status.get("role"), status.get("lan"), status.get("links"),
                      (status.get("witness") or {}).get("reachable")) != (want, True, True, True):
                    problems.append(f"{node}: pair status {json.dumps(status)}")
        holders = [node for node in NODES if pair.vip_holder(self.lab, node)]
        if holders != [active]:
            problems.append(f"VIP on {holders or 'no gateway'}")
        next_hop = self.trader_next_hop()
        if next_hop != active:
            problems.append(f"the trader's next hop for the VIP is {next_hop}")
        return problems

    def pair_status(self, node: str) -> dict | None:
        """`twinpath status --json`'s pair object; None if no daemon answered."""
        done = self.lab.run(node, [sys.executable, "-m", "appliance.cli", "status", "--json"], check=False)
        return json.loads(done.stdout).get("pair") if done.returncode == 0 else None

    def trader_next_hop(self) -> str | None:
        """The gateway whose `int` MAC the trader's neighbour entry for the VIP names."""
        self.lab.run("trader", ["ping", "-c", "1", "-W", "1", topology.EXCHANGE_ADDR], check=False)
        neigh = json.loads(self.lab.run("trader", ["ip", "-j", "neigh", "show", "to", pair.VIP]).stdout or "[]")
        lladdr = next((n["lladdr"].lower() for n in neigh if n.get("lladdr")), None)
        for node in NODES:
            with self.lab.iproute(node) as ipr:
                if ipr.link("get", ifname=pair.INGRESS_DEV)[0].get_attr("IFLA_ADDRESS").lower() == lladdr:
                    return node
        return None

    def settle(self, timeout_s: float = SETTLE_S) -> str:
        """Waits until one gateway has looked active for QUIET_S with no role
        change (a flapping pair never settles), and confirm() finds nothing
        wrong; returns it."""
        deadline = time.monotonic() + timeout_s
        since_ns, seen, problems = 0, None, []
        while True:
            for node, daemon in self.daemons.items():
                if daemon.proc.poll() is not None:
                    raise ScenarioError(f"{node}'s daemon exited ({daemon.proc.returncode}):\n"
                                        f"{daemon.log_path.read_text()[-3000:]}")
            active = self.candidate()
            last_change_ns = max((e["mono_ns"] for d in self.daemons.values() for e in _pair_roles(d)), default=0)
            if active is None or active != seen or last_change_ns > since_ns:
                # twinpath's roles have been what they are since their last change, however long ago.
                seen, since_ns = active, last_change_ns if self.peer == "twinpath" else time.monotonic_ns()
                problems = [f"{active} not yet active for {QUIET_S:g} s with no role change" if active
                            else "no gateway looks active (one active, one standby)"]
            elif time.monotonic_ns() - since_ns >= QUIET_S * 1e9:
                problems = self.confirm(active)
                if not problems:
                    return active
                since_ns = time.monotonic_ns()
            if time.monotonic() > deadline:
                raise ScenarioError(f"the {self.peer} pair did not settle in {timeout_s:g} s: {'; '.join(problems)}")
            time.sleep(0.1)

    # ---------------------------------------------------------- faults

    def fault(self, name: str, active: str) -> tuple[int, dict]:
        """Injects scenario `name` on `active` and carries it through (a
        partition healed, a restart finished); returns when it came
        (CLOCK_MONOTONIC ns) and what the operation reported."""
        lab = self.lab
        if name == "host-death":
            self._killed.add(active)
            return pair.kill_host(lab, active), {}
        if name == "host-links-down":
            self._links_down.add(active)
            return pair.links_down(lab, active), {}
        if name == "crosslink-cut":
            return pair.cut(lab, "crosslink"), {}
        if name == "witness-down":
            return pair.cut(lab, "witness"), {}
        if name == "lan-partition":
            fault_ns = pair.cut(lab, "lan", active)
            time.sleep(PARTITION_S)
            return fault_ns, {"healed_us": round((pair.heal(lab, "lan", active) - fault_ns) / 1000, 1)}
        if name == "switchover":
            return self._switchover(active)
        if name != "active-daemon-restart":
            raise ScenarioError(f"unknown host scenario {name!r}; choose from {', '.join(HOST_SCENARIOS)}")
        if self.peer == "keepalived":
            fault_ns = pair.keepalived_stop(lab, active, signal.SIGTERM)
            self.keepalived[active].wait(timeout=10)
            self._start_keepalived(active)
            return fault_ns, {"restart_s": round((time.monotonic_ns() - fault_ns) / 1e9, 3)}
        fault_ns = time.monotonic_ns()
        self.daemons[active].stop(detach=False)   # fail static
        self._start_daemon(active).wait_for("ready", DAEMON_START_S)
        return fault_ns, {"restart_s": round((time.monotonic_ns() - fault_ns) / 1e9, 3)}


    def _switchover(self, active: str) -> tuple[int, dict]:
        if self.peer == "keepalived":
            fault_ns = pair.keepalived_stop(self.lab, active, signal.SIGTERM)
            self.keepalived[active].wait(timeout=10)   # restore() starts it again
            return fault_ns, {}
        fault_ns = time.monotonic_ns()
        out = self.lab.run(active, [sys.executable, "-m", "appliance.cli", "force-standby"], timeout=30)
        return fault_ns, {"force_standby": out.stdout.strip()}


def _pair_roles(daemon: DaemonProcess) -> list[dict]:
    return [e for e in daemon.events() if e.get("event") == "pair-role"]


def _last_role(daemon: DaemonProcess) -> str | None:
    roles = _pair_roles(daemon)
    return roles[-1]["role"] if roles else None


def _wait_role(daemon: DaemonProcess, roles: tuple[str, ...], timeout_s: float = DAEMON_START_S) -> None:
    deadline = time.monotonic() + timeout_s
    while (role := _last_role(daemon)) not in roles:
        if daemon.proc.poll() is not None:
            raise ScenarioError(f"{daemon.role}'s daemon exited ({daemon.proc.returncode}):\n"
                                f"{daemon.log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise ScenarioError(f"{daemon.role}'s daemon logged no pair-role {'/'.join(roles)} in {timeout_s:g} s "
                                f"(last: {role}):\n{daemon.log_path.read_text()[-3000:]}")
        time.sleep(0.05)


def prepare(lab: pair.PairLab, peer: str = "twinpath", interval_us: int = 1000, multiplier: int = 3,
            workdir: Path | None = None) -> HostPair:
    """Starts the peer software on the pair and waits for it to settle; the
    caller stop()s the HostPair when done."""
    hp = HostPair(lab, peer, interval_us, multiplier, workdir)
    try:
        return hp.start()
    except BaseException:
        hp.stop()
        raise


def trial(hp: HostPair, name: str, rate_pps: int = 10_000, before_s: float = 1.0, after_s: float = 2.0) -> dict:
    """One trial of scenario `name` on a prepared pair; the lab is restored
    after it, whatever happens."""
    if name not in HOST_SCENARIOS:
        raise ScenarioError(f"unknown host scenario {name!r}; choose from {', '.join(HOST_SCENARIOS)}")
    lab = hp.lab
    after_s = max(after_s, MIN_AFTER_S.get(name, 0.0))
    active = hp.settle()
    hp.trials += 1
    workdir = hp.workdir / f"{hp.trials:03d}-{name}"
    workdir.mkdir()
    duration_s = before_s + OPERATION_S.get(name, 0.0) + after_s + STREAM_SLACK_S
    ran = list(hp.daemons.values())   # the daemons whose pair-role events belong to this trial
    with ExitStack() as cleanup:
        cleanup.callback(hp.restore)
        start_ns = time.monotonic_ns()
        # Connected before the stream starts: the stream's length leaves no room for it.
        tcp = _TcpSession(lab, workdir, before_s + after_s, cleanup) if name == "host-death" else None
        receiver, sender = udp_stream(lab, workdir, rate_pps, duration_s, sender_priority=TRADER_PRIORITY)
        stream_end = time.monotonic() + duration_s
        cleanup.callback(receiver.stop)
        cleanup.callback(sender.stop)
        time.sleep(before_s)
        fault_ns, operation = hp.fault(name, active)
        if time.monotonic() + after_s > stream_end:
            raise ScenarioError(f"{name} took {(time.monotonic_ns() - fault_ns) / 1e9:.1f} s: the stream would "
                                f"end before {after_s:g} s after it")
        ran += [d for d in hp.daemons.values() if d not in ran]
        time.sleep(after_s)
        sent, _received = stop_stream(receiver, sender)
        arrivals = np.load(workdir / f"arrivals-{ORDERS_PORT}.npy")
        host = analyze_host(arrivals, sent["issued"], fault_ns, pair.exch_gateways(lab), active)
        result = {
            "scenario": name, "peer": hp.peer, "active": active,
            **{k: host[k] for k in ("took_over", "takeover_us", "lost", "duplicated", "reordered",
                                    "dual_active_us", "sent", "received", "lost_ranges", "via", "switches",
                                    "dual_active_episodes", "takeover_order_delay_us", "outage_us")},
            "interval_us": hp.interval_us, "multiplier": hp.multiplier, "rate_pps": rate_pps,
            "lab": lab.name, "operation": operation,
        }
        if tcp:
            result.update(tcp.result())
        if hp.peer == "twinpath":
            result["pair_roles"] = sorted(
                ({"node": d.role, "t_us": round((e["mono_ns"] - fault_ns) / 1000, 1), "role": e["role"],
                  "cause": e.get("cause"), "token": e.get("token"),
                  **{k: e[k] for k in ("peer_heard_us", "peer_unanswered") if k in e}}
                 for d in ran for e in _pair_roles(d) if e["mono_ns"] >= start_ns),
                key=lambda e: e["t_us"])
            # The pair threads' own late readings: what a late takeover spent its time on.
            result["pair_late"] = sorted(
                ({"node": d.role, "t_us": round((e["mono_ns"] - fault_ns) / 1000, 1),
                  **{k: v for k, v in e.items() if k not in ("time", "mono_ns", "event")}}
                 for d in ran for e in d.events() if e.get("event") == "pair-late" and e["mono_ns"] >= start_ns),
                key=lambda e: e["t_us"])
        (workdir / "result.json").write_text(json.dumps(result, indent=1))
        return result


class _TcpSession:
    """One TCP order session trader -> exch across the fault (1 order/ms),
    as bench/failover.py carries one."""

    def __init__(self, lab: pair.PairLab, workdir: Path, seconds: float, cleanup: ExitStack):
        self.orders = int(TCP_ORDERS_PER_S * seconds)
        self.server = Tool.in_lab(lab, "exch", "tcp-server", "--bind", topology.EXCHANGE_ADDR,
                                  "--port", str(TCP_PORT), "--timeout", str(seconds + 60),
                                  "--out", str(workdir / "tcp-server.json"))
        cleanup.callback(self.server.stop)
        self.server.wait_ready()
        self.client = Tool.in_lab(lab, "trader", "tcp-client", "--dst", topology.EXCHANGE_ADDR,
                                  "--port", str(TCP_PORT), "--rate", str(TCP_ORDERS_PER_S),
                                  "--count", str(self.orders), "--timeout", str(seconds + 30))
        cleanup.callback(self.client.stop)
        self.client.wait_ready()

    def result(self) -> dict:
        client = self.client.result(timeout_s=60)
        server = self.server.result(timeout_s=30)
        # Survived: every order arrived, in order, on the one connection, and it closed normally.
        survived = (client["error"] is None and server["connections"] == 1 and server["in_order"]
                    and server["records"] == self.orders and server["ended"] == "eof")
        return {"tcp_session_survived": survived,
                "tcp": {"orders": self.orders, "records": server["records"], "connections": server["connections"],
                        "ended": server["ended"], "max_gap_ms": server["max_gap_ms"], "error": client["error"]}}


def run(name: str, lab: pair.PairLab | None = None, peer: str = "twinpath", rate_pps: int = 10_000,
        before_s: float = 1.0, after_s: float = 2.0, interval_us: int = 1000, multiplier: int = 3) -> dict:
    """One trial of scenario `name` with `peer` on `lab` (a fresh pair lab
    if None, torn down after); the peer software is started for it and
    stopped after."""
    if name not in HOST_SCENARIOS:
        raise ScenarioError(f"unknown host scenario {name!r}; choose from {', '.join(HOST_SCENARIOS)}")
    with ExitStack() as cleanup:
        if lab is None:
            lab = pair.up()
            cleanup.callback(pair.down, lab.name)
        hp = prepare(lab, peer, interval_us, multiplier)
        cleanup.callback(hp.stop)
        return trial(hp, name, rate_pps, before_s, after_s)


def contract_failures(r: dict) -> list[str]:
    """What twinpath must do, broken (keepalived is the comparison: nothing)."""
    if r["peer"] != "twinpath":
        return []
    failures = [f"{k} {r[k]} (must be 0)" for k in ("dual_active_us", "duplicated") if r[k]]
    if r["scenario"] in LOSSLESS and r["lost"]:
        failures.append(f"lost {r['lost']} orders (must be 0)")
    if r["took_over"] != EXPECT[r["scenario"]]:
        failures.append("the standby took over" if r["took_over"] else "the standby did not take over")
    return failures


def summary(r: dict) -> str:
    failures = contract_failures(r)
    lines = [f"scenario {r['scenario']} ({r['peer']}): fault on the active gateway {r['active']} at t=0"
             + (f" ({', '.join(f'{k} {v}' for k, v in r['operation'].items())})" if r["operation"] else ""),
             (f"  the standby took over: first order through it at {r['takeover_us']} us" if r["took_over"]
              else "  no takeover"),
             (f"  dual active {r['dual_active_us']} us in {r['dual_active_episodes']} episode(s); "
              f"{r['switches']} gateway switch(es); orders via {r['via']}"),
             (f"  stream: sent {r['sent']}, received {r['received']}, lost {r['lost']}, "
              f"duplicated {r['duplicated']}, reordered {r['reordered']}")]
    if "tcp_session_survived" in r:
        lines.append(f"  TCP order session {'survived' if r['tcp_session_survived'] else 'DID NOT SURVIVE'} "
                     f"(longest gap {r['tcp']['max_gap_ms']} ms)")
    lines += [f"  {e['t_us']:>12} us  {e['node']} {e['role']} ({e['cause']}, token {e['token']})"
              for e in r.get("pair_roles", ())]
    if r["peer"] == "twinpath":
        lines.append("  contract holds" if not failures else "  CONTRACT BROKEN: " + "; ".join(failures))
    return "\n".join(lines)
