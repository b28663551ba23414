import os
import signal
import subprocess
import sys

import pytest

from appliance.edge import gatelock
from appliance.edge.gatelock import GatewayBusy, GatewayLock

HOLDER = r"""
import sys, time
from appliance.edge.gatelock import GatewayLock
GatewayLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_second_lock_is_refused_naming_pid_and_path(tmp_path):
    path = tmp_path / "gw.lock"
    with GatewayLock(path) as first:
        assert first.held and path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(GatewayBusy) as e:
            GatewayLock(path).acquire()
        assert e.value.pid == os.getpid() and e.value.path == path
        assert f"pid {os.getpid()}" in str(e.value) and str(path) in str(e.value)
        assert path.read_text() == f"{os.getpid()}\n", "a refused start changes nothing"
    assert path.read_text() == ""
    with GatewayLock(path):   # released: the next daemon may start
        pass


def test_lock_of_another_process_and_its_death(tmp_path):
    path = tmp_path / "gw.lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        assert proc.stdout.readline() == "held\n"
        with pytest.raises(GatewayBusy, match=f"pid {proc.pid}"):
            GatewayLock(path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with GatewayLock(path) as lock:   # SIGKILL freed it: no stale lock
        assert lock.held and path.read_text() == f"{os.getpid()}\n"


def test_lock_file_is_private(tmp_path):
    path = tmp_path / "gw.lock"
    path.write_text("")
    os.chmod(path, 0o644)
    with GatewayLock(path):
        assert os.stat(path).st_mode & 0o777 == 0o600


def test_each_network_namespace_has_its_own_lock(tmp_path):
    assert gatelock.lock_path(tmp_path) == tmp_path / f"gateway-{os.stat('/proc/self/ns/net').st_ino}.lock"
    assert gatelock.lock_path(tmp_path, inode=7) == tmp_path / "gateway-7.lock"
    assert GatewayLock().path.parent == gatelock.LOCK_DIR
