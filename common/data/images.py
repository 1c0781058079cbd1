"""Images decoded and resized once into a uint8 (N, S, S, 3) cache, then served from it.

The cache is built in parallel with a progress bar and, given a folder, kept on disk as a .npy
file (memory-mapped when read back) named by a hash of the source files (path, size, mtime) and
the resize settings, so it is rebuilt exactly when one of them changes. `ImageDataset` serves
items from it: with a transform each item is augmented on its own, seeded from
(seed, epoch, item), so augmentation does not depend on worker count or on a resume; without one
a whole batch is gathered and centre-cropped in one step. Pillow is imported on use only.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from common.core.errors import UserError, warn_user
from common.core.io import atomic_write, files_key, load_or_build, save_npy_atomic
from common.core.runtime import derive_seed, torch_seeded

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CACHE_VERSION = 1
RESIZE_MODES = ("squash", "crop")


def image_files(folder: Path) -> list[Path]:
    """The image files directly in a folder, sorted by name."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def decode_image(path: Path, size: int, resize: str = "squash") -> np.ndarray:
    """One image as an RGB uint8 (size, size, 3) array. squash: resize to size x size,
    ignoring the aspect ratio (the course's Resize((s, s))); crop: shorter side to size, then
    the centre square. JPEGs are decoded at the smallest DCT scale that still covers size."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.draft("RGB", (size, size))
        im = im.convert("RGB")
        if resize == "crop":
            im = ImageOps.fit(im, (size, size), method=Image.Resampling.BILINEAR)
        else:
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


@dataclass
class CachedImages:
    """Decoded images: `array` (N, S, S, 3) uint8, in memory or memory-mapped; `bad` maps the
    index of each unreadable file (left black) to the reason."""

    array: np.ndarray
    bad: dict[int, str]
    path: Path | None = None

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


def cache_key(files: Sequence[Path], size: int, resize: str) -> str:
    """Changes whenever a file is added, removed, renamed, rewritten or the settings change."""
    return files_key(files, CACHE_VERSION, size, resize)


def _unreadable(path: Path, reason: str) -> UserError:
    return UserError(f"{path}: unreadable image ({reason}); replace or delete it, or set "
                     "data.skip_bad_images = true to skip such files with a warning")


def _decode_all(files: Sequence[Path], size: int, resize: str, *, skip_bad: bool,
                workers: int, desc: str) -> CachedImages:
    array = np.zeros((len(files), size, size, 3), dtype=np.uint8)
    bad: dict[int, str] = {}

    def work(i: int) -> None:
        try:
            array[i] = decode_image(files[i], size, resize)
        except Exception as exc:  # Pillow raises several types for a damaged file
            bad[i] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if not skip_bad:
                raise

    workers = workers or min(32, len(os.sched_getaffinity(0)) if hasattr(
        os, "sched_getaffinity") else os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(files), desc=desc, unit="img",
                                                   disable=None, dynamic_ncols=True) as bar:
        futures = [pool.submit(work, i) for i in range(len(files))]
        try:
            for fut in futures:
                fut.result()
                bar.update(1)
        except Exception:
            for fut in futures:
                fut.cancel()
            i = min(bad)
            raise _unreadable(files[i], bad[i]) from None
    return CachedImages(array, dict(sorted(bad.items())))


def load_images(files: Sequence[Path], size: int, *, resize: str = "squash",
                cache_dir: str | Path | None = None, skip_bad: bool = False, workers: int = 0,
                desc: str = "decode") -> CachedImages:
    """Decode and resize `files` once. With cache_dir, reuse the cache built from the same
    files and settings, or build and save it (atomically). An unreadable file is an error, or
    with skip_bad a warning (its index is in `.bad`)."""
    if resize not in RESIZE_MODES:
        raise UserError(f"resize mode {resize!r} is unknown; choose squash or crop")
    if size < 8:
        raise UserError(f"image size {size} is too small; use at least 8 pixels")
    files = [Path(f) for f in files]
    shape = (len(files), size, size, 3)

    def build() -> CachedImages:
        return _decode_all(files, size, resize, skip_bad=skip_bad, workers=workers, desc=desc)

    def load(meta: Path) -> CachedImages | None:
        info = json.loads(meta.read_text(encoding="utf-8"))
        npy = meta.with_suffix(".npy")
        array = np.load(npy, mmap_mode="r")
        if array.shape != shape or array.dtype != np.uint8:
            return None
        return CachedImages(array, {int(k): v for k, v in info["bad"].items()}, npy)

    def save(meta: Path, cached: CachedImages) -> None:
        save_npy_atomic(meta.with_suffix(".npy"), cached.array)
        with atomic_write(meta) as fh:  # written last: marks the cache complete
            json.dump({"files": len(files), "size": size, "resize": resize,
                       "first": str(files[0]) if files else "",
                       "bad": {str(k): v for k, v in cached.bad.items()}}, fh)
        cached.path = meta.with_suffix(".npy")

    meta = None
    if cache_dir:
        meta = Path(cache_dir).expanduser() / f"{cache_key(files, size, resize)}.json"
    cached = load_or_build(meta, build, load=load, save=save)
    if cached.bad:
        i, reason = next(iter(cached.bad.items()))
        if not skip_bad:
            raise _unreadable(files[i], reason)
        for i, reason in cached.bad.items():
            warn_user(f"{files[i]}: unreadable image ({reason}), skipped")
    return cached


def channel_stats(array: np.ndarray, rows: np.ndarray, chunk: int = 256
                  ) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation (0..255 units) of the given rows, read in
    chunks so memory stays small at any data size."""
    total = np.zeros(3, dtype=np.float64)
    total_sq = np.zeros(3, dtype=np.float64)
    count = 0
    for start in range(0, len(rows), chunk):
        block = np.asarray(array[np.sort(rows[start:start + chunk])], dtype=np.float32)
        total += block.sum(axis=(0, 1, 2), dtype=np.float64)
        total_sq += np.square(block).sum(axis=(0, 1, 2), dtype=np.float64)
        count += block.shape[0] * block.shape[1] * block.shape[2]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean ** 2, 1e-6))
    return mean.tolist(), std.tolist()


def signed_pixels(images: torch.Tensor) -> torch.Tensor:
    """0..255 pixels (uint8 or float, any device) -> float32 in [-1, 1] (a tanh decoder's
    range), a new tensor scaled in place: about 2.5x faster than out-of-place on a
    channels-last batch, the same values as `images.float() / 127.5 - 1`."""
    return images.to(torch.float32, copy=True).div_(127.5).sub_(1.0)


def pixels_from_signed(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 pixels (clamped, rounded): the inverse of signed_pixels."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def gather_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """array[rows] as a new contiguous array, read in ascending row order (a memory map is
    read about 2x faster that way) and put back in the order asked for."""
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
    out[order] = array[rows[order]]
    return out


class ImageDataset(Dataset):
    """Rows `rows` of a (N, S, S, 3) uint8 image array, as (B, 3, s, s) uint8 batches, with
    labels if given. The loader hands over a whole batch of positions (no per-item fetch, no
    collate). With `transform` (HWC uint8 array -> CHW uint8 tensor) each item is augmented on
    its own; without it the batch is gathered and centre-cropped to `crop` pixels (0: none)."""

    batched_indexing = True

    def __init__(self, array: np.ndarray, rows: np.ndarray, labels: torch.Tensor | None = None,
                 *, transform: Callable | None = None, crop: int = 0, seed: int = 0):
        self.array, self.rows = array, np.asarray(rows, dtype=np.int64)
        self.labels = labels
        if labels is not None and len(labels) != len(self.rows):
            raise ValueError("one label per row expected")
        self.transform, self.crop, self.seed, self.epoch = transform, crop, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def with_transform(self, transform: Callable | None, seed: int) -> ImageDataset:
        """The same items under another transform and seed (a test-time augmented view)."""
        view = copy.copy(self)
        view.transform, view.seed, view.epoch = transform, seed, 0
        return view

    def __len__(self) -> int:
        return len(self.rows)

    def _centre(self, x: torch.Tensor) -> torch.Tensor:
        if not self.crop or self.crop >= x.shape[-1]:
            return x
        top = (x.shape[-2] - self.crop) // 2
        left = (x.shape[-1] - self.crop) // 2
        return x[..., top:top + self.crop, left:left + self.crop]

    def augmented(self, row: int) -> torch.Tensor:
        """Item `row` of the array under the transform, seeded by (seed, epoch, row)."""
        with torch_seeded(derive_seed(self.seed, self.epoch, row)):
            return self.transform(np.asarray(self.array[row]))

    def __getitem__(self, i):
        i = torch.as_tensor(i)  # a batch of positions, or one
        rows = np.atleast_1d(self.rows[i.numpy()])
        if self.transform is None:
            x = self._centre(torch.from_numpy(gather_rows(self.array, rows)).permute(0, 3, 1, 2))
        else:
            x = torch.stack([self.augmented(int(r)) for r in rows])
        x = x if i.dim() else x[0]
        return (x,) if self.labels is None else (x, self.labels[i])
