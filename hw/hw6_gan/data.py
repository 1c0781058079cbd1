"""HW6 files: the course's flat folder of faces (`faces/0.jpg` ... `faces/71313.jpg`, 96 x 96
RGB JPEGs), found in --data, --data/faces or one level further down, decoded and resized once
into the common uint8 image cache; and procedural anime-style demo faces in the same layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.core.errors import UserError
from common.data.demo_faces import demo_face
from common.data.images import image_files

FACES = "faces"


def _numeric(path: Path) -> tuple[int, str]:
    return (int(path.stem), "") if path.stem.isdigit() else (1 << 62, path.stem)


def find_faces(data_dir: str | Path) -> Path:
    """The folder of face images: data_dir/faces, data_dir itself, or <sub>/faces below it."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: not a folder; pass --data, the folder holding faces/")
    for cand in (data_dir / FACES, data_dir, *sorted(data_dir.glob(f"*/{FACES}"))):
        if cand.is_dir() and image_files(cand):
            return cand
    archives = sorted(data_dir.glob("*.zip"))
    advice = f"extract {archives[0]} first" if archives else \
        "download faces.zip (Hugging Face dataset LeoFeng/MLHW_6) and extract it here"
    raise UserError(f"{data_dir}: no faces/ folder of images here or one level down; {advice}")


def face_files(data_dir: str | Path) -> list[Path]:
    """The images of the faces folder, in numeric order (0.jpg, 1.jpg, ..., 10.jpg)."""
    return sorted(image_files(find_faces(data_dir)), key=_numeric)


# --------------------------------------------------------------------------- demo faces
def write_demo_data(dest: Path, count: int = 2000, seed: int = 6) -> Path:
    """dest/faces/0.jpg ... (count - 1).jpg, 96 x 96 RGB JPEGs."""
    rng = np.random.default_rng(seed)
    folder = Path(dest) / FACES
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        demo_face(rng).save(folder / f"{i}.jpg", quality=90)
    return Path(dest)
