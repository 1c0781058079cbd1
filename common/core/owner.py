"""One writer per run folder: an advisory lock (fcntl.flock) on <folder>/.owner, held by the
process that writes into the folder for as long as it does. The OS drops the lock when the
process ends however it ends (a crash, SIGKILL, power), so a dead run never leaves a stale lock;
the file's text (pid, command, start time) only names the holder in messages."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from common.core import distributed
from common.core.errors import UserError

LOCK_NAME = ".owner"


def holder(folder: str | Path) -> dict | None:
    """Who owns `folder` now: {"pid", "command", "since"} of another live process that holds
    its lock, or None (nobody, or this process)."""
    import fcntl

    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        try:
            info = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
        except ValueError:
            info = {}
        if info.get("pid") == os.getpid():
            return None
        return {"pid": info.get("pid", "?"), "command": info.get("command", "?"),
                "since": info.get("since", "?")}
    finally:
        os.close(fd)


def describe(owner: dict) -> str:
    return f"process {owner['pid']} (`{owner['command']}`, since {owner['since']})"


def check_not_running(folder: str | Path, what: str = "") -> None:
    """Refuse to read a run another process is still writing (training: its checkpoints are
    mid-run)."""
    owner = holder(folder) if distributed.is_main() else None  # rank 0 holds the lock
    if owner is not None:
        raise UserError(f"{folder}: still being written by {describe(owner)}; wait for it to "
                        f"finish{what}")


@contextlib.contextmanager
def owning(folder: str | Path, command: str, *, flag: str = "--out") -> Iterator[Path]:
    """Hold `folder`'s lock for the block (creating the folder if needed): a second writer is
    one error line naming the holder. A folder this block created is removed again when the
    block fails before anything worth keeping (a checkpoint) was written, so a failed command
    leaves no run folder behind. Under torchrun only rank 0 locks (the ranks share one run)."""
    import fcntl

    folder = Path(folder)
    if not distributed.is_main():
        yield folder
        return
    created = None  # the highest folder this block made (removed again on failure)
    top = folder
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    try:
        folder.mkdir(parents=True)
        created = top
    except FileExistsError:
        if not folder.is_dir():
            raise UserError(f"{folder}: exists and is not a folder; choose another {flag}") \
                from None
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = holder(folder) or {"pid": "?", "command": "?", "since": "?"}
            raise UserError(f"{folder}: in use by {describe(owner)}; wait for it to finish or "
                            f"choose another {flag}") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "command": command,
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        try:
            yield folder
        except BaseException:
            if created is not None and not any(folder.rglob("*.pt")):
                shutil.rmtree(created, ignore_errors=True)  # nothing to resume or keep
            raise
    finally:
        os.close(fd)  # releases the lock


def command_line() -> str:
    """This process's command, for the lock's text."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]
