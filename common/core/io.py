"""Atomic file writes: a temporary file in the same folder, flushed, fsynced, then renamed."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Yield a file handle; `path` is replaced only if the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def os_error_of(exc: BaseException) -> OSError | None:
    """The OSError behind an exception, if any: torch's zip writer turns a failed write (a full
    disk, a file-size limit) into a RuntimeError ("unexpected pos ...") raised while the
    OSError is being handled."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def surfacing_write_errors(path: str | Path) -> Iterator[None]:
    """Inside the block, a write error that a library wrapped in another exception comes out
    as the OSError it was (errno kept), naming `path` (as does one that named no file)."""
    try:
        yield
    except Exception as exc:
        cause = os_error_of(exc)
        if cause is None or cause.errno is None or (exc is cause and cause.filename):
            raise
        raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from None


def write_csv_atomic(path: str | Path, header: Sequence[str],
                     rows: Iterable[Sequence]) -> None:
    """A CSV file with a header, written atomically; rows are streamed, not collected."""
    with atomic_write(path) as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_write(path) as fh:
        fh.write(text)


def save_npy_atomic(path: str | Path, array) -> None:
    """np.save, atomically: the file is whole or not there."""
    with atomic_write(path, "wb") as fh:
        np.save(fh, array)


def files_key(files: Iterable[str | Path], *settings) -> str:
    """A cache key that changes whenever a file is added, removed, renamed or rewritten (its
    size or modification time), or a setting changes."""
    digest = hashlib.sha1(json.dumps(list(settings)).encode())
    for f in files:
        st = os.stat(f)
        digest.update(f"{Path(f).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]
