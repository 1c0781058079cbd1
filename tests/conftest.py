from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
REAL_HW1 = SHARED / "hw1" / "2022"


@pytest.fixture(scope="session")
def hw1_demo(tmp_path_factory) -> Path:
    from hw.hw1_covid.data import write_demo_data

    return write_demo_data(tmp_path_factory.mktemp("hw1demo"))


@pytest.fixture(scope="session")
def real_hw1() -> Path:
    if not (REAL_HW1 / "covid.train.csv").is_file():
        pytest.skip("real HW1 data (../shared/data/hw1/2022) not present")
    return REAL_HW1


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run scripts/run.py in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), *args],
                          capture_output=True, text=True, cwd=cwd or ROOT, timeout=600)
