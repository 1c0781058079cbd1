from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
REAL_HW1 = SHARED / "hw1" / "2022"


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs `-n auto`), each worker gets its own share of the
    cores, so torch's threads (the engine uses every core the process may run on) do not
    fight the other worker's for the same ones."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker.startswith("gw") and count > 1 and hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) >= count:
            os.sched_setaffinity(0, cores[int(worker[2:]) % count::count])


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
    """scripts/run.py's entry function in this process (common.testing.call), from `cwd` (the
    checkout by default): exit status, stdout and stderr as subprocess.run gives them."""
    from common.testing import call
    from hw.cli import main

    return call(main, *args, cwd=cwd or ROOT)


@pytest.fixture(autouse=True)
def _global_state():
    """What a test (an in-process command) may change process-wide, put back after it: torch's
    CPU threads, default dtype and global RNG, and the denormal flag (off, as at start)."""
    import torch

    threads, dtype, rng = torch.get_num_threads(), torch.get_default_dtype(), torch.get_rng_state()
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    torch.set_rng_state(rng)
    torch.set_flush_denormal(False)


def train_in_process(hw: str, data: Path, out: Path, config: str, *sets: str,
                     cache: str = "cache", dry: bool = False) -> int:
    """`run.py <hw> train` in this process on the CPU, the data cache beside the run, quiet,
    with --set for each of sets; returns the exit status."""
    from hw.cli import main as cli_main

    args = [hw, "train", "--data", str(data), "--config", config, "--out", str(out),
            "--set", f'data.cache_dir="{out.parent / cache}"', "--set", 'trainer.device="cpu"',
            "--set", "trainer.print_every_evals=1000"]
    for s in sets:
        args += ["--set", s]
    return cli_main(args + (["--dry-run"] if dry else []))
