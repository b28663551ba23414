"""Tests split by privilege: tests/unit runs anywhere; tests/kernel needs root,
BCC and bpffs. Under CI=true a kernel test that cannot run fails instead of
skipping, so a green CI always means the kernel tests ran."""
from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import pytest

KERNEL_DIR = Path(__file__).parent / "kernel"


@cache
def kernel_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "BCC (python3-bpfcc) is not importable"
    if not os.path.ismount("/sys/fs/bpf"):
        return "bpffs is not mounted at /sys/fs/bpf"
    if not os.path.exists(f"/lib/modules/{os.uname().release}/build"):
        return "no kernel headers at /lib/modules/$(uname -r)/build (run scripts/setup.sh)"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if KERNEL_DIR in Path(item.fspath).parents:
            item.add_marker(pytest.mark.kernel)


def pytest_runtest_setup(item):
    if item.get_closest_marker("kernel") is None:
        return
    reason = kernel_unavailable()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"kernel test cannot run under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)
