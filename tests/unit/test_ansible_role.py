"""The Ansible role and playbooks (ansible/), without a target: ansible-lint
(production profile) and --syntax-check on every playbook, the argument spec
generated from the daemon's config model and in step with the role's
defaults, the example inventory's configs accepted by the daemon's own
check, and the role's filters. Applying the role for real is
tests/kernel/test_ansible.py."""
import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from appliance.core.config import Config

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
PLAYBOOKS = ("site.yml", "upgrade.yml", "rollback.yml", "preflight.yml")
VENV_BIN = Path(sys.executable).parent
EXAMPLE_HOSTS = ("ny4-gw1", "ny4-gw2", "ld4-gw1", "ld4-gw2")


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


argument_specs = _module(ANSIBLE / "argument_specs.py", "argument_specs")
filters = _module(ANSIBLE / "roles" / "twinpath" / "filter_plugins" / "twinpath.py", "twinpath_filters")


def _tool(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        why = f"{name} is not installed in .venv (scripts/setup.sh installs requirements-lab.txt)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return str(path)


def _env() -> dict:
    return {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}


def test_ansible_lint_production_profile_passes():
    run = subprocess.run([_tool("ansible-lint"), "--profile", "production", "--offline", "--nocolor"],
                         cwd=ANSIBLE, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_every_playbook_passes_syntax_check(playbook):
    run = subprocess.run([_tool("ansible-playbook"), "--syntax-check", playbook], cwd=ANSIBLE, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_argument_spec_is_generated_from_the_config_model():
    assert argument_specs.main(["--check"]) == 0, "run .venv/bin/python ansible/argument_specs.py"


def test_the_role_defaults_are_the_argument_spec_defaults():
    defaults = yaml.safe_load((ANSIBLE / "roles" / "twinpath" / "defaults" / "main.yml").read_text())
    spec = argument_specs.spec()["argument_specs"]["main"]["options"]
    assert {k: v["default"] for k, v in spec.items() if "default" in v} == \
        {k: v for k, v in defaults.items() if k != "twinpath_config"}
    assert set(defaults) <= set(spec)


def test_the_spec_types_every_config_option():
    spec = argument_specs.spec()["argument_specs"]["main"]["options"]["twinpath_config"]["options"]
    assert set(spec) == set(Config.model_fields)
    assert spec["pair"]["options"]["vip"]["type"] == "str"
    assert spec["links"]["elements"] == "dict" and spec["links"]["options"]["name"]["required"]
    assert spec["classes"]["options"]["policy"]["choices"] == ["active-backup", "lowest-latency"]
    assert spec["rules"]["options"]["class"]["required"]       # by its TOML name, not the model's


def test_the_example_inventory_renders_configs_the_daemon_accepts(tmp_path):
    ansible = _tool("ansible")
    for host in EXAMPLE_HOSTS:
        out = tmp_path / f"{host}.toml"
        run = subprocess.run([ansible, host, "-i", "inventory/example/hosts.yml", "-c", "local", "-m",
                              "ansible.builtin.copy", "-a",
                              f"content={{{{ twinpath_config | twinpath_toml }}}} dest={out} mode=0644",
                              "-e", "vault_twinpath_heartbeat_keys=unused", "-e", "ansible_python_interpreter="
                              + sys.executable], cwd=ANSIBLE, capture_output=True, text=True,
                             # the role's filters, outside the role (an ad-hoc run loads no role)
                             env={**_env(), "ANSIBLE_FILTER_PLUGINS": str(ANSIBLE / "roles/twinpath/filter_plugins")},
                             timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        check = subprocess.run([str(VENV_BIN / "twinpath"), "check-config", str(out)], capture_output=True,
                               text=True, timeout=60)
        assert check.returncode == 0, f"{host}: {check.stdout}{check.stderr}\n{out.read_text()}"


# -- the role's filters ---------------------------------------------------------
def test_twinpath_toml_writes_what_the_daemon_reads_back():
    config = {"heartbeat": {"interval_us": 1000, "sender_priority": 0, "key_file": None},
              "steer": {"ingress": "int"},
              "links": [{"name": "A", "dev": "ca", "target": "198.18.12.2"},
                        {"name": "B", "dev": "cb", "target": "198.18.13.2", "ttl_security": True}],
              "classes": [{"name": "orders", "links": ["A", "B"]}],
              "rules": [{"class": "orders", "dst": "198.19.0.0/24", "proto": "tcp", "ports": "9000-9099"},
                        {"class": "orders", "dst": "198.19.1.0/24", "ports": 10000}],
              "arbitration": {"grace_ms": 20.0}}
    text = filters.twinpath_toml(config)
    back = tomllib.loads(text)
    assert "key_file" not in back["heartbeat"]                   # None: absent, the daemon's default
    assert back["rules"][1]["ports"] == 10000 and back["links"][1]["ttl_security"] is True
    Config.model_validate(back)


def test_twinpath_toml_refuses_what_toml_cannot_hold():
    with pytest.raises(TypeError):
        filters.twinpath_toml({"steer": {"ingress": object()}})


HEALTHY = {"daemon": {"version": "0.1.0"},
           "links": {"A": {"state": "up"}, "B": {"state": "up"}},
           "classes": {"orders": {"link": "A", "preferred": "A", "last_failover_age_s": None}}}
PAIRED = {**HEALTHY, "classes": {"orders": {"link": "B", "preferred": "A", "last_failover_age_s": 300.0}},
          "pair": {"role": "standby", "confirmed": True, "witness": {"reachable": True},
                   "peer_paths": {"peer-lan": "fresh", "peer-xl": "fresh"}}}


@pytest.mark.parametrize("status,quiet_s,version,problems", [
    (HEALTHY, 10, "0.1.0", []),
    (HEALTHY, 10, "0.2.0", ["daemon runs version '0.1.0', not '0.2.0'"]),
    ({**HEALTHY, "links": {"A": {"state": "up"}, "B": {"state": "stale"}}}, 10, None, ["link B is stale"]),
    ({**HEALTHY, "classes": {"orders": {"link": "B", "preferred": "A", "last_failover_age_s": 3.0,
                                        "last_cause": "heartbeat"}}}, 10, None,
     ["class orders is on B, not its preferred A", "class orders failed over 3.0 s ago (cause heartbeat)"]),
    (PAIRED, 10, None, []),                                    # a standby's classes need not be on A
    ({**PAIRED, "pair": {**PAIRED["pair"], "role": "active", "confirmed": False}}, 10, None,
     ["pair role is active (unconfirmed)"]),
    ({**PAIRED, "pair": {**PAIRED["pair"], "witness": {"reachable": False},
                         "peer_paths": {"peer-lan": "dead", "peer-xl": "fresh"}}}, 10, None,
     ["the witness is unreachable", "peer paths not fresh: peer-lan"]),
], ids=["healthy", "old-version", "stale-link", "failed-over", "paired", "unconfirmed", "witness-and-peer"])
def test_the_health_gate_names_every_problem(status, quiet_s, version, problems):
    assert filters.twinpath_unhealthy(status, quiet_s, version) == problems

