"""Atomic file writes: a temporary file in the same folder, flushed, fsynced, then renamed."""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TypeVar

import numpy as np

T = TypeVar("T")


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
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None and not exc.filename:
            raise OSError(exc.errno, exc.strerror, str(path)) from None  # name the file
        raise


def read_text(path: str | Path, fix: str = "save it as UTF-8") -> str:
    """A text file as UTF-8, with or without the byte-order mark Notepad writes; a file in
    another encoding (UTF-16, Latin-1, ...) is one UserError naming the file and the line."""
    from common.core.errors import UserError

    path = Path(path)
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{path}: UTF-16 text; {fix}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line} is not UTF-8 text (another encoding?); {fix}"
                        ) from None


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


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def save_npy_atomic(path: str | Path, array) -> None:
    """np.save, atomically: the file is whole or not there. numpy reports a short write (a
    full disk, a file-size limit) as an OSError without errno; it comes out as ENOSPC naming
    the file, which the command line turns into one line."""
    try:
        with atomic_write(path, "wb") as fh:
            np.save(fh, array)
    except OSError as exc:
        if exc.errno is not None:
            raise
        raise OSError(errno.ENOSPC, f"short write ({exc}): the disk is full or a "
                      "file-size limit was reached", str(path)) from None


def files_key(files: Iterable[str | Path], *settings) -> str:
    """A cache key that changes whenever a file is added, removed, renamed or rewritten (its
    size or modification time), or a setting changes."""
    digest = hashlib.sha1(json.dumps(list(settings)).encode())
    for f in files:
        st = os.stat(f)
        digest.update(f"{Path(f).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def load_or_build(path: str | Path | None, build: Callable[[], T], *,
                  load: Callable[[Path], T | None], save: Callable[[Path, T], None]) -> T:
    """A cache of one file: what `load` reads back from `path` (written by an earlier run), or,
    when the file is missing or damaged (`load` returns None or raises OSError, ValueError,
    KeyError or EOFError), what `build` makes now, saved there by `save` (which must write
    atomically, so a killed run leaves the old file or none). Name the file by a key of what it
    was built from (files_key) and a rebuild happens exactly when that changes. Without a path,
    nothing is kept."""
    if path is None:
        return build()
    path = Path(path)
    if path.is_file():
        try:
            value = load(path)
        except (OSError, ValueError, KeyError, EOFError):
            value = None
        if value is not None:
            return value
    value = build()
    save(path, value)
    return value


def cached_array(path: str | Path | None, build: Callable[[], np.ndarray], *,
                 shape: tuple[int, ...], dtype) -> np.ndarray:
    """load_or_build for one array in a .npy file, memory-mapped (read-only) when it comes from
    the file: the one kept from an earlier run if its shape and dtype are as expected, else the
    one `build` makes, saved and mapped back (so the built copy's memory is freed)."""
    def load(p: Path) -> np.ndarray | None:
        array = np.load(p, mmap_mode="r")
        return array if array.shape == tuple(shape) and array.dtype == np.dtype(dtype) else None

    array = load_or_build(path, build, load=load, save=save_npy_atomic)
    return array if path is None or isinstance(array, np.memmap) else np.load(path, mmap_mode="r")


@contextlib.contextmanager
def building_folder(folder: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a new empty folder beside `folder`; when the block ends without error it is
    renamed to `folder`, so readers see the old folder or the whole new one, never a part. With
    replace an existing `folder` goes (moved aside, removed after the swap); without, `folder`
    must be missing or empty. On an error the new folder is removed and the old one kept."""
    folder = Path(folder)
    if not replace and folder.is_dir() and any(folder.iterdir()):
        raise FileExistsError(errno.ENOTEMPTY, "already holds files", str(folder))
    folder.parent.mkdir(parents=True, exist_ok=True)

    def sibling(what: str) -> Path:   # made with the default permissions (mkdtemp's are 0700)
        return folder.with_name(f".{folder.name}-{what}-{os.getpid()}-{os.urandom(4).hex()}")

    stage = sibling("new")
    stage.mkdir()
    try:
        yield stage
        if not replace:  # rename fails if another process filled `folder` meanwhile
            try:
                os.replace(stage, folder)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                raise FileExistsError(errno.EEXIST, "filled by another process meanwhile; "
                                      "nothing of it was replaced", str(folder)) from None
            return
        aside = sibling("old") if folder.exists() else None
        if aside is not None:
            os.replace(folder, aside)
        try:
            os.replace(stage, folder)
        except BaseException:
            if aside is not None:
                os.replace(aside, folder)
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
