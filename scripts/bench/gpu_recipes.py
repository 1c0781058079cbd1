#!/usr/bin/env python3
"""The GPU recipes (HW2 BiLSTM, HW3, HW4, HW6 DCGAN and WGAN-GP, HW8) through the engine.

Each recipe is its real config (configs/<name>.toml) on the homework's own synthetic demo data,
read through the homework's own readers and datasets, so every item has the recipe's real shape
(Food-11 crops of the cache, mel segments of the recipe's length, 64 x 64 faces) and every batch
the recipe's size; only the number of items is small, and the projection scales to the real
count (HOMEWORKS.md). Per variant (AMP on / off, channels_last on / off where the model is a
convolutional image model) it builds the task, the model and Trainer exactly as `train` does,
runs a warm-up then a timed window of updates with Trainer.fit, and prints:

  upd/s, items/s   the timed window (fit with the validation split left out)
  load %           the data loader alone over the same batches, as a share of the update time
  peak MiB         torch.cuda.max_memory_allocated (CUDA only)
  eval items/s     Trainer.evaluate over validation batches
  projected h      epochs x real train items / items/s + epochs x real valid items / eval rate

AMP and channels_last act on CUDA only (the engine's rule): on the CPU the variants run the same
code and the numbers say nothing about them. `--tiny` shrinks batches and windows for a CPU smoke
run (the test suite's); its projection is of the tiny run, not the recipe.

Usage: python scripts/bench/gpu_recipes.py [--only hw3 hw6-dcgan ...] [--warmup 5] [--steps 20]
                                           [--tiny] [--device auto]
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common.config import load_config  # noqa: E402
from common.pipeline import make_trainer  # noqa: E402
from common.runtime import seed_everything, set_cpu_threads  # noqa: E402
from common.trainer import Callback  # noqa: E402
from hw import TASKS  # noqa: E402


@dataclass(frozen=True)
class Recipe:
    hw: str                 # the CLI name
    config: str             # configs/<config>.toml
    real_items: int         # labelled items of the real data (train + valid), HOMEWORKS.md
    demo: dict = field(default_factory=dict)  # small sizes for the demo writer
    images: bool = False    # a convolutional image model: channels_last applies


RECIPES = {
    "hw2": Recipe("hw2", "hw2", 2116368 + 527790, {"n_train": 30, "n_test": 5}),
    "hw3": Recipe("hw3", "hw3", 9866 + 3430, {"per_class": (6, 3, 2)}, images=True),
    "hw4": Recipe("hw4", "hw4", 56666),
    "hw6-dcgan": Recipe("hw6", "hw6", 71314, {"count": 160}, images=True),
    "hw6-wgangp": Recipe("hw6", "hw6_wgangp", 71314, {"count": 160}, images=True),
    "hw8": Recipe("hw8", "hw8", 100000, {"n_train": 400, "n_normal": 20, "n_anomalies": 20}),
}


def write_demo(recipe: Recipe, dest: Path) -> Path:
    """The homework's demo data, smaller where its writer takes sizes."""
    task_cls = TASKS[recipe.hw]()
    if recipe.demo:
        module = sys.modules[task_cls.__module__.rsplit(".", 1)[0] + ".data"]
        return module.write_demo_data(dest, **recipe.demo)
    return task_cls.write_demo_data(dest)


class StepClock(Callback):
    """The time at the end of every update."""

    def __init__(self):
        self.times: list[float] = []

    def on_step_end(self, trainer) -> None:
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def variants(recipe: Recipe, device: torch.device) -> list[dict[str, bool]]:
    out = [{"amp": True, "channels_last": False}, {"amp": False, "channels_last": False}]
    if recipe.images:
        out.insert(0, {"amp": True, "channels_last": True})
    return out


def measure(recipe: Recipe, data_dir: Path, cache: Path, variant: dict[str, bool], *,
            warmup: int, steps: int, tiny: bool, device: str) -> dict[str, float]:
    task_cls = TASKS[recipe.hw]()
    sets = [f'data.dir="{data_dir}"', f'trainer.device="{device}"',
            "trainer.print_every_evals=100000", "trainer.log_grad_norm=true",
            f"trainer.amp={str(variant['amp']).lower()}",
            f"trainer.channels_last={str(variant['channels_last']).lower()}"]
    if "cache_dir" in {f.name for f in fields(task_cls.schema()["data"])}:
        sets.append(f'data.cache_dir="{cache}"')
    if tiny:
        sets += ["trainer.batch_size=4", "trainer.eval_batch_size=4", "trainer.num_workers=0"]
    config = load_config(task_cls.schema(), ROOT / "configs" / f"{recipe.config}.toml", sets)
    full_epochs = config["trainer"].epochs
    task = task_cls(config)
    train_data = task.load_train(data_dir)
    train_idx, valid_idx = task.split(train_data)
    train_ds, valid_ds = task.make_datasets(train_data, train_idx, valid_idx)
    batch = config["trainer"].batch_size
    per_epoch = max(1, len(train_ds) // batch if config["trainer"].drop_last
                    else math.ceil(len(train_ds) / batch))
    total = warmup + steps
    run_cfg = replace(config["trainer"], epochs=math.ceil(total / per_epoch),
                      max_batches_per_epoch=min(per_epoch, total), patience=0,
                      keep_checkpoints=0, keep_best_checkpoints=0, tensorboard=False)
    # the same task: build_model reads what make_datasets fitted (HW3's mean/std, HW8's side)
    task.config = {**task.config, "trainer": run_cfg}
    seed_everything(run_cfg.seed)
    clock = StepClock()
    trainer = make_trainer(task, task.build_model(), None, [clock])
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(train_ds, None)
    times = clock.times[warmup - 1:total] if warmup else clock.times[:total]
    timed = len(times) - 1
    step_s = (times[-1] - times[0]) / max(timed, 1)
    # the loader alone over as many batches as the timed window
    sampler = trainer.sampler(train_ds, train=True)
    start, n = time.perf_counter(), 0
    while n < timed:
        for _ in trainer.loader(train_ds, sampler, epoch=n, train=True):
            n += 1
            if n >= timed:
                break
    load_s = (time.perf_counter() - start) / max(timed, 1)
    eval_rate = float("nan")
    if valid_ds is not None and len(valid_ds):
        eval_batches = 2 if tiny else 10
        eval_items = min(len(valid_ds), eval_batches * (run_cfg.eval_batch_size or batch))
        trainer.evaluate(valid_ds, max_batches=1)  # warm-up
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.evaluate(valid_ds, max_batches=eval_batches)
        if cuda:
            torch.cuda.synchronize()
        eval_rate = eval_items / (time.perf_counter() - start)
    share_train = len(train_ds) / (len(train_ds) + (len(valid_ds) if valid_ds is not None else 0))
    real_train = recipe.real_items * share_train
    real_valid = recipe.real_items - real_train
    items_s = batch / step_s
    hours = full_epochs * (real_train / items_s
                           + (real_valid / eval_rate if eval_rate == eval_rate else 0.0)) / 3600
    return {"updates_s": 1 / step_s, "items_s": items_s, "load_share": load_s / step_s,
            "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"),
            "eval_items_s": eval_rate, "projected_h": hours, "epochs": full_epochs,
            "batch": batch, "device": str(trainer.device), "timed": timed}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(RECIPES), default=sorted(RECIPES))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke sizes")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 2:
        parser.error("--warmup must be at least 1 and --steps at least 2")
    set_cpu_threads(0)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="gpu-recipes-"))
    try:
        written: dict[tuple, Path] = {}
        for name in args.only:
            recipe = RECIPES[name]
            key = (recipe.hw, tuple(sorted(recipe.demo.items())))
            if key not in written:
                written[key] = write_demo(recipe, tmp / f"{recipe.hw}-{len(written)}")
            for variant in variants(recipe, torch.device("cpu")):
                row = measure(recipe, written[key], tmp / "cache", variant, warmup=args.warmup,
                              steps=args.steps, tiny=args.tiny, device=args.device)
                row.update(recipe=name, **variant)
                rows.append(row)
                print(f"{name:11s} amp={'on ' if variant['amp'] else 'off'} "
                      f"channels_last={'on ' if variant['channels_last'] else 'off'} "
                      f"{row['device']:6s} batch {row['batch']:4d}: {row['updates_s']:8.2f} upd/s "
                      f"{row['items_s']:9.1f} items/s, load {100 * row['load_share']:5.1f} %, "
                      f"peak {row['peak_mib']:8.0f} MiB, eval {row['eval_items_s']:9.1f} items/s,"
                      f" {row['epochs']} epochs projected {row['projected_h']:7.2f} h", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
