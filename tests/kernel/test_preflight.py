"""Preflight and the single-daemon lock against a real network namespace:
a config this gateway cannot run is refused, naming file, key path and
reason, before anything is compiled or attached."""
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from appliance.core.config import ConfigError, parse
from appliance.edge import preflight
from appliance.edge.gatelock import GatewayLock
from lab.topology import render_config

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
TWINPATH = REPO / ".venv" / "bin" / "twinpath"
# gw's side of the lab topology, as render_config() expects it, plus a link
# device with no address at all.
ADDRESSES = {"int": "198.18.1.254/24", "lnkA": "198.18.10.1/30", "lnkB": "198.18.11.1/30", "bare": None}


def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True, timeout=10).stdout


@pytest.fixture(scope="module")
def gwns():
    """A private namespace shaped like a lab gateway, deleted whatever happens."""
    ns = f"tpPF{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    lock = None
    try:
        for dev, cidr in ADDRESSES.items():
            ip(ns, "link", "add", dev, "type", "veth", "peer", "name", f"{dev}-p")
            if cidr:
                ip(ns, "addr", "add", cidr, "dev", dev)
            ip(ns, "link", "set", dev, "up")
            ip(ns, "link", "set", f"{dev}-p", "up")
        lock = Path(subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c",
             "from appliance.edge.gatelock import lock_path; print(lock_path())"],
            check=True, capture_output=True, text=True, cwd=REPO, timeout=30).stdout.strip())
        yield ns, lock
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=10)
        if lock is not None:
            lock.unlink(missing_ok=True)


@pytest.fixture
def ipr(gwns):
    with IPRoute(netns=gwns[0], flags=0) as handle:
        yield handle


def config(*edits) -> str:
    text = render_config()
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1)
    return text


TARGET_A = 'target = "198.18.10.2"'
TARGET_B = 'target = "198.18.11.2"'


def test_lab_shaped_config_passes(ipr):
    preflight.check(parse(config(), "gw.toml"), ipr)
    preflight.check(parse(config((TARGET_A, TARGET_A + "\nttl_security = true")), "gw.toml"), ipr)


# (edits to the lab config, the key path, the reason)
REFUSED = {
    "ingress missing": ([('ingress = "int"', 'ingress = "nosuch"')], "steer.ingress",
                        "interface 'nosuch' does not exist in this network namespace"),
    "link dev missing": ([('dev = "lnkB"', 'dev = "lnkX"')], "links.1.dev",
                         "interface 'lnkX' does not exist in this network namespace"),
    "target is own address": ([(TARGET_A, 'target = "198.18.10.1"')], "links.0.target",
                              "198.18.10.1 is this gateway's own address (on lnkA)"),
    "target is own address elsewhere": ([(TARGET_B, 'target = "198.18.1.254"')], "links.1.target",
                                        "198.18.1.254 is this gateway's own address (on int)"),
    "nexthop is own address": ([(TARGET_A, TARGET_A + '\nnexthop = "198.18.11.1"')], "links.0.nexthop",
                               "198.18.11.1 is this gateway's own address (on lnkB)"),
    "target is subnet broadcast": ([(TARGET_A, 'target = "198.18.10.3"')], "links.0.target",
                                   "198.18.10.3 is the broadcast address of lnkA's subnet 198.18.10.0/30"),
    "target is network address": ([(TARGET_B, 'target = "198.18.11.0"')], "links.1.target",
                                  "198.18.11.0 is the network address of lnkB's subnet 198.18.11.0/30"),
    "link without IPv4": ([('dev = "lnkB"', 'dev = "bare"')], "links.1.dev",
                          "interface 'bare' has no IPv4 address"),
    "ttl_security not directly connected": ([(TARGET_A, 'target = "198.19.0.10"\nttl_security = true')],
                                            "links.0.ttl_security",
                                            "target 198.19.0.10 is not in a subnet of lnkA (198.18.10.0/30)"),
}


@pytest.mark.parametrize("edits,path,reason", REFUSED.values(), ids=REFUSED.keys())
def test_gateway_refuses_config_it_cannot_run(ipr, edits, path, reason):
    cfg = parse(config(*edits), "gw.toml")
    with pytest.raises(ConfigError) as e:
        preflight.check(cfg, ipr)
    assert any(l.startswith(f"gw.toml: {path}: {reason}") for l in str(e.value).splitlines()), str(e.value)


def test_every_problem_is_listed_and_a_bad_key_file_too(ipr, tmp_path):
    keys = tmp_path / "hb.keys"
    keys.write_text("1 00112233445566778899aabbccddeeff\n")
    os.chmod(keys, 0o644)
    cfg = parse(config(('ingress = "int"', 'ingress = "nosuch"'), (TARGET_A, 'target = "198.18.10.1"'),
                       ("[steer]", f'key_file = "{keys}"\n\n[steer]')), "gw.toml")
    with pytest.raises(ConfigError) as e:
        preflight.check(cfg, ipr)
    lines = str(e.value).splitlines()
    assert [l.split(": ")[1] for l in lines] == ["steer.ingress", "links.0.target", "heartbeat.key_file"]
    assert all(l.startswith("gw.toml: ") for l in lines)
    assert f"{keys}: mode 0644 grants access to group or others" in lines[2] and "chmod 600" in lines[2]


def attached_anything(ns: str) -> list[str]:
    """clsact qdiscs, tc filters or XDP programs on any device of ns."""
    qdiscs = subprocess.run(["tc", "-n", ns, "-j", "qdisc", "show"], check=True, capture_output=True, text=True,
                            timeout=10).stdout
    found = [f"qdisc {q['kind']} on {q['dev']}" for q in json.loads(qdiscs) if q["kind"] in ("clsact", "ingress")]
    for link in json.loads(ip(ns, "-j", "link", "show")):
        if "xdp" in link:
            found.append(f"xdp on {link['ifname']}")
    return found


def run_daemon(ns: str, cfg_path: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    # A config that passed the checks would run until killed: the timeout
    # turns that into a failure instead of a hang.
    return subprocess.run(["ip", "netns", "exec", ns, str(TWINPATH), "run", "--config", str(cfg_path)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("edits,line", [
    ([(TARGET_A, 'target = "198.18.10.1"')], "links.0.target: 198.18.10.1 is this gateway's own address (on lnkA)"),
    ([('dev = "lnkB"', 'dev = "lnkX"')], "links.1.dev: interface 'lnkX' does not exist in this network namespace"),
], ids=["own address", "no such device"])
def test_run_with_bad_config_exits_2_and_attaches_nothing(gwns, tmp_path, edits, line):
    ns, _ = gwns
    path = tmp_path / "bad.toml"
    path.write_text(config(*edits))
    result = run_daemon(ns, path)
    assert result.returncode == 2, result
    assert any(l.startswith(f"{path}: {line}") for l in result.stderr.splitlines()), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == "", "nothing may be logged as started"
    assert attached_anything(ns) == []


def test_second_daemon_is_refused_before_anything(gwns, tmp_path):
    ns, lock_path = gwns
    path = tmp_path / "gw.toml"
    path.write_text(config())
    with GatewayLock(lock_path):   # this test process plays the running daemon
        result = run_daemon(ns, path)
        assert lock_path.read_text() == f"{os.getpid()}\n", "the refused start must not touch the lock"
    assert result.returncode == 2, result
    assert f"another twinpath daemon (pid {os.getpid()}) already runs this gateway: it holds {lock_path}" \
        in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert attached_anything(ns) == []


def test_each_namespace_has_its_own_lock(gwns):
    _, lock_path = gwns
    assert lock_path != GatewayLock().path
    assert lock_path.name == f"gateway-{os.stat(f'/run/netns/{gwns[0]}').st_ino}.lock"
