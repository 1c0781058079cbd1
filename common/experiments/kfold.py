"""K-fold training: one model per fold on merged train+valid, out-of-fold metrics, fused test
predictions, and resumption that skips finished folds.

Run directory:  config.toml  folds.csv  kfold.csv  oof.pt  test_outputs.pt  <submission>  log.txt
                fold-<k>/  (a complete run: config.toml, checkpoints/, metrics.csv, oof.pt, ...)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from common.core import distributed
from common.core.config import Config, save_config
from common.core.errors import UserError
from common.core.io import write_csv_atomic
from common.core.runtime import set_cpu_threads
from common.data.batches import concat, take
from common.engine.checkpoint import load_torch_file, save_torch_file
from common.engine.fusion import FUSABLE
from common.engine.rundir import RunDir
from common.engine.runlog import say
from common.engine.task import Task
from common.engine.trainer import Callback
from common.experiments.finished import ensemble_run, fuse_and_write, load_run_config, predict_run
from common.experiments.pipeline import (
    check_run_config,
    data_dir_of,
    fit_split,
    predict_and_write,
    predict_outputs,
    run_logging,
)

log = logging.getLogger("mlhw")
report = functools.partial(say, err=True)  # progress goes to stderr, results to stdout
SPLITS = ("auto", "kfold", "stratified", "group")


def make_folds(n: int, folds: int, *, seed: int = 0, split: str = "auto",
               labels: np.ndarray | None = None, groups: np.ndarray | None = None
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Deterministic (train_idx, held_out_idx) pairs; held-out parts are disjoint and cover
    0..n-1. auto: grouped when groups are given (stratified too when labels are), stratified
    when labels are, plain shuffled KFold otherwise."""
    if folds > n:
        raise UserError(f"--folds {folds}: more folds than the {n} training items")
    if split == "auto":
        split = "group" if groups is not None else "stratified" if labels is not None \
            else "kfold"
    if split == "group" and groups is None:
        raise UserError("kfold.split=group: this homework defines no groups; use kfold")
    if split == "stratified" and labels is None:
        raise UserError("kfold.split=stratified: this homework has no classes; use kfold")
    # imported here: scikit-learn takes a second to import, and most commands never fold
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    x = np.zeros(n)
    if split == "group" and labels is not None:
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    elif split == "group":
        splitter = GroupKFold(folds, shuffle=True, random_state=seed)
    elif split == "stratified":
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(folds, shuffle=True, random_state=seed)
    try:
        parts = splitter.split(x, labels, groups) if split == "group" else \
            splitter.split(x, labels)
        return [(np.sort(tr), np.sort(va)) for tr, va in parts]
    except ValueError as exc:  # e.g. fewer groups than folds
        raise UserError(f"kfold: {exc}") from None


def fold_config(config: Config, k: int) -> Config:
    """Fold k's config (1-based): the run's, with trainer.seed + k - 1 if kfold.vary_seed."""
    config = dict(config)
    if config["kfold"].vary_seed:
        config["trainer"] = replace(config["trainer"], seed=config["trainer"].seed + k - 1)
    return config


def _exists(path: Path) -> bool:
    """Whether rank 0 sees the file (the other ranks need not share its disk)."""
    return distributed.broadcast_object(path.is_file() if distributed.is_main() else None)


def run_fold(task: Task, train_data, test_data, train_idx, held_out, fold_dir: Path,
             callbacks: list[Callback] = ()) -> dict:
    """Train one fold with `task` fitted on train_idx (continuing it if it has a last.pt),
    then write its out-of-fold outputs, metrics and test predictions. Its oof.pt, written
    last, marks the fold finished."""
    fold = RunDir(fold_dir)
    resume = _exists(fold.last)
    if not resume and distributed.is_main():
        save_config(task.config, fold.config)
    trainer = fit_split(task, train_data, train_idx, held_out, run_dir=fold_dir, resume=resume,
                        callbacks=callbacks)
    held_out_data = task.labelled_dataset(train_data, held_out)
    outputs, targets = predict_outputs(task, trainer, held_out_data, with_targets=True)
    metrics = {k: float(v) for k, v in task.metrics(outputs, targets,
                                                    dataset=held_out_data).items()}
    predict_and_write(task, trainer, test_data, fold_dir)
    result = {"index": torch.from_numpy(held_out), "outputs": outputs, "targets": targets,
              "metrics": metrics}
    if distributed.is_main():
        save_torch_file(fold.oof, result)
    return result


def kfold_run(task_cls: type[Task], config: Config, run_dir: Path, *,
              resume: bool = False, callbacks: list[Callback] = (),
              on_fold: Callable[[int, dict[str, float]], None] | None = None) -> dict:
    """Train config['kfold'].folds models on all training data (train and valid merged) and
    fuse their test predictions. With resume, finished folds are kept as they are. on_fold(k,
    metrics) hears each fold's held-out metrics as it ends (a tuner prunes through it)."""
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    if not resume and run.config.exists():
        raise UserError(f"{run_dir}: already holds a run; continue it with --resume {run_dir} "
                        "or choose another --out")
    run.check_writable()
    check_run_config(task_cls, config)
    if task_cls.output_kind not in FUSABLE:  # the folds' test outputs could not be fused
        raise UserError(f"{task_cls.name} predicts {task_cls.output_kind}, which k-fold cannot "
                        "fuse; use train (and ensembles of fusable homeworks)")
    kcfg = config["kfold"]
    set_cpu_threads(config["trainer"].threads)
    unfitted = task_cls(config)
    data_dir = data_dir_of(unfitted)
    train_data = unfitted.load_train(data_dir)
    n = unfitted.num_train(train_data)
    # fitted on every training item: it reads the test set and writes the fused submission;
    # each fold's task is fitted on that fold's training items alone
    task = unfitted.fitted(train_data, np.arange(n))
    test_data = task.load_test(data_dir)
    if task.num_test(test_data) == 0:
        raise UserError(f"{data_dir}: no test items; k-fold fuses the folds' test predictions, "
                        "so use train")
    folds = make_folds(n, kcfg.folds, seed=kcfg.seed, split=kcfg.split,
                       labels=task.fold_labels(train_data), groups=task.fold_groups(train_data))
    with run_logging(run_dir):
        say(f"run directory: {run_dir}")
        if not resume and distributed.is_main():
            save_config(config, run.config)
            fold_of = np.zeros(n, dtype=np.int64)
            for k, (_, held_out) in enumerate(folds, 1):
                fold_of[held_out] = k
            write_csv_atomic(run.folds, ("index", "fold"),
                             enumerate(fold_of.tolist()))
        results = []
        for k, (train_idx, held_out) in enumerate(folds, 1):
            fold = run.fold(k)
            if _exists(fold.oof):
                result = distributed.broadcast_object(load_torch_file(
                    fold.oof, missing="gone",
                    unreadable="damaged (truncated); delete it to train this fold again")
                    if distributed.is_main() else None)
                report(f"fold {k}/{len(folds)}: finished earlier, kept")
            else:
                report(f"fold {k}/{len(folds)}: training on {len(train_idx)}, "
                     f"holding out {len(held_out)}")
                fold_task = task_cls(fold_config(config, k)).fitted(train_data, train_idx)
                result = run_fold(fold_task, train_data, test_data, train_idx, held_out,
                                  fold.path, callbacks)
            shown = " ".join(f"{m} {v:.5g}" for m, v in result["metrics"].items())
            report(f"fold {k}/{len(folds)}: out-of-fold {shown}")
            results.append(result)
            if on_fold is not None:
                on_fold(k, result["metrics"])

        order = torch.argsort(torch.cat([r["index"] for r in results]))
        oof_out = take(concat([r["outputs"] for r in results]), order)
        oof_target = take(concat([r["targets"] for r in results]), order)
        # the folds' targets, in index order; spans are scored against the items' answers,
        # which only the labelled items hold
        everything = task.labelled_dataset(train_data, np.arange(n)) \
            if task.output_kind == "spans" else None
        overall = {k: float(v) for k, v in task.metrics(oof_out, oof_target,
                                                        dataset=everything).items()}
        shown = " ".join(f"{m} {v:.5g}" for m, v in overall.items())
        report(f"out-of-fold over all {n} items: {shown}")
        submission = run_dir / task.submission_name
        if distributed.is_main():  # the rest only writes files
            save_torch_file(run.oof, {"outputs": oof_out, "targets": oof_target,
                                      "metrics": overall})
            names = list(overall)
            rows = [[k, len(tr), len(va), *(r["metrics"][m] for m in names)]
                    for k, ((tr, va), r) in enumerate(zip(folds, results, strict=True), 1)]
            rows.append(["all", "", n, *overall.values()])
            write_csv_atomic(run.kfold, ["fold", "train", "held_out", *names], rows)
            submission = fuse_and_write(task, test_data, run.fold_dirs(), run_dir,
                                        method=kcfg.method)
            log.info("submission written to %s", submission)
    return {"run_dir": run_dir, "submission": submission, "oof": overall,
            "folds": [r["metrics"] for r in results]}


def predict_kfold(task_cls: type[Task], run_dir: str | Path, *, ckpt: str | None = None,
                  data_dir: str | None = None, tta: int | None = None) -> Path:
    """Predict the test set again with every fold model (e.g. with TTA) and fuse them."""
    run_dir = Path(run_dir)
    folds = RunDir(run_dir).fold_dirs()
    if not folds or not all(RunDir(f).oof.is_file() for f in folds):
        raise UserError(f"{run_dir}: the k-fold run is unfinished; continue it with "
                        f"kfold --resume {run_dir}")
    for fold in folds:
        predict_run(task_cls, fold, ckpt=ckpt, data_dir=data_dir, tta=tta)
    return ensemble_run(task_cls, folds, run_dir, data_dir=data_dir,
                        method=load_run_config(task_cls, run_dir)["kfold"].method)


def oof_value(oof: dict[str, float], monitor: str) -> float:
    """The out-of-fold metric that trainer.monitor names (valid_acc -> acc); a task with one
    metric (HW1: mse, which its valid_loss equals) uses it for valid_loss too."""
    metric = monitor.removeprefix("valid_")
    if metric in oof:
        return oof[metric]
    if len(oof) == 1:
        return next(iter(oof.values()))
    raise UserError(f"tune --folds: trainer.monitor={monitor!r} has no out-of-fold value; "
                    f"choose one of {', '.join('valid_' + k for k in oof)}")
