#!/usr/bin/env python3
"""HW1 quality benchmark: 5-fold cross-validated MSE of configs on the real 2022 training table.

Folds: scikit-learn KFold(5, shuffle=True, random_state=0). Inside each fold, early stopping uses
a split of that fold's training part only (the config's valid_ratio and split_seed); the fold's
held-out part is scored with the best weights. Usage:

    python scripts/bench/hw1_cv.py [--data ../shared/data/hw1/2022] [--config FILE ...] [--set K=V]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import KFold

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common.core.config import load_config  # noqa: E402
from common.core.runtime import set_cpu_threads  # noqa: E402
from common.data.loading import split_train_valid  # noqa: E402
from common.experiments.pipeline import fit_split  # noqa: E402
from hw.hw1_covid.task import CovidTask  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hw1" / "2022"


def cv_mse(config_path: Path, data_dir: Path, overrides: list[str] = (), folds: int = 5):
    """Per-fold held-out MSE for one config."""
    quiet = "trainer.print_every_evals=1000000000"
    config = load_config(CovidTask.schema(), config_path, [quiet, *overrides])
    task = CovidTask(config)
    table = task.load_train(data_dir)
    data_cfg = config["data"]
    scores = []
    for train_part, held_out in KFold(folds, shuffle=True, random_state=0).split(table.ids):
        inner_train, inner_valid = split_train_valid(len(train_part), data_cfg.valid_ratio,
                                                     data_cfg.split_seed)
        fold = task.fitted(table, train_part[inner_train])
        trainer = fit_split(fold, table, train_part[inner_train], train_part[inner_valid])
        scores.append(trainer.evaluate(fold.labelled_dataset(table, held_out))["mse"])
    return np.array(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--config", type=Path, action="append")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"skipped: {args.data} not found (the real HW1 2022 table)")
        return
    set_cpu_threads(0)
    configs = args.config or [ROOT / "configs" / "hw1_sample.toml", ROOT / "configs" / "hw1.toml"]
    print(f"5-fold CV MSE on {args.data} (KFold(5, shuffle=True, random_state=0))")
    for path in configs:
        start = time.perf_counter()
        scores = cv_mse(path, args.data, args.overrides)
        folds = " ".join(f"{s:.3f}" for s in scores)
        print(f"{path.name:20s} mean {scores.mean():.4f}  std {scores.std():.4f}  folds [{folds}]"
              f"  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
