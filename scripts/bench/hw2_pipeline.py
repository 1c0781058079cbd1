#!/usr/bin/env python3
"""HW2 data pipeline: our frame windows against the course's way, at the real data's scale.

Synthesises 4286 utterances of 139-998 frames (triangular, mean about 617: about 2.64 M frames
of 39 MFCCs, as in libriphone's training set), split 80/20 by utterance, and with
concat_nframes = n measures, each part in a fresh process so that peak memory (max RSS) is its
own:

  ours       one (frames, 39) tensor + offsets; windows gathered per batch (FrameWindows) by a
             batch sampler; no collate
  reference  the course's way: every window materialised into a preallocated 3,000,000 x 39n
             float32 matrix, then a per-item Dataset with the default collate

  pipeline   every training batch of one epoch produced, no model (the reference's matrix
             build included)
  train      one training epoch of the course MLP (39n -> 256 -> 256 -> 41, AdamW, batch 512)

Usage: python scripts/bench/hw2_pipeline.py [--n 21] [--parts pipeline,train] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common.core.runtime import set_cpu_threads  # noqa: E402
from common.data.loading import build_loader  # noqa: E402
from common.engine.models import build_mlp  # noqa: E402
from hw.hw2_phoneme.data import FEAT_DIM, N_CLASSES, Frames, FrameWindows  # noqa: E402
from hw.hw2_phoneme.task import split_utterances  # noqa: E402

N_UTT = 4286
BATCH = 512


def synthetic_lengths(rng: np.random.Generator) -> np.ndarray:
    return np.round(rng.triangular(139, 714, 998, N_UTT)).astype(np.int64)


def synthetic_frames(seed: int = 0) -> Frames:
    rng = np.random.default_rng(seed)
    lengths = synthetic_lengths(rng)
    offsets = torch.zeros(N_UTT + 1, dtype=torch.int64)
    offsets[1:] = torch.from_numpy(np.cumsum(lengths))
    total = int(offsets[-1])
    feats = torch.from_numpy(rng.standard_normal((total, FEAT_DIM), dtype=np.float32))
    labels = torch.from_numpy(rng.integers(0, N_CLASSES, total))
    return Frames([f"u{i}" for i in range(N_UTT)], feats, offsets, labels, Path("."))


def train_frames(frames: Frames) -> np.ndarray:
    train_utt, _ = split_utterances(N_UTT, 0.2, 1337)
    return train_utt, frames.frames_of(train_utt)


# --------------------------------------------------------------------------- the course's way
def course_matrix(frames: Frames, utterances: np.ndarray, n: int):
    """Materialise every window: a preallocated 3,000,000 x 39n matrix filled per utterance."""
    k = n // 2
    x = torch.empty(3_000_000, FEAT_DIM * n)
    y = torch.empty(3_000_000, dtype=torch.long)
    row = 0
    for u in utterances:
        start, end = int(frames.offsets[u]), int(frames.offsets[u + 1])
        feat, length = frames.feats[start:end], end - start
        t = torch.arange(length)
        for j, shift in enumerate(range(-k, k + 1)):
            x[row:row + length, j * FEAT_DIM:(j + 1) * FEAT_DIM] = \
                feat[(t + shift).clamp(0, length - 1)]
        y[row:row + length] = frames.labels[start:end]
        row += length
    return x[:row], y[:row]


class PerItem(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def batches(way: str, frames: Frames, n: int):
    utterances, idx = train_frames(frames)
    if way == "ours":
        return build_loader(FrameWindows(frames, idx, n), BATCH, shuffle=True, seed=0)
    x, y = course_matrix(frames, utterances, n)
    return DataLoader(PerItem(x, y), batch_size=BATCH, shuffle=True)


def max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run_part(way: str, part: str, n: int) -> dict:
    baseline = max_rss()  # the interpreter with torch imported, before any data
    frames = synthetic_frames()
    start = time.perf_counter()
    loader = batches(way, frames, n)
    count = 0
    if part == "pipeline":
        for x, _ in loader:
            count += len(x)
    else:
        torch.manual_seed(0)
        model = build_mlp(FEAT_DIM * n, [256, 256], N_CLASSES)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            count += len(x)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_bytes": max_rss(), "baseline_bytes": baseline,
            "frames": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=21)
    parser.add_argument("--parts", default="pipeline,train")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--child", nargs=2, metavar=("WAY", "PART"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    set_cpu_threads(args.threads)
    if args.child:
        print(json.dumps(run_part(*args.child, args.n)))
        return
    # the parent allocates no data: a child inherits its parent's peak RSS
    lengths = synthetic_lengths(np.random.default_rng(0))
    train_utt, _ = split_utterances(N_UTT, 0.2, 1337)
    print(f"synthetic libriphone: {N_UTT} utterances, {lengths.sum():,} frames "
          f"({lengths.sum() * FEAT_DIM * 4 / 2**20:.0f} MiB of features), training part "
          f"{lengths[train_utt].sum():,} frames; n = {args.n}, batch {BATCH}")
    for part in args.parts.split(","):
        result = {}
        for way in ("ours", "reference"):
            out = subprocess.run([sys.executable, __file__, "--n", str(args.n), "--threads",
                                  str(args.threads), "--child", way, part],
                                 capture_output=True, text=True, check=True)
            result[way] = json.loads(out.stdout.strip().splitlines()[-1])
            r = result[way]
            print(f"  {part:8s} {way:9s} {r['seconds']:7.1f} s  peak memory "
                  f"{r['peak_bytes'] / 2**30:5.2f} GiB, of which the torch import "
                  f"{r['baseline_bytes'] / 2**30:4.2f} GiB  ({r['frames']:,} frames)", flush=True)
        o, r = result["ours"], result["reference"]
        above = (o["peak_bytes"] - o["baseline_bytes"]) / (r["peak_bytes"] - r["baseline_bytes"])
        print(f"  {part:8s} time ratio ours/reference {o['seconds'] / r['seconds']:.3f}   "
              f"peak memory ratio {o['peak_bytes'] / r['peak_bytes']:.3f} (whole process), "
              f"{above:.3f} (above the import baseline)", flush=True)


if __name__ == "__main__":
    main()
