"""Kaggle submission files: validated in full, then written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from common.core.errors import UserError
from common.core.io import atomic_write


def _check(path: Path, header: Sequence[str], ids: Sequence, values: np.ndarray,
           expected_ids: Sequence | None) -> None:
    if len(header) != 2:
        raise UserError(f"{path}: a submission header has two columns, got {list(header)}")
    if len(ids) != len(values):
        raise UserError(f"{path}: {len(ids)} ids but {len(values)} predictions")
    if expected_ids is not None:
        if len(ids) != len(expected_ids):
            raise UserError(f"{path}: {len(ids)} rows, expected {len(expected_ids)} (one per test "
                            "item)")
        mismatch = np.flatnonzero(np.asarray(ids, dtype=object) != np.asarray(expected_ids,
                                                                              dtype=object))
        if mismatch.size:
            i = int(mismatch[0])
            raise UserError(f"{path}: row {i + 1} has id {ids[i]!r}, expected {expected_ids[i]!r} "
                            "(ids must match the test set, in order)")
    if len(set(map(str, ids))) != len(ids):
        raise UserError(f"{path}: ids are not unique")
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise UserError(f"{path}: prediction for id {ids[bad]!r} is {values[bad]} (NaN or inf); "
                        "the model diverged: lower the learning rate or check the inputs")


def write_submission(path: str | Path, header: Sequence[str], ids: Sequence,
                     values: Sequence, *, expected_ids: Sequence | None = None) -> Path:
    """Validate header, row count, id order and finiteness, then write `path` atomically.
    An invalid submission raises UserError and leaves any earlier file untouched."""
    path = Path(path)
    values = np.asarray(values)
    if values.ndim != 1:
        raise UserError(f"{path}: predictions must be one value per row, got shape {values.shape}")
    _check(path, header, list(ids), values, None if expected_ids is None else list(expected_ids))
    frame = pd.DataFrame({header[0]: list(ids), header[1]: values})
    with atomic_write(path) as fh:
        frame.to_csv(fh, index=False, lineterminator="\n")
    return path


def validate_submission(path: str | Path, header: Sequence[str],
                        expected_ids: Sequence) -> pd.DataFrame:
    """Read a submission file back and check it as write_submission does."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={header[0]: str})
    except (FileNotFoundError, pd.errors.EmptyDataError):
        raise UserError(f"{path}: missing or empty submission file") from None
    if list(frame.columns) != list(header):
        raise UserError(f"{path}: header {list(frame.columns)}, expected {list(header)}")
    _check(path, header, frame[header[0]].tolist(), frame[header[1]].to_numpy(),
           [str(i) for i in expected_ids])
    return frame
