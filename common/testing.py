"""Helpers for a homework's tests: a command line called in this process."""

from __future__ import annotations

import contextlib
import io
import subprocess
from collections.abc import Callable
from pathlib import Path


def call(main: Callable[[list[str]], int], *args: str,
         cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """`main(args)` (a command line's entry function) in this process, from `cwd`: its exit
    status (argparse's SystemExit included), stdout and stderr, as subprocess.run would give
    them for the script, without the seconds an interpreter and torch take to start."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            contextlib.chdir(cwd or Path.cwd()):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
