"""Shared fixtures: the repository, the real ImageNet weights, the `mnv2` binary the Python
results are compared with (scripts/ci/python.sh builds it and sets MNV2)."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "weights" / "mobilenet_v2-b0353104.pth"
PHOTOS = ROOT / "tests" / "data" / "images"


def _mnv2() -> Path:
    if os.environ.get("MNV2"):
        return Path(os.environ["MNV2"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "release" / "mnv2"


@pytest.fixture(scope="session")
def weights() -> Path:
    assert WEIGHTS.is_file(), f"{WEIGHTS} is missing: run `bash scripts/fetch_assets.sh`"
    return WEIGHTS


@pytest.fixture(scope="session")
def mnv2():
    """Runs the CLI; returns its stdout, failing the test with its stderr on error."""
    exe = _mnv2()
    assert exe.is_file(), f"{exe} is missing: build it (cargo build --release -p mnv2) or set MNV2"

    def run(*args):
        p = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"mnv2 {' '.join(map(str, args))}: {p.stderr}"
        return p.stdout

    return run


@pytest.fixture(scope="session")
def model(weights):
    import mobilenetv2

    return mobilenetv2.Model.load(weights, threads=2)
