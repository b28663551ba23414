"""Ansible against a pair lab (lab.pair), the way production reaches its
gateways: over SSH.

Each gateway namespace runs its own sshd on its management address; the
controller (ansible-playbook, from this checkout's .venv) runs in the
witness namespace, which shares the management network with them, as an
operator's jump host would. Every path the role writes is per gateway, under
the fleet's directory (prefix, config, unit, pid and log file), since the
namespaces share one filesystem; /lib/modules and the Debian packages are
the host's, already in place, so the role's tasks on them run for real and
change nothing. PID 1 here is not systemd: the role runs with
twinpath_service_manager=direct (start-stop-daemon), and its systemd tasks
are skipped; the unit it installs is checked with `systemd-analyze verify`.

Wheels: build_wheel() builds the product from the checkout;
derive_wheel() rewrites one into another release (a new version, a file
patched), as a next or a broken release would be.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from lab import pair
from lab.colo import LabError

REPO = Path(__file__).resolve().parent.parent
ANSIBLE_DIR = REPO / "ansible"
VENV_BIN = Path(sys.executable).parent
SSHD = "/usr/sbin/sshd"
SSHD_PRIVSEP_DIR = Path("/run/sshd")   # sshd refuses to start without it
PLAYBOOK_TIMEOUT_S = 900


def build_wheel(dest: Path) -> Path:
    """The product's wheel, built from this checkout (its Cython extension
    compiled), and its dependencies' wheels beside it: a wheelhouse."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as build:
        # A copy: building in place would leave build/ and egg-info in the checkout.
        src = Path(build) / "src"
        shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "bench",
                                                                 "*.so", "__pycache__", "*.egg-info"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation",
                        "-w", str(dest), str(src)], check=True, timeout=600)
    [wheel] = sorted(dest.glob("twinpath-*.whl"))
    return wheel


def derive_wheel(base: Path, version: str, dest: Path, patches: dict[str, tuple[str, str]] | None = None) -> Path:
    """base as release `version`, with patches {path in the wheel: (old, new)}
    applied, in a wheelhouse of its own with base's dependencies."""
    dest.mkdir(parents=True, exist_ok=True)
    for dependency in base.parent.glob("*.whl"):
        if not dependency.name.startswith("twinpath-"):
            shutil.copy2(dependency, dest)
    old_version = base.name.split("-")[1]
    with tempfile.TemporaryDirectory() as work:
        subprocess.run([sys.executable, "-m", "wheel", "unpack", "-d", work, str(base)], check=True, timeout=60,
                       stdout=subprocess.DEVNULL)
        [root] = Path(work).iterdir()
        info = root / f"twinpath-{old_version}.dist-info"
        metadata = info / "METADATA"
        metadata.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {version}", metadata.read_text(), count=1))
        info.rename(root / f"twinpath-{version}.dist-info")
        for path, (old, new) in (patches or {}).items():
            target = root / path
            text = target.read_text()
            if old not in text:
                raise LabError(f"derive_wheel: {old!r} not in {path}")
            target.write_text(text.replace(old, new, 1))
        renamed = root.with_name(f"twinpath-{version}")
        root.rename(renamed)
        subprocess.run([sys.executable, "-m", "wheel", "pack", "-d", str(dest), str(renamed)], check=True, timeout=60,
                       stdout=subprocess.DEVNULL)
    [wheel] = dest.glob(f"twinpath-{version}-*.whl")
    return wheel


@dataclass
class Playbook:
    """One ansible-playbook run: its exit status, output and PLAY RECAP."""
    returncode: int
    output: str
    recap: dict[str, dict[str, int]]


class Fleet:
    """sshd in both gateways of `lab`, the witness up, an inventory for them."""

    def __init__(self, lab: pair.PairLab, workdir: Path):
        self.lab, self.dir = lab, workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = self.dir / "id_ed25519"
        self.sshd: dict[str, subprocess.Popen] = {}
        self.made_privsep_dir = False

    # -- set up and tear down --------------------------------------------
    def up(self) -> Fleet:
        if not SSHD_PRIVSEP_DIR.exists():
            SSHD_PRIVSEP_DIR.mkdir(mode=0o755)
            self.made_privsep_dir = True
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        (self.dir / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        for node in pair.NODES:
            Path(self.paths(node)["twinpath_unit_dir"]).mkdir(parents=True)   # a host's /etc/systemd/system
            self._start_sshd(node)
        pair.start_witness(self.lab)
        for node in pair.NODES:
            self._wait_ssh(node)
        return self

    def down(self) -> None:
        """Stops the daemons the playbooks started, detaches them, stops sshd."""
        for node in pair.NODES:
            paths = self.paths(node)
            if Path(paths["twinpath_pid_file"]).exists():
                self.lab.run(node, ["start-stop-daemon", "--stop", "--oknodo", "--retry", "TERM/20/KILL/5",
                                    "--pidfile", paths["twinpath_pid_file"]], timeout=40)
            twinpath = Path(paths["twinpath_prefix"]) / "venv" / "bin" / "twinpath"
            if twinpath.exists():
                self.lab.run(node, [str(twinpath), "detach", "--config", str(self.config_path(node))], timeout=60)
        for proc in self.sshd.values():
            proc.terminate()
            proc.wait(timeout=10)
        if self.made_privsep_dir:
            shutil.rmtree(SSHD_PRIVSEP_DIR, ignore_errors=True)

    def stop_sshd(self, node: str) -> None:
        """The gateway stops answering SSH, as an unreachable host of a fleet:
        new connections are refused and the open ones (ansible's ControlPersist
        masters) are cut, as they would be by a dead host."""
        proc = self.sshd.pop(node)
        for pid in _descendants(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.terminate()
        proc.wait(timeout=10)

    def start_sshd(self, node: str) -> None:
        self._start_sshd(node)
        self._wait_ssh(node)

    def _start_sshd(self, node: str) -> None:
        host_key = self.dir / f"{node}_host_ed25519"
        if not host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        config = self.dir / f"sshd-{node}.conf"
        config.write_text(f"""\
ListenAddress {pair.mgmt_addr(node)}
Port 22
HostKey {host_key}
PidFile {self.dir / f"sshd-{node}.pid"}
AuthorizedKeysFile {self.dir / "authorized_keys"}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
""")
        log = open(self.dir / f"sshd-{node}.log", "ab")
        self.sshd[node] = self.lab.spawn(node, [SSHD, "-D", "-e", "-f", str(config)], stdout=log,
                                         stderr=subprocess.STDOUT)

    def _wait_ssh(self, node: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            probe = self.lab.run("witness", [*self.ssh_argv(node), "true"], check=False, timeout=15)
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise LabError(f"ssh to {node} ({pair.mgmt_addr(node)}) from the witness namespace failed: "
                               f"{probe.stderr.strip()}")
            time.sleep(0.5)

    def ssh_argv(self, node: str) -> list[str]:
        return ["ssh", "-i", str(self.key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"root@{pair.mgmt_addr(node)}"]

    # -- what the role writes where ---------------------------------------
    def paths(self, node: str) -> dict[str, str]:
        root = self.dir / node
        return {"twinpath_prefix": str(root / "opt"), "twinpath_config_dir": str(root / "etc"),
                "twinpath_unit_dir": str(root / "systemd"), "twinpath_pid_file": str(root / "twinpath.pid"),
                "twinpath_log_file": str(root / "twinpath.jsonl")}

    def config_path(self, node: str) -> Path:
        return Path(self.paths(node)["twinpath_config_dir"]) / "twinpath.toml"

    def inventory(self, wheel: Path, config_of=None, **extra) -> Path:
        """An inventory of both gateways; config_of(node, config) may change
        each one's twinpath_config (the lab's own config by default)."""
        hosts = {}
        for node in pair.NODES:
            config = tomllib.loads(self.lab.config_path(node).read_text())
            if config_of:
                config = config_of(node, config)
            hosts[node] = {
                "ansible_host": pair.mgmt_addr(node), "ansible_user": "root",
                "ansible_ssh_private_key_file": str(self.key),
                "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
                "ansible_python_interpreter": "/usr/bin/python3",
                "twinpath_wheel": str(wheel), "twinpath_service_manager": "direct",
                # Installed by the lab's set-up already; never an apt-get update in a test.
                "twinpath_apt_cache_valid_time": 10 ** 9,
                "twinpath_health_timeout_s": 60,
                **self.paths(node), "twinpath_config": config, **extra}
        path = self.dir / "inventory.json"
        path.write_text(json.dumps({"twinpath_gateways": {"hosts": hosts}}, indent=1))
        return path

    # -- running playbooks -------------------------------------------------
    def playbook(self, name: str, inventory: Path, *args: str, timeout_s: float = PLAYBOOK_TIMEOUT_S) -> Playbook:
        """ansible-playbook ansible/<name> from the witness namespace."""
        env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_HOST_KEY_CHECKING": "False",
               "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        argv = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(ANSIBLE_DIR / name), *args]
        proc = subprocess.run(["ip", "netns", "exec", self.lab.ns("witness"), *argv], env=env, cwd=ANSIBLE_DIR,
                              capture_output=True, text=True, timeout=timeout_s)
        output = proc.stdout + proc.stderr
        (self.dir / f"{name}-{time.strftime('%H%M%S')}.log").write_text(output)
        return Playbook(proc.returncode, output, parse_recap(output))

    def status(self, node: str) -> dict | None:
        twinpath = Path(self.paths(node)["twinpath_prefix"]) / "venv" / "bin" / "twinpath"
        out = self.lab.run(node, [str(twinpath), "status", "--json"], check=False, timeout=30)
        return json.loads(out.stdout) if out.returncode == 0 else None


def _descendants(pid: int) -> list[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP's counters per host (the last recap in the output)."""
    recap: dict[str, dict[str, int]] = {}
    for line in output[output.rfind("PLAY RECAP"):].splitlines()[1:]:
        m = re.match(r"^(\S+)\s+:\s+(.*)$", line)
        if m:
            recap[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return recap
