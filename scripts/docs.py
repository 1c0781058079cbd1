"""The README's pictures: train every homework's demo (`<hw> train --demo` with its CPU recipe) and
copy each run's curves.png, and HW6's last sample grid, into docs/img/.

    python scripts/docs.py                      # all eight, about 35 minutes on 2 CPU cores
    python scripts/docs.py --only hw1 hw8       # some of them
    python scripts/docs.py --dry-run --dest D   # the same path in seconds (the pictures of a
                                                # two-batch run: for checking the script)

The runs go to a temporary folder; a picture is replaced only once its run has finished."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOMEWORKS = ["hw1", "hw2", "hw3", "hw4", "hw5", "hw6", "hw7", "hw8"]
# the CPU recipe of a homework whose --demo runs its GPU recipe
CPU_RECIPE = {"hw3": "configs/hw3_cpu.toml",
              "hw4": "configs/hw4_cpu.toml"}


def pictures(run: Path, hw: str) -> dict[str, Path]:
    """The pictures a finished run gives the README: name in docs/img/ -> file in the run."""
    found = {f"{hw}_curves.png": run / "curves.png"}
    grids = sorted((run / "samples").glob("step-*.png"))
    if grids:
        found[f"{hw}_samples.png"] = grids[-1]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=HOMEWORKS, default=HOMEWORKS)
    parser.add_argument("--dest", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--dry-run", action="store_true", help="two batches per run")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlhw-docs-") as scratch:
        for hw in args.only:
            run = Path(scratch) / hw
            cmd = [sys.executable, str(ROOT / "scripts" / "run.py"), hw, "train", "--demo",
                   "--out", str(run), *(["--dry-run"] if args.dry_run else []),
                   *(["--config", str(ROOT / CPU_RECIPE[hw])] if hw in CPU_RECIPE else [])]
            print(f"{hw}: {' '.join(cmd[1:])}", flush=True)
            done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
            if done.returncode:
                print(f"{hw}: the run failed (exit {done.returncode}); pictures kept as they were")
                return done.returncode
            for name, src in pictures(run, hw).items():
                tmp = args.dest / f".{name}.tmp"
                shutil.copyfile(src, tmp)
                tmp.replace(args.dest / name)
                print(f"{hw}: {args.dest / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
