#!/usr/bin/env python3
"""HW3 image pipeline: the uint8 cache against decoding the JPEGs with PIL every epoch.

Writes N synthetic photos of the real data's sizes (512x512 and 512x384, noisy enough that the
JPEGs weigh about what the real ones do), then, at 128x128 with the same augmentations
(RandomResizedCrop, flip, TrivialAugmentWide) and batch 64:

  reference  the course's way: a per-item Dataset that opens the JPEG with PIL, Resize((128, 128)),
             the augmentations, ToTensor; the default collate
  ours       common.data.images: decoded once into a uint8 cache (build time reported apart), then
             per-item augmentation from the cache (ImageDataset, the HW3 task's transform)

  pipeline   images per second delivered by the loader alone (no model), for 0 and 2 workers
  train      one training epoch of the course's 5-block CNN, no augmentation (the sample)
             on the first --train-images images, both ways

Usage: python scripts/bench/hw3_pipeline.py [--images 1024] [--train-images 256]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common.core.config import load_config  # noqa: E402
from common.core.runtime import set_cpu_threads  # noqa: E402
from common.data.images import ImageDataset, image_files, load_images  # noqa: E402
from common.data.loading import build_loader  # noqa: E402
from hw.hw3_food.data import demo_image, label_of  # noqa: E402
from hw.hw3_food.model import course_cnn  # noqa: E402
from hw.hw3_food.task import FoodTask  # noqa: E402

SIZE, BATCH = 128, 64
REAL_SAMPLE = ROOT.parent / "shared" / "data" / "hw3" / "food_sample"


def write_photos(dest: Path, n: int) -> float:
    """n JPEGs of 512x512 (3 in 4) or 512x384, a drawn shape under photo-like noise; returns
    the mean file size in KiB."""
    rng = np.random.default_rng(0)
    total = 0
    for i in range(n):
        h = 512 if i % 4 else 384
        small = Image.fromarray(demo_image(rng, i % 11)).resize((512, h), Image.BICUBIC)
        arr = np.asarray(small, dtype=np.float32) + rng.normal(0, 6, (h, 512, 3))
        path = dest / f"{i % 11}_{i // 11}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=85)
        total += path.stat().st_size
    return total / n / 1024


def augmentations() -> list:
    return [v2.RandomResizedCrop(SIZE, scale=(0.25, 1.0), antialias=True),
            v2.RandomHorizontalFlip(), v2.TrivialAugmentWide()]


class CourseDataset(Dataset):
    """The course's FoodDataset: PIL decode and transform per item, every epoch."""

    def __init__(self, files: list[Path], tfm):
        self.files, self.tfm = files, tfm

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        im = Image.open(self.files[i])
        return self.tfm(im), label_of(self.files[i])


def reference_dataset(files, augment: bool) -> CourseDataset:
    steps = [v2.Resize((SIZE, SIZE))] + (augmentations() if augment else [])
    return CourseDataset(files, v2.Compose([*steps, v2.ToImage(),
                                            v2.ToDtype(torch.float32, scale=True)]))


def our_dataset(cached, files, augment: bool) -> ImageDataset:
    labels = torch.tensor([label_of(f) for f in files])
    tfm = v2.Compose([Image.fromarray, *augmentations(), v2.PILToTensor()]) if augment else None
    return ImageDataset(cached.array, np.arange(len(files)), labels, transform=tfm)


def loader(ds, workers: int) -> DataLoader:
    if isinstance(ds, ImageDataset):  # whole batches of indices, no collate
        return build_loader(ds, BATCH, shuffle=True, num_workers=workers)
    return DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers)


def images_per_second(ds, workers: int) -> float:
    start, n = time.perf_counter(), 0
    for x, _ in loader(ds, workers):
        n += len(x)
    return n / (time.perf_counter() - start)


def train_epoch(ds, workers: int, scale: float) -> float:
    torch.manual_seed(0)
    model = course_cnn(None, image_size=SIZE, num_classes=11)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=1e-5)
    start = time.perf_counter()
    for x, y in loader(ds, workers):
        loss = nn.functional.cross_entropy(model(x.float() * scale), y)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10)
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--train-images", type=int, default=256)
    args = ap.parse_args()
    set_cpu_threads(0)
    tmp = Path(tempfile.mkdtemp(prefix="hw3bench-"))
    try:
        kib = write_photos(tmp, args.images)
        files = image_files(tmp)
        real = [p.stat().st_size / 1024 for p in image_files(REAL_SAMPLE)] \
            if REAL_SAMPLE.is_dir() else []
        print(f"{len(files)} synthetic JPEGs, 512x512 / 512x384, mean {kib:.0f} KiB"
              + (f" (the real sample photos: median {np.median(real):.0f} KiB)" if real else ""))
        start = time.perf_counter()
        cached = load_images(files, SIZE, cache_dir=tmp / "cache")
        build = time.perf_counter() - start
        start = time.perf_counter()
        load_images(files, SIZE, cache_dir=tmp / "cache")
        reload = time.perf_counter() - start
        real_mib = 16643 * SIZE * SIZE * 3 / 2**20
        print(f"cache build {build:.1f} s ({len(files) / build:.0f} img/s, threads), reload "
              f"{reload * 1e3:.0f} ms; memory {cached.nbytes / 2**20:.1f} MiB here, "
              f"{real_mib:.0f} MiB for the real 16,643 images at {SIZE}x{SIZE}")
        for workers in (0, 2):
            ref = images_per_second(reference_dataset(files, True), workers)
            ours = images_per_second(our_dataset(cached, files, True), workers)
            print(f"pipeline, augmented, {workers} workers: ours {ours:.0f} img/s, reference "
                  f"{ref:.0f} img/s: ratio {ours / ref:.2f}x")
        sub = files[:args.train_images]
        sub_cache = load_images(sub, SIZE, cache_dir=tmp / "cache")
        ref_t = train_epoch(reference_dataset(sub, False), 0, 1.0)
        ours_t = train_epoch(our_dataset(sub_cache, sub, False), 0, 1 / 255)
        print(f"train epoch, sample CNN, {len(sub)} images: ours {ours_t:.1f} s, reference "
              f"{ref_t:.1f} s: ratio {ours_t / ref_t:.2f} (<= 1: no slower)")
        task = FoodTask(load_config(FoodTask.schema(), ROOT / "configs" / "hw3_sample.toml"))
        n_params = sum(p.numel() for p in task.build_model().parameters())
        print(f"(sample CNN parameters: {n_params:,})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
