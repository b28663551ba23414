"""The Ansible role applied for real (lab.fleet): ansible-playbook over SSH
from the witness namespace to sshd in both gateways of an HA pair lab,
while a 10,000/s order stream runs through the pair's virtual address.

Runs for real on the gateways: the Debian packages (installed already: no
change), the kernel-header links (present: no change), the release venv and
the wheel, the config (validated by the release's check-config), the key
file, the unit file, start-stop-daemon in place of systemd (PID 1 here is
not systemd; the systemd tasks are skipped), reload and restart, the health
gate, the switchover and the rollback. The unit the role installed is
checked with `systemd-analyze verify`.

One module-scoped fleet; the tests run in order, each on the state the one
before left (installed, upgraded, ...)."""
import hashlib
import json
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from lab import fleet, pair
from lab.hostanalysis import analyze_host
from lab.processes import ORDERS_PORT, stop_stream, udp_stream

RATE = 10_000
STREAM_S = 900        # longer than any playbook here; stopped once it returns


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    d = tmp_path_factory.mktemp("wheels")
    base = fleet.build_wheel(d / "base")
    nxt = fleet.derive_wheel(base, "0.1.1", d / "next")
    # A release whose probe sender never sends: it starts, but no link ever comes up.
    bad = fleet.derive_wheel(base, "0.1.2", d / "bad", {"appliance/edge/probesender.py": (
        "    sender.run()\n", "    signal.pause()   # the broken release (tests/kernel/test_ansible.py)\n")})
    return {"base": base, "next": nxt, "bad": bad}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Each stream's figures, kept after the lab is gone (README's figures come from here)."""
    return tmp_path_factory.mktemp("ansible-results")


@pytest.fixture(scope="module")
def fl(tmp_path_factory):
    lab = pair.up()
    f = fleet.Fleet(lab, lab.dir / "fleet")
    try:
        f.up()
        yield f
    finally:
        try:
            f.down()
        finally:
            pair.down(lab.name)


def _checksums(f: fleet.Fleet) -> dict:
    return {node: hashlib.sha256(f.config_path(node).read_bytes()).hexdigest() for node in pair.NODES}


def _pids(f: fleet.Fleet) -> dict:
    return {node: (f.status(node) or {}).get("daemon", {}).get("pid") for node in pair.NODES}


def _versions(f: fleet.Fleet) -> dict:
    return {node: (f.status(node) or {}).get("daemon", {}).get("version") for node in pair.NODES}


def _roles(f: fleet.Fleet) -> dict:
    return {node: ((f.status(node) or {}).get("pair") or {}).get("role") for node in pair.NODES}


class Stream:
    """Orders trader -> VIP -> exch across a playbook run."""

    def __init__(self, f: fleet.Fleet, name: str, results: Path):
        self.f, self.dir, self.results, self.name = f, f.dir / name, results, name
        self.dir.mkdir()
        self.active = next(n for n, r in _roles(f).items() if r == "active")
        self.receiver, self.sender = udp_stream(f.lab, self.dir, RATE, STREAM_S, sender_priority=20)
        self.start_ns = time.monotonic_ns()

    def stop(self) -> dict:
        time.sleep(1.0)   # orders after the last change
        sent, _ = stop_stream(self.receiver, self.sender)
        arrivals = np.load(self.dir / f"arrivals-{ORDERS_PORT}.npy")
        r = analyze_host(arrivals, sent["issued"], self.start_ns, pair.exch_gateways(self.f.lab), self.active)
        r["stream_s"] = round((time.monotonic_ns() - self.start_ns) / 1e9, 1)
        (self.results / f"{self.name}.json").write_text(json.dumps(r, indent=1))
        return r


def test_site_installs_and_starts_the_pair(fl, wheels):
    run = fl.playbook("site.yml", fl.inventory(wheels["base"]))
    assert run.returncode == 0, run.output[-6000:]
    assert all(r["failed"] == 0 and r["unreachable"] == 0 and r["changed"] > 0 for r in run.recap.values()), \
        run.recap
    assert sorted(_roles(fl).values()) == ["active", "standby"]
    assert set(_versions(fl).values()) == {"0.1.0"}
    keys = Path(fl.paths("gw1")["twinpath_config_dir"]) / "heartbeat.keys"
    assert not keys.exists()                      # no twinpath_heartbeat_keys given


def test_a_second_site_run_changes_nothing(fl, wheels):
    pids = _pids(fl)
    run = fl.playbook("site.yml", fl.inventory(wheels["base"]))
    assert run.returncode == 0, run.output[-6000:]
    assert {node: r["changed"] for node, r in run.recap.items()} == {"gw1": 0, "gw2": 0}, run.output[-6000:]
    assert _pids(fl) == pids


def test_the_installed_unit_passes_systemd_analyze_verify(fl):
    unit = Path(fl.paths("gw1")["twinpath_unit_dir"]) / "twinpath.service"
    run = subprocess.run([shutil.which("systemd-analyze"), "verify", "--man=no", "--recursive-errors=no",
                          str(unit)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and unit.name not in run.stdout + run.stderr, run.stdout + run.stderr


def test_check_mode_with_diff_shows_a_change_and_makes_none(fl, wheels):
    def slower_failback(node, config):
        return {**config, "heartbeat": {**config.get("heartbeat", {}), "holddown_ms": 2000}}
    before = _checksums(fl)
    run = fl.playbook("site.yml", fl.inventory(wheels["base"], slower_failback), "--check", "--diff")
    assert run.returncode == 0, run.output[-6000:]
    assert "+holddown_ms = 2000" in run.output and "-holddown_ms = 1000" in run.output, run.output[-6000:]
    assert _checksums(fl) == before


def test_a_live_change_is_reloaded_not_restarted(fl, wheels, results):
    def slower_failback(node, config):
        return {**config, "heartbeat": {**config.get("heartbeat", {}), "holddown_ms": 2000}}
    pids = _pids(fl)
    stream = Stream(fl, "reload", results)
    run = fl.playbook("site.yml", fl.inventory(wheels["base"], slower_failback))
    r = stream.stop()
    assert run.returncode == 0, run.output[-6000:]
    assert "Reload twinpath" in run.output and _pids(fl) == pids        # reloaded, same daemons
    assert (r["lost"], r["duplicated"]) == (0, 0), r


def test_a_bad_config_fails_on_the_first_host_and_changes_nothing_anywhere(fl, wheels):
    def unknown_link(node, config):
        return {**config, "classes": [{"name": "orders", "links": ["A", "no-such-link"]}]}
    before, pids = _checksums(fl), _pids(fl)
    run = fl.playbook("site.yml", fl.inventory(wheels["base"], unknown_link))
    assert run.returncode != 0
    assert "no-such-link" in run.output, run.output[-6000:]
    failed = [node for node, r in run.recap.items() if r["failed"]]
    assert len(failed) == 1, run.recap                # serial: the second host never started
    assert _checksums(fl) == before and _pids(fl) == pids


def test_a_mistyped_variable_fails_before_any_host_changes(fl, wheels):
    def typo(node, config):
        return {**config, "heartbeat": {**config.get("heartbeat", {}), "interval_us": "fast"}}
    before, pids = _checksums(fl), _pids(fl)
    run = fl.playbook("site.yml", fl.inventory(wheels["base"], typo))
    assert run.returncode != 0 and "interval_us" in run.output, run.output[-6000:]
    assert all(r["changed"] == 0 for r in run.recap.values()), run.recap
    assert _checksums(fl) == before and _pids(fl) == pids


def test_an_unreachable_gateway_stops_the_rollout_before_any_change(fl, wheels):
    def slower_failback(node, config):   # a change no run applied yet, so it would show
        return {**config, "heartbeat": {**config.get("heartbeat", {}), "holddown_ms": 2500}}
    before, pids = _checksums(fl), _pids(fl)
    fl.stop_sshd("gw2")
    try:
        run = fl.playbook("site.yml", fl.inventory(wheels["base"], slower_failback))
    finally:
        fl.start_sshd("gw2")
    assert run.returncode != 0
    assert run.recap["gw2"]["unreachable"] == 1, run.recap
    assert "TASK [twinpath :" not in run.output, run.output[-6000:]   # the role never ran, on either host
    assert run.recap["gw1"]["changed"] == 0, run.recap
    assert _checksums(fl) == before and _pids(fl) == pids


def test_a_rolling_upgrade_loses_no_order(fl, wheels, results):
    roles = _roles(fl)
    stream = Stream(fl, "upgrade", results)
    run = fl.playbook("upgrade.yml", fl.inventory(wheels["next"]))
    r = stream.stop()
    assert run.returncode == 0, run.output[-8000:]
    assert set(_versions(fl).values()) == {"0.1.1"}
    assert (r["lost"], r["duplicated"], r["dual_active_us"]) == (0, 0, 0), r
    assert r["took_over"], "the controlled switchover moved the orders to the upgraded standby"
    assert _roles(fl) == {node: "active" if role == "standby" else "standby" for node, role in roles.items()}


def test_a_release_failing_its_health_gate_is_rolled_back_and_stops_the_rollout(fl, wheels, results):
    pids, roles = _pids(fl), _roles(fl)
    standby = next(n for n, r in roles.items() if r == "standby")
    active = next(n for n, r in roles.items() if r == "active")
    stream = Stream(fl, "bad-release", results)
    run = fl.playbook("upgrade.yml", fl.inventory(wheels["bad"], twinpath_health_timeout_s=30))
    r = stream.stop()
    assert run.returncode != 0
    assert "rolled back" in run.output, run.output[-8000:]
    assert run.recap[standby]["failed"] == 1 and run.recap.get(active, {}).get("changed", 0) == 0, run.recap
    assert _versions(fl) == {standby: "0.1.1", active: "0.1.1"}
    assert _pids(fl)[active] == pids[active]          # untouched
    assert _roles(fl) == roles
    assert (r["lost"], r["duplicated"]) == (0, 0), r


def test_a_vaulted_key_file_is_installed_root_only_and_reloaded(fl, wheels, results):
    secret = secrets.token_hex(16)
    keys_text = f"7 {secret}\n"
    password = fl.dir / "vault-password"
    password.write_text(secrets.token_hex(16))
    vault = fl.dir / "vault.yml"
    vault.write_text(f"twinpath_heartbeat_keys: {json.dumps(keys_text)}\n")   # a JSON string is YAML
    subprocess.run([str(fleet.VENV_BIN / "ansible-vault"), "encrypt", "--vault-password-file", str(password),
                    str(vault)], check=True, capture_output=True, timeout=60)
    assert secret not in vault.read_text() and vault.read_text().startswith("$ANSIBLE_VAULT")

    def keys_path(node):
        return Path(fl.paths(node)["twinpath_config_dir"]) / "heartbeat.keys"

    def with_key(node, config):
        return {**config, "heartbeat": {**config.get("heartbeat", {}), "key_file": str(keys_path(node))}}
    pids = _pids(fl)
    stream = Stream(fl, "vaulted-key", results)
    run = fl.playbook("site.yml", fl.inventory(wheels["next"], with_key), "-e", f"@{vault}",
                      "--vault-password-file", str(password))
    r = stream.stop()
    assert run.returncode == 0, run.output[-6000:]
    assert secret not in run.output
    assert _pids(fl) == pids                        # a key file is applied live
    for node in pair.NODES:
        st = keys_path(node).stat()
        assert (st.st_mode & 0o777, st.st_uid) == (0o600, 0)
        assert keys_path(node).read_text() == keys_text
        events = [json.loads(line) for line in Path(fl.paths(node)["twinpath_log_file"]).read_text().splitlines()
                  if line.startswith("{")]
        assert any(e.get("event") == "reloaded" and any(c.startswith("heartbeat.key_file") for c in e["changes"])
                   for e in events), node
    assert (r["lost"], r["duplicated"]) == (0, 0), r
