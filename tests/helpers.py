"""What many test files share: the checkout's paths, the command line called in this
process, a homework trained in this process."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
REAL_HW1 = SHARED / "hw1" / "2022"


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """scripts/run.py's entry function in this process (common.testing.call), from `cwd` (the
    checkout by default): exit status, stdout and stderr as subprocess.run gives them."""
    from common.testing import call
    from hw.cli import main

    return call(main, *args, cwd=cwd or ROOT)


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
