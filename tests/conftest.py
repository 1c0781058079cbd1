"""The suite's fixtures and process set-up; plain helpers are in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import REAL_HW1


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
