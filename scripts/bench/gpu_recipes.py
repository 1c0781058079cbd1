#!/usr/bin/env python3
"""The GPU recipes (HW3, HW4, HW6 style-based, DCGAN and WGAN-GP, HW8) through the engine.

Each recipe is its real config (configs/<name>.toml) on the homework's own synthetic demo data,
read through the homework's own readers and datasets, so every item has the recipe's real shape
(Food-11 crops of the cache, mel segments of the recipe's length, 64 x 64 faces) and every batch
the recipe's size; only the number of items is small, and the projection scales to the real
count (HOMEWORKS.md). Per variant (AMP bf16 / fp16 with the scaler / off; channels_last beside
bf16 for the convolutional image models) it builds the task, the model and Trainer exactly as
`train` does, runs a warm-up then a timed window of updates with Trainer.fit, and prints:

  upd/s, items/s   the timed window (fit with the validation split left out); items are the
                   loader's rows (images, segments, faces) times the accumulation steps
  load %           the data loader alone over the same batches, as a share of the update time
  peak MiB         torch.cuda.max_memory_allocated (CUDA only; nan elsewhere)
  eval items/s     Trainer.evaluate over validation batches
  projected h      epochs x real train items / items/s + epochs x real valid items / eval rate,
                   beside the README's estimate where it gives one

AMP, its dtype and channels_last act on CUDA only (the engine's rule): on the CPU the variants
run the same code and the numbers say nothing about them. `--tiny` shrinks batches and windows
for a CPU smoke run (the test suite's); its projection is of the tiny run, not the recipe. The
sequence recipes (HW2, HW5, HW7) are in gpu_sequences.py, on this file's machinery.

Usage: python scripts/bench/gpu_recipes.py [--only hw3 hw6 ...] [--amp bf16 fp16 off]
                                           [--no-extras] [--warmup 5] [--steps 20] [--tiny]
                                           [--device auto]
"""

from __future__ import annotations

import argparse
import itertools
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common.core.config import load_config  # noqa: E402
from common.core.runtime import seed_everything, set_cpu_threads  # noqa: E402
from common.data.loading import supports_batched_indexing  # noqa: E402
from common.engine.trainer import Callback  # noqa: E402
from common.experiments.pipeline import make_trainer  # noqa: E402
from hw import TASKS  # noqa: E402


@dataclass(frozen=True)
class Recipe:
    hw: str                 # the CLI name
    config: str             # configs/<config>.toml
    real_items: int         # labelled items of the real data (train + valid), HOMEWORKS.md
    demo: dict = field(default_factory=dict)  # small sizes for the demo writer
    kind: str = "plain"     # "images": channels_last applies; "sequences": torch.compile tried
    real_valid: int | None = None  # the real validation items; None: the demo split's share
    sets: tuple[str, ...] = ()       # overrides of the recipe (a model built from a config)
    tiny_sets: tuple[str, ...] = ()  # and for --tiny, besides the batch of 4
    prepare: Callable[[Path, bool], Path] | None = None  # (dest, tiny) -> data folder
    estimate: str = ""      # the README's time for the full recipe, if it gives one
    unit: str = "items"     # what an item of the loader is, for the printed line
    counted: str = ""       # what task.count counts (the loss's average), printed if set


FLOPS = "FLOP count, not measured"
RECIPES = {
    "hw3": Recipe("hw3", "hw3", 9866 + 3430, {"per_class": (6, 3, 2)}, kind="images",
                  real_valid=3430, estimate=f"1-2 h on a T4 or P100 ({FLOPS})"),
    "hw4": Recipe("hw4", "hw4", 56666, estimate=f"1-2 h on a T4 or P100 ({FLOPS})"),
    "hw6": Recipe("hw6", "hw6", 71314, {"count": 160}, kind="images",
                  estimate=f"3-5 h on a T4, 1 h on an A100 ({FLOPS})"),
    "hw6-dcgan": Recipe("hw6", "hw6_sample", 71314, {"count": 160}, kind="images"),
    "hw6-wgangp": Recipe("hw6", "hw6_wgangp", 71314, {"count": 160}, kind="images"),
    "hw8": Recipe("hw8", "hw8", 100000, {"n_train": 400, "n_normal": 20, "n_anomalies": 20}),
}


def write_demo(recipe: Recipe, dest: Path, tiny: bool = False) -> Path:
    """The recipe's data: its own writer, else the homework's demo data (smaller where the
    writer takes sizes)."""
    if recipe.prepare is not None:
        return recipe.prepare(dest, tiny)
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


def variants(recipe: Recipe) -> list[dict]:
    """AMP bf16 / fp16 / off; channels_last (image models) or torch.compile (sequence models)
    beside bf16."""
    plain = {"amp": "bf16", "channels_last": False, "compile": False}
    out = [plain, {**plain, "amp": "fp16"}, {**plain, "amp": "off"}]
    if recipe.kind == "images":
        out.insert(0, {**plain, "channels_last": True})
    if recipe.kind == "sequences":
        out.insert(1, {**plain, "compile": True})
    return out


def variant_sets(variant: dict, tiny: bool) -> list[str]:
    amp = variant["amp"] != "off"
    sets = [f"trainer.amp={str(amp).lower()}",
            f"trainer.channels_last={str(variant['channels_last']).lower()}",
            f"trainer.compile={str(variant['compile']).lower()}"]
    if amp:
        sets.append(f'trainer.amp_dtype="{variant["amp"]}"')
    if variant["compile"] and tiny:  # capture only: inductor's C++ build is minutes on a CPU
        sets.append('trainer.compile_backend="eager"')
    return sets


def measure(recipe: Recipe, data_dir: Path, cache: Path, variant: dict, *,
            warmup: int, steps: int, tiny: bool, device: str, after=None) -> dict[str, float]:
    """One variant: a warm-up then `steps` timed updates through Trainer.fit, the loader alone,
    evaluation, the projection; `after(task, trainer, row, data_dir)` adds its own
    measurements to the row."""
    task_cls = TASKS[recipe.hw]()
    sets = [f'data.dir="{data_dir}"', f'trainer.device="{device}"',
            "trainer.print_every_evals=100000", "trainer.log_grad_norm=true",
            *variant_sets(variant, tiny), *recipe.sets]
    if "cache_dir" in {f.name for f in fields(task_cls.schema()["data"])}:
        sets.append(f'data.cache_dir="{cache}"')
    if tiny:
        sets += ["trainer.batch_size=4", "trainer.eval_batch_size=4", "trainer.num_workers=0",
                 *recipe.tiny_sets]
    config = load_config(task_cls.schema(), ROOT / "configs" / f"{recipe.config}.toml", sets)
    full_epochs = config["trainer"].epochs
    task = task_cls(config)
    train_data = task.load_train(data_dir)
    train_idx, valid_idx = task.split(train_data)
    task = task.fitted(train_data, train_idx)
    train_ds, valid_ds = task.make_datasets(train_data, train_idx, valid_idx)
    accum = config["trainer"].accum_steps
    total = warmup + steps
    cfg = config["trainer"]
    # the batches of one training epoch, as Trainer.sampler asks the task for them
    batches = task.batch_sampler(train_ds, train=True, batch_size=cfg.batch_size, seed=cfg.seed,
                                 drop_last=cfg.drop_last,
                                 as_tensor=supports_batched_indexing(train_ds), rank=0, world=1)
    per_epoch = max(1, batches.num_batches() // accum)
    run_cfg = replace(cfg, epochs=math.ceil(total / per_epoch),
                      max_batches_per_epoch=min(per_epoch, total) * accum, patience=0,
                      keep_checkpoints=0, keep_best_checkpoints=0, tensorboard=False)
    task.config = {**task.config, "trainer": run_cfg}
    clock = StepClock()
    seed_everything(run_cfg.seed)
    trainer = make_trainer(task, task.build_model(), None, [clock])
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(train_ds, None)
    times = clock.times[warmup - 1:total]
    timed = len(times) - 1
    step_s = (times[-1] - times[0]) / max(timed, 1)
    # the loader alone over as many batches as the timed window: its time, its items (the
    # sampler's batches: sentences, windows, images) and what the loss averages over (tokens)
    sampler = trainer.sampler(train_ds, train=True)
    start, n, items, counted = time.perf_counter(), 0, 0, 0.0
    while n < timed * accum:
        for batch in trainer.loader(train_ds, sampler, epoch=n, train=True):
            n += 1
            items += len(batch_rows(batch))
            counted += float(task.count(batch))
            if n >= timed * accum:
                break
    load_s = (time.perf_counter() - start) / max(timed, 1)
    items_per_update, counted_per_update = items / timed, counted / timed
    eval_rate = float("nan")
    if valid_ds is not None and len(valid_ds):
        eval_batches = 2 if tiny else 10
        trainer.evaluate(valid_ds, max_batches=1)  # warm-up
        eval_items = sum(len(b) for b in itertools.islice(
            trainer.sampler(valid_ds, train=False), eval_batches))
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.evaluate(valid_ds, max_batches=eval_batches)
        if cuda:
            torch.cuda.synchronize()
        eval_rate = eval_items / (time.perf_counter() - start)
    # the real counts, in dataset items per labelled item of the demo (HW5's upsampling,
    # HW7's windows per question)
    n_valid = len(valid_idx)
    share_valid = n_valid / (len(train_idx) + n_valid)
    real_valid = recipe.real_valid if recipe.real_valid is not None else round(
        recipe.real_items * share_valid)
    real_train = (recipe.real_items - real_valid) * len(train_ds) / len(train_idx)
    real_valid *= len(valid_ds) / n_valid if n_valid and valid_ds is not None else 0.0
    items_s = items_per_update / step_s
    hours = full_epochs * (real_train / items_s
                           + (real_valid / eval_rate if eval_rate == eval_rate else 0.0)) / 3600
    row = {"updates_s": 1 / step_s, "items_s": items_s, "counted_s": counted_per_update / step_s,
           "load_share": load_s / step_s,
           "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"),
           "eval_items_s": eval_rate, "projected_h": hours, "epochs": full_epochs,
           "batch": config["trainer"].batch_size, "accum": accum,
           "device": str(trainer.device), "timed": timed}
    if after is not None:
        after(task, trainer, row, data_dir)
    return row


def batch_rows(batch):
    """The items of a loader batch: the first tensor's rows."""
    if isinstance(batch, dict):
        batch = next(iter(batch.values()))
    if isinstance(batch, (list, tuple)):
        batch = batch[0]
    return batch


def describe(variant: dict) -> str:
    extras = [name for name in ("channels_last", "compile") if variant[name]]
    return f"amp {variant['amp']:4s} {'+'.join(extras) or '-':13s}"


def report(name: str, row: dict, recipe: Recipe) -> str:
    unit = recipe.unit
    counted = f", {row['counted_s']:9.0f} {recipe.counted}/s" if recipe.counted else ""
    return (f"{name:12s} {describe(row)} {row['device']:6s} batch {row['batch']:>6} x "
            f"{row['accum']}: {row['updates_s']:7.2f} upd/s {row['items_s']:8.1f} {unit}/s"
            f"{counted}, load {100 * row['load_share']:5.1f} %, peak {row['peak_mib']:7.0f} "
            f"MiB, eval {row['eval_items_s']:8.1f} items/s, {row['epochs']} epochs "
            f"projected {row['projected_h']:7.2f} h"
            + (f" (README: {row['estimate']})" if row.get("estimate") else ""))


def run(recipes: dict[str, Recipe], argv: list[str] | None, doc: str, *, after=None,
        extra=None) -> list[dict]:
    """The command line of a recipe bench: every variant of every chosen recipe, one printed
    line each (and `extra(row)`'s line where it gives one); the rows are returned."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(recipes), default=sorted(recipes))
    parser.add_argument("--amp", nargs="+", choices=("bf16", "fp16", "off"),
                        default=["bf16", "fp16", "off"], help="the AMP variants to run")
    parser.add_argument("--no-extras", action="store_true",
                        help="leave out the channels_last and torch.compile variants")
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
            recipe = recipes[name]
            key = (recipe.hw, recipe.prepare, tuple(sorted(recipe.demo.items())))
            if key not in written:
                written[key] = write_demo(recipe, tmp / f"{recipe.hw}-{len(written)}", args.tiny)
            for variant in variants(recipe):
                if variant["amp"] not in args.amp or (
                        args.no_extras and (variant["channels_last"] or variant["compile"])):
                    continue
                row = measure(recipe, written[key], tmp / f"cache-{name}", variant,
                              warmup=args.warmup, steps=args.steps, tiny=args.tiny,
                              device=args.device, after=after)
                row.update(recipe=name, estimate=recipe.estimate, **variant)
                rows.append(row)
                print(report(name, row, recipe), flush=True)
                line = extra(row) if extra is not None else None
                if line:
                    print(line, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    return run(RECIPES, argv, __doc__)


if __name__ == "__main__":
    main()
