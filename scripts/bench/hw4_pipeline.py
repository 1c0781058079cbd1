#!/usr/bin/env python3
"""HW4 training data pipeline: our packed store against the course's way (torch.load of one
.pt per item, a random 128-frame crop, a pad collate), same batch size and worker count.

A synthetic Dataset/ is written first: `--utterances` files whose lengths follow the real
testdata.json's mel_len distribution (../shared, if present; else a log-normal fitted to the
course's facts: median 541 frames). The real training set has 56,666 utterances (about 6 GB);
a smaller --utterances keeps the disk and time in bounds and the per-item costs the same.
Timing starts after 2 batches per worker
(worker start-up is paid once per epoch). Each side runs in its own process, so its peak
memory (max RSS of the main process, plus the largest worker's times the worker count; file
pages of the memory-mapped pack count as they are touched) is its own. Prints items per
second of each, their ratio (target >= 5x) and peak memory; the pack's one-time build too.
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
REAL_TEST = ROOT.parent / "shared" / "data" / "hw4" / "2021" / "Dataset" / "testdata.json"


def write_dataset(dest: Path, n: int, speakers: int = 600, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    if REAL_TEST.is_file():
        real = [u["mel_len"] for u in json.loads(REAL_TEST.read_text())["utterances"]]
        lengths = rng.choice(real, n)
    else:
        lengths = np.clip(rng.lognormal(np.log(541), 0.5, n), 91, 7193).astype(int)
    dest.mkdir(parents=True, exist_ok=True)
    names = [f"id{i:05d}" for i in range(speakers)]
    meta = {"n_mels": 40, "speakers": {s: [] for s in names}}
    for i, length in enumerate(lengths):
        path = f"uttr-{i:032x}.pt"
        torch.save(torch.randn(int(length), 40), dest / path)
        meta["speakers"][names[i % speakers]].append({"feature_path": path,
                                                      "mel_len": int(length)})
    (dest / "metadata.json").write_text(json.dumps(meta))
    (dest / "testdata.json").write_text(json.dumps({"n_mels": 40, "utterances": [
        {"feature_path": f"uttr-{0:032x}.pt", "mel_len": int(lengths[0])}]}))
    (dest / "mapping.json").write_text(json.dumps({
        "speaker2id": {s: i for i, s in enumerate(names)},
        "id2speaker": {str(i): s for i, s in enumerate(names)}}))


class CourseDataset(torch.utils.data.Dataset):
    """The course's way: one torch.load per item, a random crop of 128 frames."""

    def __init__(self, root: Path, items: list[tuple[str, int]]):
        self.root, self.items = root, items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        mel = torch.load(self.root / path, weights_only=True)
        if len(mel) > 128:
            start = np.random.randint(0, len(mel) - 128)
            mel = mel[start:start + 128]
        return mel, label


def course_collate(batch):
    mels, labels = zip(*batch, strict=True)
    x = torch.nn.utils.rnn.pad_sequence(mels, batch_first=True, padding_value=-20)
    return x, torch.tensor(labels)


def run_side(mode: str, root: Path, batches: int, workers: int, cache: Path) -> dict:
    from common.data.loading import WORKER_SHARING, build_loader
    from hw.hw4_speaker import data as speech
    from hw.hw4_speaker.data import Utterances

    utts = speech.load_train(root)
    start = time.perf_counter()
    if mode.startswith("course"):
        if workers and mode == "course-shared-names":  # our loader's sharing, for fairness
            torch.multiprocessing.set_sharing_strategy(WORKER_SHARING)
        ds = CourseDataset(root, list(zip(utts.paths, utts.labels.tolist(), strict=True)))
        loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, num_workers=workers,
                                             collate_fn=course_collate, drop_last=True)
        setup = 0.0
    else:
        store = speech.pack(utts, cache_dir=cache)
        setup = time.perf_counter() - start
        ds = Utterances(store, np.arange(len(utts)), utts.labels, crop=128, seed=0)
        loader = build_loader(ds, 32, shuffle=True, num_workers=workers)
    # the clock starts once every worker has delivered (worker start-up is paid once per
    # epoch of ~1,770 batches in real training, not per 150)
    warmup = 2 * max(workers, 1)
    n, start = 0, time.perf_counter()
    for i, (x, *_rest) in enumerate(loader):
        if i == warmup - 1:
            start = time.perf_counter()
        elif i >= warmup:
            n += len(x)
        if i + 1 >= batches + warmup:
            break
    elapsed = time.perf_counter() - start
    del loader  # ends the workers, so that their peak memory is counted below
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"items_per_s": n / elapsed, "setup_s": setup,
            "max_rss_mb": (own + workers * worker) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=8000)
    parser.add_argument("--batches", type=int, default=600)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--dir", default="/tmp/hw4-bench")
    parser.add_argument("--side", choices=("course", "course-shared-names", "ours"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = Path(args.dir) / "Dataset"
    if args.side:
        torch.set_num_threads(1)
        print(json.dumps(run_side(args.side, root, args.batches, args.workers,
                                  Path(args.dir) / "cache")))
        return
    if not (root / "metadata.json").is_file():
        start = time.perf_counter()
        write_dataset(root, args.utterances)
        took = time.perf_counter() - start
        print(f"wrote {args.utterances} synthetic utterances in {took:.0f} s")
    results = {}
    sides = ["course", "course-shared-names"] if args.workers else ["course"]
    for side in [*sides, "ours", "ours"]:  # the second "ours" reuses the built pack
        out = subprocess.run([sys.executable, __file__, "--side", side, "--dir", args.dir,
                              "--batches", str(args.batches), "--workers", str(args.workers)],
                             capture_output=True, text=True, check=True)
        results.setdefault(side, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    course, built, reused = results["course"][0], results["ours"][0], results["ours"][1]
    print(f"{args.utterances} utterances, batch 32, 128-frame crops, {args.workers} worker(s), "
          f"{args.batches} batches")
    print(f"course (torch.load per item): {course['items_per_s']:8.0f} items/s, "
          f"peak {course['max_rss_mb']:.0f} MB")
    ratio = reused["items_per_s"] / course["items_per_s"]
    print(f"ours (packed, memory-mapped): {reused['items_per_s']:8.0f} items/s, "
          f"peak {reused['max_rss_mb']:.0f} MB; ratio {ratio:.1f}x")
    if args.workers:  # the course's way handing batches over as our loader does
        named = results["course-shared-names"][0]
        print(f"course, shared by file name: {named['items_per_s']:8.0f} items/s, "
              f"peak {named['max_rss_mb']:.0f} MB; ours / this "
              f"{reused['items_per_s'] / named['items_per_s']:.1f}x")
    print(f"one-time pack build: {built['setup_s']:.1f} s; reload: {reused['setup_s']:.2f} s")


if __name__ == "__main__":
    main()
