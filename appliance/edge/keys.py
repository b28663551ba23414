"""Heartbeat authentication keys.

Heartbeat probes carry a SipHash-2-4 tag computed in BPF under a 16-byte key.
This host both signs its probes and verifies the replies, so the key never
needs to leave it: without `[heartbeat] key_file` the daemon draws one random
key per run (random_keys()). A key file is for keeping the key stable across
restarts, or for rotating it deliberately.

Key file format (text, UTF-8 or ASCII):

    # comments run from '#' to the end of the line; blank lines are ignored
    2 8f1c0b7e5a9d4c3b2a1908f7e6d5c4b3    # ID HEX32: signs new probes
    1 00112233445566778899aabbccddeeff    # verifies replies only

    ID     a key id, 1..255 (decimal), carried in the probe so the verifier
           knows which key signed it
    HEX32  the key: exactly 32 hex digits (16 bytes), not all zero

One or two keys. The FIRST key signs new probes; every listed key verifies
replies. Rotation without a gap: put the new key first and keep the old one
second, restart (replies to probes signed before the restart still verify),
then drop the old line at the next restart.

The file must be a regular file (not a symlink), owned by root, with no
permission for group or others (`chmod 600`); anything else is refused, as
are unreadable files, bad syntax, duplicate ids, zero or more than two keys,
and an all-zero key. Errors name the file, the line and the reason.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from appliance.core.config import Config, ConfigError

KEY_BYTES = 16
MAX_KEYS = 2
REQUIRED_OWNER_UID = 0
MAX_FILE_BYTES = 64 * 1024  # a key file is a few lines; anything larger is not one
_ID_RE = re.compile(r"[0-9]{1,3}")
_HEX_RE = re.compile(r"[0-9A-Fa-f]{32}")


@dataclass(frozen=True)
class HeartbeatKey:
    id: int                                 # 1..255
    key: bytes = field(repr=False)          # 16 bytes; never printed

    def __post_init__(self):
        if not 1 <= self.id <= 255:
            raise ValueError(f"key id {self.id} is not within 1..255")
        if len(self.key) != KEY_BYTES:
            raise ValueError(f"a key is {KEY_BYTES} bytes, got {len(self.key)}")


def _read_private(path: Path) -> str:
    """The text of `path`, if it is a regular file only root can read."""
    try:
        # O_NOFOLLOW: the checks below are about the file itself, not a link
        # to it; O_NONBLOCK: a FIFO planted here must not hang the daemon.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ConfigError(f"{path}: is a symbolic link; name the key file itself") from None
        raise ConfigError(f"cannot read key file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(f"{path}: mode {mode:04o} grants access to group or others; "
                              f"a key file must be private: chmod 600 {path}")
        if st.st_uid != REQUIRED_OWNER_UID:
            raise ConfigError(f"{path}: owned by uid {st.st_uid}, not root (uid {REQUIRED_OWNER_UID}): "
                              f"chown root {path}")
        if st.st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: {st.st_size} bytes is too large for a key file")
        try:
            data = os.read(fd, MAX_FILE_BYTES + 1)
        except OSError as e:
            raise ConfigError(f"cannot read key file {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not text (byte {e.start} is not UTF-8)") from None


def parse_keys(text: str, source: str = "<keys>") -> list[HeartbeatKey]:
    """Keys from key-file text (format in the module docstring); no file checks."""
    keys: list[HeartbeatKey] = []
    seen: dict[int, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{source}: line {lineno}"
        if len(fields) != 2:
            raise ConfigError(f"{where}: expected 'ID HEX32' (two fields), got {len(fields)} field(s)")
        ident, hexkey = fields
        if not _ID_RE.fullmatch(ident) or not 1 <= int(ident) <= 255:
            raise ConfigError(f"{where}: key id must be a decimal number 1..255, got {ident!r}")
        if not _HEX_RE.fullmatch(hexkey):
            raise ConfigError(f"{where}: key must be exactly 32 hex digits (16 bytes), "
                              f"got {len(hexkey)} character(s)")  # the key itself is not echoed
        key_id, key = int(ident), bytes.fromhex(hexkey)
        if key_id in seen:
            raise ConfigError(f"{where}: duplicate key id {key_id} (also on line {seen[key_id]})")
        if not any(key):
            raise ConfigError(f"{where}: key {key_id} is all zero")
        if len(keys) == MAX_KEYS:
            raise ConfigError(f"{where}: more than {MAX_KEYS} keys; list the signing key and at most "
                              f"one older key still verifying replies")
        seen[key_id] = lineno
        keys.append(HeartbeatKey(key_id, key))
    if not keys:
        raise ConfigError(f"{source}: no keys; expected one or two lines 'ID HEX32'")
    return keys


def load_keys(path: str | Path) -> list[HeartbeatKey]:
    """The keys in `path`, the signing key first; ConfigError (file, line,
    reason) if the file is not private to root or not a valid key file."""
    path = Path(path)
    return parse_keys(_read_private(path), str(path))


def random_keys() -> list[HeartbeatKey]:
    """One fresh random key (id 1) for a daemon with no key file: this host
    signs and verifies, so nobody else needs to know it."""
    while True:
        key = os.urandom(KEY_BYTES)
        if any(key):
            return [HeartbeatKey(1, key)]


def keys_for(cfg: Config) -> list[HeartbeatKey]:
    """The keys the daemon uses for this configuration, the signing key first."""
    if cfg.heartbeat.key_file is None:
        return random_keys()
    return load_keys(cfg.heartbeat.key_file)
