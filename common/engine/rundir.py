"""The layout of a run directory, known in one place.

    config.toml  metrics.csv  steps.csv  curves.png  log.txt  test_outputs.pt  <submission>
    checkpoints/last.pt  best.pt  step-<step>.pt  average-*.pt
    k-fold runs add: folds.csv  kfold.csv  oof.pt  fold-<k>/ (each a run directory)
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from common.core.errors import UserError


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def new(cls, root: str | Path, task_name: str, name: str) -> RunDir:
        """runs/<task>/<timestamp>-<name>, with -2, -3, ... if that exists already."""
        base = Path(root) / task_name / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
        path, k = base, 1
        while path.exists():
            k += 1
            path = base.with_name(f"{base.name}-{k}")
        return cls(path)

    def check_writable(self, flag: str = "--out") -> None:
        """Fail now, before any data is read or anything is made, when the run directory
        cannot be created or written where it is asked for."""
        path = self.path
        longest = max((len(part.encode()) for part in path.parts), default=0)
        if longest > 255:  # what ext4, APFS and NTFS allow; stat would fail with ENAMETOOLONG
            raise UserError(f"{str(path)[:60]}...: a name in this path is {longest} bytes long, "
                            f"over the 255 a file system allows; choose a shorter {flag}")
        if path.exists() and not path.is_dir():
            raise UserError(f"{path}: exists and is not a folder; choose another {flag}")
        ancestor = path
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise UserError(f"{path}: {ancestor} is a file, not a folder; choose another {flag}")
        try:
            with tempfile.NamedTemporaryFile(dir=ancestor, prefix=".mlhw-probe-"):
                pass
        except OSError as exc:
            raise UserError(f"{path}: cannot write in {ancestor} ({exc.strerror}); choose "
                            f"another {flag}") from None

    @staticmethod
    def check_writable_file(path: str | Path, flag: str = "--out") -> None:
        """The same check for a single output file: not a folder, its folder writable."""
        path = Path(path)
        if path.is_dir():
            raise UserError(f"{path}: is a folder; {flag} names the file to write")
        RunDir(path.parent).check_writable(flag)

    # files of every run
    config = property(lambda self: self.path / "config.toml")
    metrics = property(lambda self: self.path / "metrics.csv")
    steps = property(lambda self: self.path / "steps.csv")
    curves = property(lambda self: self.path / "curves.png")
    log = property(lambda self: self.path / "log.txt")
    outputs = property(lambda self: self.path / "test_outputs.pt")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last = property(lambda self: self.path / "checkpoints" / "last.pt")
    best = property(lambda self: self.path / "checkpoints" / "best.pt")
    # files of k-fold runs
    folds = property(lambda self: self.path / "folds.csv")
    kfold = property(lambda self: self.path / "kfold.csv")
    oof = property(lambda self: self.path / "oof.pt")

    status_file = property(lambda self: self.path / "status.json")

    def set_status(self, state: str, **info) -> None:
        import json
        import os
        import socket

        from common.core.io import write_text_atomic

        write_text_atomic(self.status_file, json.dumps(
            {"state": state, "pid": os.getpid(), "host": socket.gethostname(),
             "time": time.strftime("%Y-%m-%d %H:%M:%S"), **info}) + "\n")

    def status(self) -> dict:
        """How the run stands: finished, interrupted, pruned, failed, or running; a run that
        says running but whose process is gone (killed outright: SIGKILL, out of memory, power)
        reads as dead. Runs from before status.json: finished
        when they hold a submission-like output, else interrupted."""
        import json
        import os
        import socket

        try:
            info = json.loads(self.status_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            done = self.outputs.is_file() or (self.path / "kfold.csv").is_file()
            return {"state": "finished" if done else "interrupted"}
        if info.get("state") == "running" and info.get("host") == socket.gethostname():
            try:
                pid = int(info.get("pid", 0))
                if pid <= 0:
                    raise ValueError(pid)
                os.kill(pid, 0)
            except (ProcessLookupError, ValueError):
                info["state"] = "dead"  # the process died without a word
        return info

    def checkpoint(self, which: str) -> Path:
        """best | last | average-last<N> / average-best<N> (written by averaging) | a path."""
        named = which in ("best", "last") or re.fullmatch(r"average-(last|best)\d+", which)
        return self.checkpoints / f"{which}.pt" if named else Path(which)

    def step_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:09d}.pt"

    def step_checkpoints(self) -> list[Path]:
        return sorted(self.checkpoints.glob("step-*.pt"))

    def fold(self, k: int) -> RunDir:
        return RunDir(self.path / f"fold-{k}")

    def fold_dirs(self) -> list[Path]:
        return sorted(self.path.glob("fold-*/"), key=lambda p: int(p.name.split("-")[1]))

    def is_kfold(self) -> bool:
        return self.folds.is_file()
