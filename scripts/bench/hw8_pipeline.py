#!/usr/bin/env python3
"""HW8 training data pipeline at the real size: our memory-mapped uint8 array against the
whole array held in memory, as the course does and as a float tensor.

A synthetic trainingset.npy of (100000, 64, 64, 3) uint8 (1.2 GB, the real shape) is written
once to --dir. Each side runs one shuffled training epoch (batch 256, the batches turned into
float images in [-1, 1] as the model sees them, no model) in its own process:
- ours: `hw8` reading, np.load(mmap_mode="r"), `ImageDataset` gathering a batch of rows at once;
- course: np.load of the whole array, a per-item float transform, DataLoader's default collate;
- float: the whole array as one float32 tensor (4.9 GB) in memory, per-item indexing.
Prints images per second (the median of --repeats runs, sides in turn), the ratio to ours,
and peak memory: max RSS (file pages of the
memory map count as they are touched; the kernel can drop them) and the peak of anonymous
memory (what the process itself holds), polled every 20 ms. Goal: ours no slower, peak at most
a quarter of the float side's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
SHAPE = (100000, 64, 64, 3)


def write_array(path: Path, n: int) -> None:
    """Faces-sized uint8 images: a few random base images plus per-image noise, in chunks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.uint8,
                                    shape=(n, *SHAPE[1:]))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (16, *SHAPE[1:]), dtype=np.uint8)
    for start in range(0, n, 5000):
        stop = min(n, start + 5000)
        noise = rng.integers(0, 32, (stop - start, *SHAPE[1:]), dtype=np.uint8)
        out[start:stop] = base[rng.integers(0, 16, stop - start)] + noise
    out.flush()
    del out
    path.with_suffix(".tmp.npy").rename(path)


class PeakAnon:
    """The peak of RssAnon in /proc/self/status, polled."""

    def __init__(self):
        self.peak, self.stop = 0, False
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self):
        while not self.stop:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak = max(self.peak, int(line.split()[1]))
            time.sleep(0.02)


class CourseDataset(torch.utils.data.Dataset):
    """The course's way: the array in memory, each item permuted and turned to float."""

    def __init__(self, tensors: torch.Tensor):
        self.tensors = tensors.permute(0, 3, 1, 2) if tensors.shape[-1] == 3 else tensors

    def __len__(self):
        return len(self.tensors)

    def __getitem__(self, i):
        return 2.0 * self.tensors[i].to(torch.float32) / 255.0 - 1.0


def run_side(side: str, path: Path, batch: int) -> dict:
    from common.data.images import ImageDataset, signed_pixels
    from common.data.loading import build_loader
    from hw.hw8_anomaly import data

    anon = PeakAnon()
    start = time.perf_counter()
    if side == "ours":
        faces = data.load_train(path.parent)
        loader = build_loader(ImageDataset(faces.array, np.arange(len(faces.ids))), batch,
                              shuffle=True, seed=0)
        prepare = signed_pixels
    elif side == "course":
        dataset = CourseDataset(torch.from_numpy(np.load(path, allow_pickle=True)))
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True)
        prepare = torch.nn.Identity()
    else:
        whole = torch.from_numpy(np.load(path)).permute(0, 3, 1, 2).float()  # 4.9 GB
        whole.mul_(1 / 127.5).sub_(1.0)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(whole),
                                             batch_size=batch, shuffle=True)
        prepare = torch.nn.Identity()
    setup = time.perf_counter() - start
    n, total, start = 0, 0.0, time.perf_counter()
    for item in loader:
        x = prepare(item[0] if isinstance(item, (list, tuple)) else item)
        total += float(x[:, 0, 0, 0].sum())   # touch the batch
        n += len(x)
    elapsed = time.perf_counter() - start
    anon.stop = True
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text()
               .splitlines() if line.startswith("VmHWM:"))
    return {"images_per_s": n / elapsed, "images": n, "setup_s": setup,
            "max_rss_mb": hwm / 1024, "peak_anon_mb": anon.peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=SHAPE[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dir", default="/tmp/hw8-bench")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--side", choices=("ours", "course", "float"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    path = Path(args.dir) / "data" / "trainingset.npy"
    if args.side:
        torch.set_num_threads(1)
        print(json.dumps(run_side(args.side, path, args.batch)))
        return
    if not path.is_file() or np.load(path, mmap_mode="r").shape[0] != args.images:
        start = time.perf_counter()
        write_array(path, args.images)
        print(f"wrote {path} {(args.images, *SHAPE[1:])} uint8 in "
              f"{time.perf_counter() - start:.0f} s")
    (path.parent / "testingset.npy").exists() or np.save(path.parent / "testingset.npy",
                                                         np.zeros((1, *SHAPE[1:]), np.uint8))
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):   # sides in turn, so that a busy spell hits all of them
        for side in ("ours", "course", "float"):
            out = subprocess.run([sys.executable, __file__, "--side", side, "--dir", args.dir,
                                  "--batch", str(args.batch)], capture_output=True, text=True,
                                 check=True)
            runs.setdefault(side, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    results = {side: {key: float(np.median([r[key] for r in rs])) for key in rs[0]}
               for side, rs in runs.items()}   # medians over the repeats
    ours = results["ours"]
    print(f"{args.images} images 64x64x3, one shuffled epoch, batch {args.batch}, no workers, "
          f"median of {args.repeats} runs per side")
    for side, what in (("ours", "memory-mapped uint8, batched gather"),
                       ("course", "np.load whole, per-item float"),
                       ("float", "whole array as a float tensor")):
        r = results[side]
        print(f"{side:6} ({what}): {r['images_per_s']:8.0f} images/s "
              f"(ours / this {ours['images_per_s'] / r['images_per_s']:.2f}x), "
              f"setup {r['setup_s']:.1f} s, peak RSS {r['max_rss_mb']:.0f} MB, "
              f"peak anonymous {r['peak_anon_mb']:.0f} MB")
    for side in ("course", "float"):
        print(f"ours / {side} peak: RSS {ours['max_rss_mb'] / results[side]['max_rss_mb']:.2f}, "
              f"anonymous {ours['peak_anon_mb'] / results[side]['peak_anon_mb']:.2f}")


if __name__ == "__main__":
    main()
