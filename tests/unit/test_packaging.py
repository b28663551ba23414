"""The product ships only the product: the wheel built from the tree holds no
lab or bench module and no lab BPF program, and the installed product needs
neither the lab's dependencies nor the lab."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCT_PACKAGES = {"appliance", "fastpath", "ebpf"}
RUNTIME_REQUIRES = {"pyroute2", "pydantic", "prometheus-client"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """A wheel built from the files git tracks, as a fresh clone has them
    (no build leftovers or untracked files of this working copy)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=600)
    (whl,) = out.glob("twinpath-*.whl")
    with zipfile.ZipFile(whl) as z:
        yield z


@pytest.fixture(scope="module")
def wheel_files(wheel) -> list[str]:
    return wheel.namelist()


def test_wheel_holds_only_product_packages(wheel_files):
    tops = {name.split("/")[0] for name in wheel_files}
    assert {t for t in tops if not t.endswith(".dist-info")} == PRODUCT_PACKAGES


def test_wheel_holds_every_product_bpf_program_and_no_lab_one(wheel_files):
    names = set(wheel_files)
    assert {"ebpf/steer.c", "ebpf/steer_xdp.c", "ebpf/heartbeat.c", "ebpf/arbitrate.c", "ebpf/lib/layout.h",
            "appliance/core/predict_weights.json"} <= names
    lab_programs = {p.name for p in (REPO / "lab" / "ebpf").iterdir()}
    assert lab_programs and not {Path(n).name for n in names} & lab_programs


def test_wheel_requires_only_what_the_daemon_uses(wheel, wheel_files):
    (meta,) = [n for n in wheel_files if n.endswith(".dist-info/METADATA")]
    requires = [line.removeprefix("Requires-Dist:").strip() for line in wheel.read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    assert {r.split(">")[0].split("<")[0].split("=")[0].strip() for r in requires} == RUNTIME_REQUIRES


def test_installed_product_requires_no_lab_dependency():
    shown = subprocess.run([sys.executable, "-m", "pip", "show", "twinpath"], capture_output=True, text=True,
                           check=True).stdout
    (requires,) = [line for line in shown.splitlines() if line.startswith("Requires:")]
    assert {r.strip() for r in requires.removeprefix("Requires:").split(",") if r.strip()} == RUNTIME_REQUIRES


BLOCK = "lab bench numpy scapy matplotlib rich".split()


def test_every_product_module_imports_without_the_lab_or_its_dependencies():
    modules = sorted(".".join(p.relative_to(REPO).with_suffix("").parts)
                     for p in (REPO / "appliance").rglob("*.py") if p.name != "__init__.py")
    code = (f"import sys\nfor m in {BLOCK!r}: sys.modules[m] = None\n"
            f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
            "from appliance.cli import main\nmain(['--help'])\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert run.returncode == 0, run.stderr
    assert "usage: twinpath" in run.stdout
