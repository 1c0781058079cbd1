#!/usr/bin/env python3
"""HW6 training: the uint8 face cache and the engine's GAN step against the course's loop.

Faces: the real anime faces in ../shared/data/hw6 (96 x 96 JPEGs) when present, else the demo
faces; resized to 64 x 64, batch 64, the course's DCGAN (G 5,142,080 and D 2,766,529 weights),
BCE, Adam 1e-4 (0.5, 0.999), n_critic 1.

  reference  the course's way: a Dataset that reads each JPEG (torchvision.io.read_image),
             ToPILImage, Resize((64, 64)), ToTensor, Normalize(0.5, 0.5) every epoch, the
             default collate; a plain loop: D on real and fake, then G
  ours       faces decoded once into the uint8 cache (build time reported apart), batches
             gathered from it (ImageDataset), scaled to [-1, 1] in the step; GanTask's
             training step through Trainer.fit (the engine: logging, per-layer D norms)

  pipeline   images per second the loader delivers alone (no model), 0 and --workers workers
  train      images per second of one training epoch on the first --train-images faces

Usage: python scripts/bench/hw6_train.py [--images 3000] [--train-images 640] [--workers 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common.core.config import load_config  # noqa: E402
from common.core.runtime import set_cpu_threads  # noqa: E402
from common.data.images import ImageDataset, load_images  # noqa: E402
from common.experiments.pipeline import make_trainer  # noqa: E402
from hw.hw6_gan import data as faces  # noqa: E402
from hw.hw6_gan.task import GanTask  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "hw6" / "anime_faces"
SIZE, BATCH = 64, 64


class CourseFaces(Dataset):
    """The course's dataset: decode and resize every item, every epoch."""

    def __init__(self, files):
        import torchvision.transforms as T

        self.files = files
        self.transform = T.Compose([T.ToPILImage(), T.Resize((SIZE, SIZE)), T.ToTensor(),
                                    T.Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))])

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import torchvision

        return self.transform(torchvision.io.read_image(str(self.files[i])))


def course_loader(files, workers):
    return DataLoader(CourseFaces(files), batch_size=BATCH, shuffle=True, num_workers=workers,
                      generator=torch.Generator().manual_seed(0))


def our_setup(files, cache_dir, workers):
    config = load_config(GanTask.schema(), ROOT / "configs" / "hw6_sample.toml", [
        'trainer.device="cpu"', f"trainer.num_workers={workers}", "trainer.print_every_evals=1000",
        f'data.cache_dir="{cache_dir}"', "model.log_d_layers=false"])
    task = GanTask(config)
    array = load_images(files, SIZE, cache_dir=cache_dir).array
    return task, ImageDataset(array, list(range(len(files))))


def rate(n, seconds):
    return n / max(seconds, 1e-9)


def pipeline(files, cache_dir, workers):
    loader = course_loader(files, workers)
    start = time.perf_counter()
    n = sum(len(x) for x in loader)
    course = rate(n, time.perf_counter() - start)
    task, dataset = our_setup(files, cache_dir, workers)
    trainer = make_trainer(task, task.build_model(), None)
    sampler = trainer.sampler(dataset, train=True)
    start = time.perf_counter()
    n = 0
    for batch in trainer.loader(dataset, sampler, epoch=0, train=True):
        x = batch[0].float() / 127.5 - 1.0       # what the training step does
        n += len(x)
    return course, rate(n, time.perf_counter() - start)


def course_epoch(files) -> float:
    """The course's loop, written plainly (the reference)."""
    from hw.hw6_gan.model import DCGANDiscriminator, DCGANGenerator

    torch.manual_seed(2022)
    g, d = DCGANGenerator(), DCGANDiscriminator()
    opt_g = torch.optim.Adam(g.parameters(), 1e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 1e-4, betas=(0.5, 0.999))
    start, n = time.perf_counter(), 0
    for real in course_loader(files, 0):
        z = torch.randn(len(real), 100)
        fake = g(z)
        loss_d = (F.binary_cross_entropy_with_logits(d(real), torch.ones(len(real)))
                  + F.binary_cross_entropy_with_logits(d(fake.detach()),
                                                       torch.zeros(len(real)))) / 2
        d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = F.binary_cross_entropy_with_logits(d(g(torch.randn(len(real), 100))),
                                                    torch.ones(len(real)))
        g.zero_grad()
        loss_g.backward()
        opt_g.step()
        n += len(real)
    return rate(n, time.perf_counter() - start)


def our_epoch(files, cache_dir) -> float:
    task, dataset = our_setup(files, cache_dir, 0)
    torch.manual_seed(2022)
    trainer = make_trainer(task, task.build_model(), None)
    start = time.perf_counter()
    trainer.fit(dataset, None)
    return rate(len(dataset), time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--train-images", type=int, default=640)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    set_cpu_threads(0)
    tmp = Path(tempfile.mkdtemp(prefix="hw6-bench-"))
    try:
        if (REAL / "faces" / "0.jpg").is_file():
            files, source = faces.face_files(REAL)[:args.images], f"real faces in {REAL}"
        else:
            faces.write_demo_data(tmp / "demo", count=args.images)
            files, source = faces.face_files(tmp / "demo"), "demo faces"
        start = time.perf_counter()
        load_images(files, SIZE, cache_dir=tmp / "cache")
        build = time.perf_counter() - start
        print(f"{len(files)} {source}, {SIZE} x {SIZE}, batch {BATCH}; cache built once in "
              f"{build:.2f} s ({rate(len(files), build):.0f} images/s)")
        for workers in sorted({0, args.workers}):
            course, ours = pipeline(files, tmp / "cache", workers)
            print(f"pipeline, {workers} workers: course {course:8.0f} images/s, ours "
                  f"{ours:8.0f} images/s: {ours / course:5.1f}x")
        train_files = files[:args.train_images]
        course = course_epoch(train_files)
        ours = our_epoch(train_files, tmp / "cache")
        print(f"train epoch ({len(train_files)} faces, course DCGAN): course {course:.1f} "
              f"images/s, ours {ours:.1f} images/s: {ours / course:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
