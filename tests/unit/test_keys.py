import os
import re

import pytest

from appliance.core.config import ConfigError, parse
from appliance.edge import keys
from appliance.edge.keys import HeartbeatKey, keys_for, load_keys, parse_keys, random_keys
from tests.unit.test_config import BASE

K1 = "00112233445566778899aabbccddeeff"
K2 = "8F1C0B7E5A9D4C3B2A1908F7E6D5C4B3"


@pytest.fixture
def owner_is_me(monkeypatch):
    """Files the test creates are owned by whoever runs it; root is required
    in production, and tested by test_file_not_owned_by_root_is_refused."""
    monkeypatch.setattr(keys, "REQUIRED_OWNER_UID", os.geteuid())


def write(tmp_path, text: str, mode: int = 0o600, name: str = "hb.keys"):
    path = tmp_path / name
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_first_key_signs_both_verify(tmp_path, owner_is_me):
    path = write(tmp_path, f"# rotated 2024-05\n\n  2 {K2}   # new: signs\n1 {K1}\n")
    got = load_keys(path)
    assert got == [HeartbeatKey(2, bytes.fromhex(K2)), HeartbeatKey(1, bytes.fromhex(K1))]
    assert load_keys(str(path))[0].id == 2


def test_one_key_is_enough(tmp_path, owner_is_me):
    assert load_keys(write(tmp_path, f"255 {K1}")) == [HeartbeatKey(255, bytes.fromhex(K1))]


def test_key_is_never_printed():
    assert K1 not in repr(HeartbeatKey(1, bytes.fromhex(K1)))
    assert bytes.fromhex(K1).hex() not in repr(HeartbeatKey(1, bytes.fromhex(K1)))


# (file text, line number the error must name or None, reason fragment)
BAD_KEY_FILES = {
    "empty": ("", None, "no keys"),
    "only comments": ("# nothing here\n\n   \n", None, "no keys"),
    "one field": (f"{K1}\n", 1, "expected 'ID HEX32' (two fields)"),
    "three fields": (f"1 {K1} extra\n", 1, "two fields"),
    "id zero": (f"0 {K1}\n", 1, "1..255"),
    "id 256": (f"256 {K1}\n", 1, "1..255"),
    "id negative": (f"-1 {K1}\n", 1, "1..255"),
    "id hex": (f"0x1 {K1}\n", 1, "1..255"),
    "id with plus": (f"+1 {K1}\n", 1, "1..255"),
    "key too short": (f"1 {K1[:-2]}\n", 1, "exactly 32 hex digits"),
    "key too long": (f"1 {K1}00\n", 1, "exactly 32 hex digits"),
    "key not hex": (f"1 {K1[:-1]}g\n", 1, "exactly 32 hex digits"),
    "key with 0x": (f"1 0x{K1[2:]}\n", 1, "exactly 32 hex digits"),
    "duplicate id": (f"1 {K1}\n# x\n1 {K2}\n", 3, "duplicate key id 1 (also on line 1)"),
    "three keys": (f"1 {K1}\n2 {K2}\n3 {K1[::-1]}\n", 3, "more than 2 keys"),
    "all-zero key": (f"1 {'0' * 32}\n", 1, "all zero"),
    "second key all zero": (f"1 {K1}\n2 {'0' * 32}\n", 2, "all zero"),
}


@pytest.mark.parametrize("text,line,reason", BAD_KEY_FILES.values(), ids=BAD_KEY_FILES.keys())
def test_bad_key_file_names_file_line_and_reason(tmp_path, owner_is_me, text, line, reason):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_keys(path)
    where = f"{path}: line {line}: " if line else f"{path}: "
    assert str(e.value).startswith(where), str(e.value)
    assert reason in str(e.value)
    for secret in (K1, K2, K1[:-2], K2.lower()):
        assert secret not in str(e.value), "a key must not appear in an error message"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o601, 0o610, 0o700 | 0o007])
def test_file_readable_by_group_or_others_is_refused(tmp_path, owner_is_me, mode):
    path = write(tmp_path, f"1 {K1}\n", mode)
    with pytest.raises(ConfigError, match=re.escape(f"{path}: mode {mode:04o} grants access to group or others")) as e:
        load_keys(path)
    assert f"chmod 600 {path}" in str(e.value)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_owner_only_modes_are_accepted(tmp_path, owner_is_me, mode):
    assert load_keys(write(tmp_path, f"1 {K1}\n", mode))[0].id == 1


def test_file_not_owned_by_root_is_refused(tmp_path):
    path = write(tmp_path, f"1 {K1}\n")
    if os.geteuid() == 0:
        os.chown(path, 4242, 4242)
    uid = os.stat(path).st_uid
    assert uid != 0
    with pytest.raises(ConfigError, match=re.escape(f"{path}: owned by uid {uid}, not root")):
        load_keys(path)


def test_symlink_directory_and_missing_file_are_refused(tmp_path, owner_is_me):
    target = write(tmp_path, f"1 {K1}\n")
    link = tmp_path / "link.keys"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match=re.escape(f"{link}: is a symbolic link")):
        load_keys(link)
    sub = tmp_path / "dir"
    sub.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match=re.escape(f"{sub}: not a regular file")):
        load_keys(sub)
    with pytest.raises(ConfigError, match=re.escape(f"cannot read key file {tmp_path / 'absent'}: "
                                                    "No such file or directory")):
        load_keys(tmp_path / "absent")


def test_fifo_is_refused_without_blocking(tmp_path, owner_is_me):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_keys(fifo)


def test_binary_file_is_refused(tmp_path, owner_is_me):
    path = tmp_path / "bin.keys"
    path.write_bytes(b"1 \xff\xfe\n")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="not text"):
        load_keys(path)


def test_random_keys_are_fresh_and_well_formed():
    a, b = random_keys(), random_keys()
    assert [k.id for k in a] == [1] and len(a[0].key) == 16 and any(a[0].key)
    assert a[0].key != b[0].key


def test_keys_for_config(tmp_path, owner_is_me):
    path = write(tmp_path, f"7 {K2}\n")
    with_file = parse(BASE.replace("[steer]", f'[heartbeat]\nkey_file = "{path}"\n\n[steer]'))
    assert keys_for(with_file) == [HeartbeatKey(7, bytes.fromhex(K2))]
    without = parse(BASE)
    got = keys_for(without)
    assert [k.id for k in got] == [1] and got != keys_for(without)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        keys_for(with_file)


def test_parse_keys_is_case_insensitive_hex():
    assert parse_keys(f"1 {K2}\n2 {K2.lower()[::-1]}")[0].key == bytes.fromhex(K2)
