"""Reading hw8's images and writing its demo data.

The layout (change it to the assignment's): `train/<class>/<id>.png` (one folder per class,
named by its label; .jpg, .jpeg, .bmp and .webp too) and `test/<id>.png`. Images are decoded and
resized once into a uint8 (N, S, S, 3) array by `common.images.load_images`, kept on disk under
`data.cache_dir` and memory-mapped when read back. Every problem with a file is one `UserError`
naming it (the command line turns that into one line, exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.images import image_files, load_images
from common.io import write_csv_atomic

TRAIN, TEST = "train", "test"
DEMO_ANSWERS = "demo_test_answers.csv"   # the demo test set's answer key, for `--demo` scores
SHAPES = ("circle", "square", "triangle")  # the demo's classes


@dataclass
class Images:
    array: np.ndarray                # (N, S, S, 3) uint8, memory-mapped when cached
    ids: list[str]                   # file names without suffix: the submission's ids
    labels: np.ndarray | None        # int64 class index per image (training images)
    classes: list[str]               # class names, the index's meaning


def _folder(data_dir: Path, name: str) -> Path:
    folder = Path(data_dir) / name
    if not folder.is_dir():
        raise UserError(f"{folder}: folder not found (expected {TRAIN}/<class>/ and {TEST}/ in "
                        "the data folder)")
    return folder


def load_train(data_dir: Path, size: int, cache_dir: str = "") -> Images:
    root = _folder(data_dir, TRAIN)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise UserError(f"{root}: needs one sub-folder of images per class, at least two")
    files, labels = [], []
    for k, name in enumerate(classes):
        found = image_files(root / name)
        if not found:
            raise UserError(f"{root / name}: no images in this class folder")
        files += found
        labels += [k] * len(found)
    cached = load_images(files, size, cache_dir=cache_dir or None, desc="train")
    return Images(cached.array, [f.stem for f in files], np.array(labels, dtype=np.int64),
                  classes)


def load_test(data_dir: Path, size: int, classes: list[str], cache_dir: str = "") -> Images:
    folder = _folder(data_dir, TEST)
    files = image_files(folder)
    if not files:
        raise UserError(f"{folder}: no test images")
    cached = load_images(files, size, cache_dir=cache_dir or None, desc="test")
    return Images(cached.array, [f.stem for f in files], None, classes)


def demo_image(rng: np.random.Generator, shape: str, size: int = 32):
    """A coloured shape of random size and place on a random background, with pixel noise."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 100, 3)))
    draw = ImageDraw.Draw(im)
    r = rng.uniform(0.25, 0.4) * size
    cx, cy = rng.uniform(r, size - r, 2)
    fill = tuple(int(c) for c in rng.integers(150, 256, 3))   # light on dark
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    noisy = np.asarray(im, dtype=np.int16) + rng.integers(-20, 21, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_demo_data(dest: Path, *, n_train: int = 800, n_test: int = 200, seed: int = 0) -> Path:
    """Images of three shapes in the layout above (PNG), and the test set's answer key."""
    rng = np.random.default_rng(seed)
    dest = Path(dest)
    answers = []
    for i in range(n_train + n_test):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        folder = dest / TRAIN / shape if i < n_train else dest / TEST
        folder.mkdir(parents=True, exist_ok=True)
        demo_image(rng, shape).save(folder / f"{i:05d}.png")
        if i >= n_train:
            answers.append((f"{i:05d}", shape))
    write_csv_atomic(dest / DEMO_ANSWERS, ("id", "label"), answers)
    return dest
