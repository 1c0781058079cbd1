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


def cli_child(*args: str, cwd: Path, limit: int | None = None) -> subprocess.CompletedProcess:
    """scripts/run.py in a child process, optionally unable to write any file larger than
    `limit` bytes (RLIMIT_FSIZE: Python ignores SIGXFSZ, so a write past it fails with EFBIG,
    exactly as a full disk fails a write)."""
    import resource
    import sys

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=limited if limit else None)


def check_cache_write_fails_cleanly(hw: str, data: Path, config: str, tmp: Path) -> None:
    """A cache written under a 200 kB file-size limit (a full disk): one error line naming
    the cache file, exit 2, no traceback, no run folder and no partial file left."""
    cache = tmp / "cache"
    done = cli_child(hw, "train", "--data", str(data), "--config", config, "--out",
                     str(tmp / "run"), "--dry-run", "--set", f'data.cache_dir="{cache}"',
                     cwd=tmp, limit=200_000)
    err = [line for line in done.stderr.splitlines() if line.strip()
           and not line.startswith(("loading", "decoding", "featurizing"))]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(err) == 1 and err[0].startswith(f"error: {cache}/") and \
        ".npy: cannot write (" in err[0], err
    assert not (tmp / "run").exists()
    assert not [p for p in cache.rglob("*") if p.is_file()], list(cache.rglob("*"))
