"""One daemon per gateway.

Two daemons on one gateway would fight over the same tc hooks and XDP slots
(each replacing the other's programs) and send two heartbeat streams. The
daemon therefore holds, for its whole life, an exclusive flock(2) on

    /run/twinpath/gateway-<inode of its network namespace>.lock

so each network namespace (each lab's gw, the host itself) is its own
gateway. The file holds the holder's pid, for the refusal message. The lock
goes with the process: a daemon killed by SIGKILL frees it, so there is no
stale lock to clean up. The file itself is left in place on release (it is in
tmpfs): unlinking it would let a daemon that opened the old file and one that
creates a new one both hold "the" lock.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_DIR = Path("/run/twinpath")


class GatewayBusy(RuntimeError):
    """Another daemon holds this gateway's lock."""

    def __init__(self, path: Path, pid: int | None):
        self.path, self.pid = path, pid
        holder = f"pid {pid}" if pid else "a process that has not yet written its pid"
        super().__init__(f"another twinpath daemon ({holder}) already runs this gateway: it holds {path}; "
                         f"stop it first (nothing was changed)")


def netns_inode() -> int:
    """The inode of this process's network namespace: what `ip netns
    identify` compares, the same for every process in the namespace."""
    return os.stat("/proc/self/ns/net").st_ino


def lock_path(lock_dir: Path = LOCK_DIR, inode: int | None = None) -> Path:
    return Path(lock_dir) / f"gateway-{netns_inode() if inode is None else inode}.lock"


def holder_pid(path: Path) -> int | None:
    """The pid recorded in a lock file, if any."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class GatewayLock:
    """The exclusive lock on this gateway, held from acquire() to release()
    (or for a `with` block). acquire() raises GatewayBusy, changing
    nothing, if another process holds it."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else lock_path()
        self._fd: int | None = None

    def acquire(self) -> "GatewayLock":
        if self._fd is not None:
            return self
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        # 0600: flock needs no write permission, so a lock file others could
        # open would let any local user hold it and keep the daemon out.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise GatewayBusy(self.path, holder_pid(self.path)) from None
            raise
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)   # no pid of a process that no longer holds it
        finally:
            os.close(fd)          # closing drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "GatewayLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
