#!/usr/bin/env python3
"""HW1: does the 5-fold ensemble (`run.py hw1 kfold --folds 5`) beat a single model?

Nested evaluation on the real 2022 training table, since Kaggle's test labels are not public:
outer KFold(5, shuffle=True, random_state=0) (the same outer folds as hw1_cv.py). For each outer
fold, on its training part only, train
  single  - one model on all of it (what `run.py hw1 train` does),
  kfold   - the k-fold run: 5 inner folds (make_folds with the config's kfold.seed, fold k with
            seed + k - 1), each model trained on 4/5 of it, test outputs averaged,
  seeds   - 5 models on all of it with seeds seed..seed+4, averaged (same cost as kfold),
then score each on the outer held-out rows. Usage:

    python scripts/bench/hw1_kfold.py [--data ../shared/data/hw1/2022] [--config FILE] [--set K=V]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import KFold

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common.core.config import load_config  # noqa: E402
from common.core.runtime import set_cpu_threads  # noqa: E402
from common.engine.fusion import fuse  # noqa: E402
from common.experiments.kfold import fold_config, make_folds  # noqa: E402
from common.experiments.pipeline import fit_split  # noqa: E402
from hw.hw1_covid.task import CovidTask  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hw1" / "2022"


def held_out_outputs(task: CovidTask, table, train_idx, held_out) -> torch.Tensor:
    """Train on train_idx (no validation rows) and predict the held-out rows."""
    task = task.fitted(table, train_idx)
    trainer = fit_split(task, table, train_idx, np.array([], dtype=np.int64))
    return trainer.predict(task.labelled_dataset(table, held_out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "hw1.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--no-seeds", action="store_true", help="skip the seed ensemble")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"skipped: {args.data} not found (the real HW1 2022 table)")
        return
    set_cpu_threads(0)
    quiet = "trainer.print_every_evals=1000000000"
    config = load_config(CovidTask.schema(), args.config, [quiet, *args.overrides])
    task = CovidTask(config)
    table = task.load_train(args.data)
    kcfg = config["kfold"]
    scores: dict[str, list[float]] = {"single": [], "kfold members": [], "kfold": []}
    if not args.no_seeds:
        scores["seeds"] = []

    def mse(out, idx):
        return float(((out.double() - torch.from_numpy(table.target[idx])) ** 2).mean())

    start = time.perf_counter()
    outer = KFold(5, shuffle=True, random_state=0).split(table.ids)
    for o, (outer_train, held_out) in enumerate(outer, 1):
        task.config = config
        single = held_out_outputs(task, table, outer_train, held_out)
        scores["single"].append(mse(single, held_out))
        members = []
        inner = make_folds(len(outer_train), kcfg.folds, seed=kcfg.seed, split=kcfg.split)
        for k, (inner_train, _) in enumerate(inner, 1):
            task.config = fold_config(config, k)
            members.append(held_out_outputs(task, table, outer_train[inner_train], held_out))
        scores["kfold members"].append(float(np.mean([mse(m, held_out) for m in members])))
        scores["kfold"].append(mse(fuse(members, kind="values", method=kcfg.method or None),
                                   held_out))
        if not args.no_seeds:
            seeded = [single]
            for s in range(1, kcfg.folds):
                task.config = dict(config)
                task.config["trainer"] = replace(config["trainer"],
                                                 seed=config["trainer"].seed + s)
                seeded.append(held_out_outputs(task, table, outer_train, held_out))
            scores["seeds"].append(mse(fuse(seeded, kind="values"), held_out))
        line = "  ".join(f"{k} {v[-1]:.4f}" for k, v in scores.items())
        print(f"outer fold {o}: {line}  ({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"\nheld-out MSE over 5 outer folds, {args.config.name}:")
    base = np.mean(scores["single"])
    for name, values in scores.items():
        v = np.array(values)
        print(f"  {name:14s} mean {v.mean():.4f}  std {v.std():.4f}  ratio to single "
              f"{v.mean() / base:.3f}  folds [{' '.join(f'{x:.3f}' for x in v)}]")


if __name__ == "__main__":
    main()
