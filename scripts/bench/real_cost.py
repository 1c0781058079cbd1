#!/usr/bin/env python3
"""What a recipe costs on data of the real size, on this machine: the seconds one training update
takes (measured through the project's own trainer, on inputs of the real shapes), and the epoch
that makes at the real data's size, against the course sample's epoch in the same run.

  hw2  a synthetic libriphone at the real scale (4286 utterances of 139-998 frames; same shapes
       and dtypes as the real features, so the same cost); an epoch is the real training
       split's 2,116,368 frames
  hw3  the real proxy photos (10 Food-101 classes in the Food-11 layout, ../shared/data); an
       epoch is Food-11's 9,866 training photos

An update's time is (fit of 2N updates - fit of N updates) / N, after a warm-up fit, so
start-up, the evaluation and caches drop out: evaluation and the test prediction are not
counted.

Usage: python scripts/bench/real_cost.py [--only hw2 hw3] [--updates 10] [--threads 0]
                                          [--hw2-data DIR]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common.core.config import load_config  # noqa: E402
from common.core.runtime import set_cpu_threads  # noqa: E402
from common.experiments.pipeline import fit_split, prepare  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
# homework -> (recipes, the course sample first; items in a real epoch; what an item is)
PLANS = {
    "hw2": (["hw2_sample", "hw2_cpu", "hw2_strong", "hw2", "hw2_window"], 2_116_368, "frames"),
    "hw3": (["hw3_sample", "hw3_cpu", "hw3"], 9_866, "photos"),
}


def task_class(hw: str):
    if hw == "hw2":
        from hw.hw2_phoneme.task import PhonemeTask

        return PhonemeTask
    from hw.hw3_food.task import FoodTask

    return FoodTask


def data_for(hw: str, scratch: Path, hw2_data: Path | None) -> Path | None:
    if hw == "hw3":
        food = SHARED / "hw3" / "food101"
        return food if (food / "food11" / "training").is_dir() else None
    from hw.hw2_phoneme.data import write_demo_data

    folder = hw2_data or scratch / "hw2"
    if (folder / "libriphone" / "train_labels.txt").is_file():
        return folder
    print(f"hw2: writing a synthetic libriphone at the real scale into {folder} (a few "
          "minutes)...", flush=True)
    return write_demo_data(folder, n_train=4286, n_test=2)


def seconds_per_update(hw: str, recipe: str, data: Path, scratch: Path, updates: int
                       ) -> tuple[float, float]:
    """(seconds per training update, items per update) of a recipe on data: its batch size,
    or for batches of whole utterances within a frame budget (HW2's tagger), the training
    split's frames over its batches."""
    cls = task_class(hw)
    cache = [f'data.cache_dir="{scratch / "cache"}"'] if hw == "hw3" else []
    config = load_config(cls.schema(), ROOT / "configs" / f"{recipe}.toml", [
        f'data.dir="{data}"', *cache, "trainer.num_workers=0",
        "trainer.print_every_evals=1000000", "trainer.max_eval_batches=1", "trainer.epochs=1"])
    task, train_data, split = prepare(cls, config, data)
    datasets = task.make_datasets(train_data, *split)
    times = []
    for n in (2, updates, 2 * updates):  # the first fit warms up (threads, allocator, caches)
        task.config["trainer"] = replace(config["trainer"], max_batches_per_epoch=n)
        start = time.perf_counter()
        fit_split(task, train_data, *split, datasets=datasets)
        times.append(time.perf_counter() - start)
    train = datasets[0]
    batches = task.batch_sampler(train, train=True, batch_size=config["trainer"].batch_size,
                                 seed=0, drop_last=False, as_tensor=True, rank=0,
                                 world=1).num_batches()
    items = getattr(train, "num_frames", len(train))
    return (times[2] - times[1]) / updates, items / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(PLANS), default=list(PLANS))
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--hw2-data", type=Path, metavar="DIR",
                        help="keep the real-scale synthetic libriphone here (reused when there)")
    args = parser.parse_args()
    set_cpu_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mlhw-cost-") as scratch:
        for hw in args.only:
            recipes, items, unit = PLANS[hw]
            data = data_for(hw, Path(scratch), args.hw2_data)
            if data is None:
                print(f"{hw}: skipped, its real data is not in {SHARED}")
                continue
            print(f"{hw}: one epoch = {items:,} {unit}; seconds per update over "
                  f"{args.updates} updates")
            base = None
            # a throw-away first measurement: the first one after the data were written ran
            # 7x slow (the course sample: 22.6 ms against 3.0 ms measured again)
            seconds_per_update(hw, recipes[0], data, Path(scratch), 2)
            for recipe in recipes:
                per_update, batch = seconds_per_update(hw, recipe, data, Path(scratch),
                                                       args.updates)
                epoch = per_update * math.ceil(items / batch) / 60
                base = base or epoch
                print(f"  {recipe:11s} batch {batch:6.0f}  {per_update * 1000:8.1f} ms/update  "
                      f"epoch {epoch:7.1f} min  x{epoch / base:5.2f} the course sample's",
                      flush=True)


if __name__ == "__main__":
    main()
