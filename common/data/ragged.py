"""Rows of different lengths (sentences as token ids, utterances as frames) in one array of
values plus offsets: row i is values[offsets[i]:offsets[i + 1]]. One allocation instead of a
Python object per row, so it pickles to workers cheaply and memory-maps from a .npy file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def offsets_of(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    """int64 offsets (len(lengths) + 1 of them, starting at 0) of rows with these lengths."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


@dataclass
class Ragged:
    """`values` (total, ...) holding every row, `offsets` (rows + 1,) int64; `path` is the .npy
    file `values` is memory-mapped from, if it is."""

    values: np.ndarray
    offsets: np.ndarray
    path: Path | None = None

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence], dtype) -> Ragged:
        """Rows (lists or arrays of scalars) concatenated into one array of `dtype`."""
        offsets = offsets_of([len(r) for r in rows])
        values = np.fromiter((v for r in rows for v in r), dtype=dtype, count=int(offsets[-1]))
        return cls(values, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]:self.offsets[i + 1]]
