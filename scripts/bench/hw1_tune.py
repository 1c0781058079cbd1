#!/usr/bin/env python3
"""HW1 tuning benchmark: a TPE study against random search against configs/hw1.toml, every
one scored by the 5-fold out-of-fold MSE on the real 2022 training table.

  recipe   configs/hw1.toml as it is (one 5-fold run, every core)
  tpe      `hw1 tune --folds 5` over configs/hw1.toml's [tune.space] (learning rate, width and
           depth, weight decay, epochs up to --max-epochs), --trials trials, TPE seeded
  random   the same space and number of trials, random search

Both studies use the median pruner on the folds (a trial whose running mean fold MSE trails
the median of earlier trials at the same fold stops there; --pruner none trains every fold)
and run side by side, one process and one CPU thread each (--sequential: one after the
other, every core). Prints the best CV MSE of each, the trial at which it was found, how many
trials were pruned and the time its trials took; the studies stay in --out for `runs`, `compare` and
predict; --timeout-min stops starting trials after that long, and --resume continues both
studies in --out (the recipe's result kept) up to --trials.

Usage: python scripts/bench/hw1_tune.py [--trials 40] [--folds 5] [--max-epochs 1000]
       [--timeout-min M] [--resume] [--pruner median] [--sequential]
       [--data ../shared/data/hw1/2022] [--out runs/hw1-tune-bench]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common.core.config import load_config, toml_value  # noqa: E402
from common.core.io import write_text_atomic  # noqa: E402
from common.core.runtime import set_cpu_threads  # noqa: E402
from common.experiments.kfold import kfold_run  # noqa: E402
from common.experiments.tune import Study, tune  # noqa: E402
from hw.hw1_covid.task import CovidTask  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hw1" / "2022"
RECIPE = ROOT / "configs" / "hw1.toml"
QUIET = "trainer.print_every_evals=1000000000"


def study_of(kind: str, args, out: Path, threads: int) -> Study:
    folder = out / kind
    space = tomllib.loads(RECIPE.read_text())["tune"]["space"]
    epochs = dict(space["trainer.epochs"])
    epochs["high"] = max(epochs["low"] + epochs.get("step", 1),
                         min(epochs["high"], args.max_epochs))
    space["trainer.epochs"] = epochs
    folder.mkdir(parents=True, exist_ok=args.resume)
    overrides = [f"data.dir={toml_value(str(Path(args.data).resolve()))}", QUIET,
                 f"tune.space={toml_value(space)}", f"trainer.threads={threads}"]
    return Study(task="hw1", config=str(RECIPE), overrides=overrides, folder=str(folder),
                 storage=f"sqlite:///{folder / 'study.db'}", name=kind, trials=args.trials,
                 timeout=args.timeout_min * 60, sampler=kind, pruner=args.pruner, seed=0,
                 folds=args.folds,
                 startup_trials=min(10, max(1, args.trials // 4)), warmup_evals=0)


def run_study(kind: str, args, out: Path, threads: int) -> tuple:
    """One study; (best value, its trial, its params, trials pruned, trials run, the trials'
    seconds: all of them, over every invocation that ran them)."""
    result = tune(CovidTask, study_of(kind, args, out, threads), resume=args.resume)
    best = result["best"]
    table = [row for row in result["table"] if row["state"] in ("COMPLETE", "PRUNED")]
    pruned = sum(row["state"] == "PRUNED" for row in table)
    print(f"{kind}: best {best.value:.4f} at trial {best.number}: {best.params}", flush=True)
    return (best.value, best.number, best.params, pruned, len(table),
            sum(row["duration_s"] for row in table))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max-epochs", type=int, default=1000)
    parser.add_argument("--timeout-min", type=float, default=0.0,
                        help="stop starting trials after this many minutes per study (0: none)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the studies in --out (same --trials) up to --trials")
    parser.add_argument("--pruner", default="median", choices=("median", "hyperband", "none"))
    parser.add_argument("--sequential", action="store_true",
                        help="one study after the other on every core, not side by side")
    parser.add_argument("--out", default=str(ROOT / "runs" / "hw1-tune-bench"))
    args = parser.parse_args()
    if not (Path(args.data) / "covid.train.csv").is_file():
        sys.exit(f"{args.data}: the real HW1 2022 table is not there; pass --data")
    set_cpu_threads(0)
    out = Path(args.out)
    recipe_file = out / "recipe.json"
    if not args.resume:
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        config = load_config(CovidTask.schema(), RECIPE, [
            f"data.dir={toml_value(str(Path(args.data).resolve()))}", QUIET,
            f"kfold.folds={args.folds}"])
        recipe = kfold_run(CovidTask, config, out / "recipe")
        write_text_atomic(recipe_file, json.dumps(
            {"mse": recipe["oof"]["mse"], "seconds": time.perf_counter() - start}))
    elif not recipe_file.is_file():
        sys.exit(f"{recipe_file}: not found; --resume continues a benchmark in --out")
    recipe = json.loads(recipe_file.read_text())
    results = {"recipe": (recipe["mse"], "-", recipe["seconds"])}
    kinds = ("tpe", "random")
    if args.sequential:
        studies = [run_study(kind, args, out, 0) for kind in kinds]
    else:
        with mp.get_context("spawn").Pool(len(kinds)) as pool:
            studies = pool.starmap(run_study, [(kind, args, out, 1) for kind in kinds])
    for kind, (value, number, _, pruned, ran, seconds) in zip(kinds, studies, strict=True):
        results[kind] = (value, f"trial {number} of {ran}, {pruned} pruned", seconds)
    print(f"\nHW1, {args.folds}-fold out-of-fold MSE on the real table, {args.trials} trials "
          f"(epochs up to {args.max_epochs}, pruner {args.pruner}, "
          f"{'one after the other' if args.sequential else 'side by side'}):")
    for name, (value, where, seconds) in results.items():
        print(f"  {name:7s} {value:.4f}  {where:28s} {seconds / 60:6.1f} min"
              + (" (its trials' time)" if name != "recipe" else ""))
    print(f"  tpe / recipe {results['tpe'][0] / results['recipe'][0]:.3f}, random / recipe "
          f"{results['random'][0] / results['recipe'][0]:.3f}")


if __name__ == "__main__":
    main()
