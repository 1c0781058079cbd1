"""Reading HW8's face arrays, its synthetic validation anomalies, and its demo data.

Kaggle's layout (`ml2022spring-hw8`, data.zip): `data/trainingset.npy` (100000, 64, 64, 3) and
`data/testingset.npy` (19636, 64, 64, 3), RGB faces in 0..255 (uint8; any numeric dtype in that
range is accepted). The arrays are memory-mapped, never read whole: a batch gathers its rows
from the page cache (scripts/bench/hw8_pipeline.py). Every problem with a file is one
`UserError` naming it (the command line turns that into one line, exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from common.core.errors import UserError
from common.core.io import save_npy_atomic, write_csv_atomic
from common.core.runtime import derive_seed
from common.data.images import gather_rows
from common.data.loading import find_root_or_child

TRAIN, TEST = "trainingset.npy", "testingset.npy"
DEMO_ANSWERS = "demo_test_answers.csv"   # the demo test set's answer key (ID, 1 = anomaly)
ANOMALY_KINDS = ("patch", "channels", "upside_down", "noise", "blocks")  # validation's recipe
DEMO_ANOMALIES = ("shapes", "colour", "corrupt")                          # the demo test's


@dataclass
class Images:
    array: np.ndarray                # (N, S, S, 3), memory-mapped
    ids: list[int]                   # 0..N-1: the submission's IDs


def read_faces(path: Path) -> np.ndarray:
    """A (N, S, S, 3) array of pixels in 0..255, memory-mapped; one line if it is not one."""
    if not path.is_file():
        raise UserError(f"{path}: file not found (expected {TRAIN} and {TEST}, as in Kaggle's "
                        "data.zip)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path}: not a readable .npy array ({str(exc).strip()[:80]}); "
                        "re-download it") from None
    if array.ndim != 4 or array.shape[3] != 3 or array.shape[1] != array.shape[2] \
            or array.shape[0] == 0 or array.shape[1] < 8:
        raise UserError(f"{path}: shape {array.shape}, expected (images, side, side, 3) RGB "
                        "images; re-download it")
    if array.dtype != np.uint8:
        if array.dtype.kind not in "iuf":
            raise UserError(f"{path}: dtype {array.dtype}, expected uint8 pixels (0..255)")
        for start in range(0, len(array), 4096):   # chunks: memory stays small
            block = np.asarray(array[start:start + 4096])
            if not np.isfinite(block).all() or block.min() < 0 or block.max() > 255:
                raise UserError(f"{path}: pixel values outside 0..255 (images "
                                f"{start}..{start + len(block) - 1}); re-download it")
    return array


def find_data(data_dir: Path) -> Path:
    return find_root_or_child(data_dir, (TRAIN,), f"no {TRAIN} here or in a sub-folder",
                              hint="point --data at the unzipped data/ folder")


def load_train(data_dir: Path) -> Images:
    array = read_faces(find_data(data_dir) / TRAIN)
    return Images(array, list(range(len(array))))


def load_test(data_dir: Path, side: int) -> Images:
    path = find_data(data_dir) / TEST
    array = read_faces(path)
    if array.shape[1] != side:
        raise UserError(f"{path}: images of {array.shape[1]} pixels, the training images have "
                        f"{side}")
    return Images(array, list(range(len(array))))


# ------------------------------------------------------------------ synthetic anomalies
def synthetic_anomaly(image: np.ndarray, seed: int) -> np.ndarray:
    """A corrupted copy of one HWC uint8 face, a pure function of (image, seed): one of
    ANOMALY_KINDS, drawn from the seed -
    patch: a square of 25-45% of the side copied from elsewhere in the image (a misplaced part);
    channels: the colour channels permuted (never the identity);
    upside_down: flipped vertically;
    noise: Gaussian pixel noise of standard deviation 25-60;
    blocks: 2-4 rectangles of one random colour each, 15-30% of the side."""
    rng = np.random.default_rng(seed)
    kind = ANOMALY_KINDS[int(rng.integers(len(ANOMALY_KINDS)))]
    out = np.array(image, dtype=np.uint8, copy=True)
    side = out.shape[0]
    if kind == "patch":
        size = max(2, int(side * rng.uniform(0.25, 0.45)))
        (y0, x0), (y1, x1) = rng.integers(0, side - size + 1, (2, 2))
        out[y0:y0 + size, x0:x0 + size] = np.asarray(image)[y1:y1 + size, x1:x1 + size]
        if (y0, x0) == (y1, x1):
            out[y0:y0 + size, x0:x0 + size] = out[y0:y0 + size, x0:x0 + size][::-1]
    elif kind == "channels":
        orders = [(0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
        out = out[..., list(orders[int(rng.integers(len(orders)))])]
    elif kind == "upside_down":
        out = out[::-1]
    elif kind == "noise":
        noisy = out.astype(np.float32) + rng.normal(0, rng.uniform(25, 60), out.shape)
        out = np.clip(noisy, 0, 255).astype(np.uint8)
    else:
        for _ in range(int(rng.integers(2, 5))):
            h, w = (side * rng.uniform(0.15, 0.3, 2)).astype(int) + 1
            y, x = rng.integers(0, side - h + 1), rng.integers(0, side - w + 1)
            out[y:y + h, x:x + w] = rng.integers(0, 256, 3)
    return np.ascontiguousarray(out)


class AnomalyPairs(Dataset):
    """Validation without labels: item i is (normal face `rows[i]`, its synthetic anomaly,
    targets [0, 1]) as uint8 CHW tensors; the anomaly is seeded by (seed, row), so a row's
    anomaly is the same in every epoch, run, fold and process. Batched: the loader hands over
    a whole batch of positions."""

    batched_indexing = True

    def __init__(self, array: np.ndarray, rows: np.ndarray, seed: int):
        self.array, self.rows, self.seed = array, np.asarray(rows, dtype=np.int64), seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        i = torch.as_tensor(i)
        rows = np.atleast_1d(self.rows[i.numpy()])
        normal = gather_rows(self.array, rows).astype(np.uint8, copy=False)
        odd = np.stack([synthetic_anomaly(img, derive_seed(self.seed, int(r)))
                        for img, r in zip(normal, rows, strict=True)])
        pair = [torch.from_numpy(a).permute(0, 3, 1, 2) for a in (normal, odd)]
        target = torch.tensor([[0.0, 1.0]]).expand(len(rows), 2)
        if not i.dim():
            return pair[0][0], pair[1][0], target[0]
        return pair[0], pair[1], target


# ------------------------------------------------------------------------- demo data
def demo_anomaly(rng: np.random.Generator, kind: str, size: int):
    """A demo test anomaly: shapes (a scene of coloured geometric shapes, no face), colour (a
    face with its hue turned: channels rotated, half of them inverted), corrupt (a face under
    thick random lines, its upper half blurred)."""
    from PIL import Image, ImageDraw, ImageFilter

    from common.data.demo_faces import demo_face

    if kind == "shapes":
        im = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(100, 256, 3)))
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(2, 5))):
            x, y = rng.uniform(0, size, 2)
            r = rng.uniform(0.1, 0.3) * size
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(
                [x - r, y - r, x + r, y + r], fill=fill)
        return im
    face = demo_face(rng, size)
    if kind == "colour":
        pixels = np.asarray(face)[..., [2, 0, 1]]
        return Image.fromarray((255 - pixels) if rng.random() < 0.5 else pixels)
    draw = ImageDraw.Draw(face)
    for _ in range(int(rng.integers(2, 5))):
        draw.line([tuple(rng.uniform(0, size, 2)), tuple(rng.uniform(0, size, 2))],
                  fill=tuple(int(c) for c in rng.integers(0, 256, 3)), width=int(size / 16))
    half = face.crop((0, 0, size, size // 2)).filter(ImageFilter.GaussianBlur(size / 24))
    face.paste(half, (0, 0))
    return face


def write_demo_data(dest: Path, *, n_train: int = 1500, n_normal: int = 150,
                    n_anomalies: int = 150, size: int = 64, seed: int = 8) -> Path:
    """dest/data/{trainingset,testingset}.npy in Kaggle's layout: normal faces from HW6's demo
    face generator, and a test set of normal faces mixed with anomalies of DEMO_ANOMALIES
    (equal shares), with its answer key."""
    from common.data.demo_faces import demo_face

    rng = np.random.default_rng(seed)
    folder = Path(dest) / "data"
    folder.mkdir(parents=True, exist_ok=True)
    faces = np.stack([np.asarray(demo_face(rng, size)) for _ in range(n_train + n_normal)])
    odd = np.stack([np.asarray(demo_anomaly(rng, DEMO_ANOMALIES[i % len(DEMO_ANOMALIES)], size))
                    for i in range(n_anomalies)])
    test = np.concatenate([faces[n_train:], odd])
    label = np.r_[np.zeros(n_normal, np.int64), np.ones(n_anomalies, np.int64)]
    order = rng.permutation(len(test))
    save_npy_atomic(folder / TRAIN, faces[:n_train])
    save_npy_atomic(folder / TEST, test[order])
    write_csv_atomic(Path(dest) / DEMO_ANSWERS, ("ID", "label"),
                     enumerate(label[order].tolist()))
    return Path(dest)
