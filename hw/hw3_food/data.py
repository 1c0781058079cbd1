"""Food-11 files: training/ and validation/ (`<label>_<index>.jpg`), test/ (`0001.jpg` ...),
decoded once into the common uint8 image cache; and the synthetic demo set in the same layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.core.errors import UserError
from common.core.io import write_csv_atomic
from common.data.images import image_files, load_images
from common.data.loading import find_data_root

N_CLASSES = 11
FOLDERS = ("training", "validation", "test")
DEMO_TEST_LABELS = "demo_test_labels.csv"
CLASS_NAMES = ("Bread", "Dairy product", "Dessert", "Egg", "Fried food", "Meat", "Noodles/Pasta",
               "Rice", "Seafood", "Soup", "Vegetable/Fruit")


def find_root(data_dir: Path) -> Path:
    """The folder holding training/ and test/: data_dir itself, food11/ or food11/food11/
    (Kaggle: /kaggle/input/ml2022spring-hw3b/food11)."""
    return find_data_root(data_dir, "food11", ("training", "test"), "training/ or test/ folder")


def label_of(path: Path) -> int:
    """The integer before the first `_` of the file name (`8_806.jpg` -> 8)."""
    head = path.name.split("_", 1)[0]
    if "_" not in path.name or not head.isdigit() or int(head) >= N_CLASSES:
        raise UserError(f"{path}: a training or validation image must be named <label>_<index>"
                        f".jpg with a label in 0..{N_CLASSES - 1}; rename or remove it")
    return int(head)


def test_id_order(files: list[Path]) -> list[Path]:
    """Test files in numeric order of their stems (0001 ... 3347)."""
    for f in files:
        if not f.stem.isdigit():
            raise UserError(f"{f}: a test image must be named by its number (0001.jpg); "
                            "rename or remove it")
    return sorted(files, key=lambda f: int(f.stem))


@dataclass
class FoodImages:
    """Images of one or more folders, decoded: `array` (N, S, S, 3) uint8 holds every file;
    `rows` the usable ones (unreadable files skipped), with their labels, source folder index
    (0 training, 1 validation) and ids (file stems)."""

    array: np.ndarray
    rows: np.ndarray
    labels: torch.Tensor | None
    folder: np.ndarray
    ids: list[str]
    cache_bytes: int

    def __len__(self) -> int:
        return len(self.rows)


def _folder_files(root: Path, name: str, required: bool) -> list[Path]:
    folder = root / name
    if not folder.is_dir():
        if required:
            raise UserError(f"{folder}: missing; food11/ needs training/, validation/ and test/")
        return []
    files = image_files(folder)
    if required and not files:
        raise UserError(f"{folder}: holds no .jpg images")
    return files


def load_folders(data_dir: Path, names: tuple[str, ...], *, size: int, resize: str,
                 cache_dir: str, skip_bad: bool, workers: int = 0) -> FoodImages:
    """Decode the given folders (in order) through the cache. Labelled folders need
    `<label>_<index>` names; test/ is ordered by number. validation/ may be absent."""
    root = find_root(data_dir)
    files, folder = [], []
    for k, name in enumerate(names):
        found = _folder_files(root, name, required=name != "validation")
        if name == "test":
            found = test_id_order(found)
        files += found
        folder += [k] * len(found)
    labels = None if "test" in names else np.array([label_of(f) for f in files], dtype=np.int64)
    cached = load_images(files, size, resize=resize, cache_dir=cache_dir or None,
                         skip_bad=skip_bad, workers=workers, desc="/".join(names))
    keep = np.array([i for i in range(len(files)) if i not in cached.bad], dtype=np.int64)
    if "test" in names and cached.bad:  # every test id needs a prediction: keep, black image
        keep = np.arange(len(files))
    if not len(keep):
        raise UserError(f"{root}: no readable images in {', '.join(names)}")
    return FoodImages(
        array=cached.array, rows=keep,
        labels=None if labels is None else torch.from_numpy(labels[keep]),
        folder=np.asarray(folder, dtype=np.int64)[keep], ids=[files[i].stem for i in keep],
        cache_bytes=cached.nbytes)


# --- demo data ------------------------------------------------------------------------------
def _shape_mask(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Class `cls`'s shape in the object's own frame (unit radius, already rotated)."""
    r = np.hypot(u, v)
    box = np.maximum(abs(u), abs(v))
    if cls == 0:                                             # disc
        return r < 1
    if cls == 1:                                             # ring
        return (r < 1) & (r > 0.6)
    if cls == 2:                                             # square
        return box < 0.8
    if cls == 3:                                             # square outline
        return (box < 0.8) & (box > 0.5)
    if cls == 4:                                             # triangle
        return (v < 0.5) & (v > -1 + 1.732 * abs(u))
    if cls == 5:                                             # plus
        return ((abs(u) < 0.25) & (abs(v) < 0.9)) | ((abs(v) < 0.25) & (abs(u) < 0.9))
    if cls == 6:                                             # striped disc
        return (r < 1) & (np.sin(v * np.pi * 2.5) > 0)
    if cls == 7:                                             # checkerboard square
        return (box < 0.8) & ((np.floor(u * 2.5) + np.floor(v * 2.5)) % 2 == 0)
    if cls == 8:                                             # two discs
        return (np.hypot(u - 0.5, v) < 0.42) | (np.hypot(u + 0.5, v) < 0.42)
    if cls == 9:                                             # five-pointed star
        return r < 0.55 + 0.4 * np.cos(5 * np.arctan2(v, u))
    return (r < 1) & (np.hypot(u - 0.45, v) > 0.8)          # crescent


PALETTE = np.array([[200, 60, 60], [60, 160, 60], [60, 60, 200], [200, 200, 50], [190, 60, 190],
                    [50, 190, 190], [240, 140, 40], [120, 60, 20], [140, 140, 140],
                    [30, 30, 30], [230, 230, 230]], dtype=np.float64)


def demo_image(rng: np.random.Generator, cls: int) -> np.ndarray:
    """One procedurally drawn RGB image of class `cls`: a randomly placed, scaled and rotated
    shape, coloured near its class's palette colour, on a noisy gradient background with a
    few distracting blobs."""
    h, w = (int(x) for x in rng.integers(72, 200, size=2))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(40, 215, size=3)
    slope = rng.normal(0, 40, size=(2, 3))
    img = base + slope[0] * (y / h - 0.5)[..., None] + slope[1] * (x / w - 0.5)[..., None]
    img = img + rng.normal(0, 12, size=(h, w, 3))
    for _ in range(int(rng.integers(0, 4))):                 # distractor blobs
        cy, cx, rad = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.03, 0.07) * min(h, w)
        img[np.hypot(y - cy, x - cx) < rad] = rng.uniform(0, 255, size=3)
    radius = rng.uniform(0.22, 0.42) * min(h, w)
    cy = rng.uniform(radius, h - radius)
    cx = rng.uniform(radius, w - radius)
    angle = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = (y - cy) / radius, (x - cx) / radius
    mask = _shape_mask(cls, c * dx + s * dy, -s * dx + c * dy)
    colour = np.clip(PALETTE[cls] + rng.normal(0, 40, size=3), 0, 255)  # a hint, not a key
    while np.abs(colour - base).sum() < 120:                 # keep the shape visible
        base = rng.uniform(40, 215, size=3)
        img = img - img.mean((0, 1)) + base
    img[mask] = colour + rng.normal(0, 10, size=(int(mask.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_demo_data(dest: Path, per_class: tuple[int, int, int] = (40, 15, 10),
                    seed: int = 0) -> Path:
    """A deterministic synthetic food11/ in the real layout: training/ and validation/ named
    `<label>_<index>.jpg` (indices contiguous per class), test/ `0001.jpg` ... in shuffled
    class order; JPEGs of varying sizes and qualities; and demo_test_labels.csv beside food11/."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(dest) / "food11"
    test_classes = rng.permutation(np.repeat(np.arange(N_CLASSES), per_class[2]))
    for name, count in zip(FOLDERS[:2], per_class[:2], strict=True):
        (root / name).mkdir(parents=True, exist_ok=True)
        for cls in range(N_CLASSES):
            for i in range(count):
                Image.fromarray(demo_image(rng, cls)).save(
                    root / name / f"{cls}_{i}.jpg", quality=int(rng.integers(75, 96)))
    (root / "test").mkdir(parents=True, exist_ok=True)
    for i, cls in enumerate(test_classes, 1):
        Image.fromarray(demo_image(rng, int(cls))).save(
            root / "test" / f"{i:04d}.jpg", quality=int(rng.integers(75, 96)))
    # the demo's answer key, beside food11/ (the real data has none): scores test predictions
    write_csv_atomic(Path(dest) / DEMO_TEST_LABELS, ("Id", "Category"),
                     ((f"{i:04d}", int(c)) for i, c in enumerate(test_classes, 1)))
    return Path(dest)
