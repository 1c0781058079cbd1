"""The run-level config sections every task shares ([data], [predict], [kfold], [tune]): plain
dataclasses with their defaults and ranges, importing nothing but the config layer, so any
module may use them without pulling in the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.core.config import option
from common.engine.fusion import METHODS


@dataclass
class DataConfig:
    """Base of every task's [data] section."""

    dir: str = ""                     # data folder; --data and --demo set it
    # used by tasks that split train into train/valid
    valid_ratio: float = option(0.2, min=0.0, below=1.0)
    split_seed: int = 0


@dataclass
class PredictConfig:
    ckpt: str = "best"                # best | last | a path to a checkpoint
    # > 0: predict with the mean weights of the newest N kept checkpoints (the course's HW5
    # "average the last 5 epochs"; needs trainer.keep_checkpoints >= N); ckpt is then unused
    average: int = option(0, min=0)
    tta: int = option(0, min=0)  # test-time augmented views besides the plain one
    # the plain view's weight; the views share the rest
    tta_plain_weight: float = option(0.5, min=0.0, max=1.0)


@dataclass
class KFoldConfig:
    folds: int = option(5, min=2)
    # auto | kfold | stratified | group (auto: group when the task has groups, stratified for
    # classes, else kfold)
    split: str = option("auto", choices=("auto", "kfold", "stratified", "group"))
    seed: int = 0                     # shuffles the folds
    # fusion of the fold models: mean-prob (default), mean-logit or vote; regression: mean;
    # anomaly scores: rank (default), zscore or mean
    method: str = option("", choices=("", *METHODS))
    vary_seed: bool = True            # fold k trains with trainer.seed + k - 1


@dataclass
class TuneConfig:
    """[tune]: the study's defaults (the command line's --trials, --sampler ... win) and its
    search space, [tune.space]."""

    trials: int = option(20, min=1)
    timeout: float = option(0.0, min=0.0)          # seconds for this process; 0: none
    sampler: str = option("tpe", choices=("tpe", "random"))
    pruner: str = option("median", choices=("median", "hyperband", "none"))
    seed: int = 0                                   # the sampler's
    startup_trials: int = option(5, min=0)          # trials before TPE models and pruning starts
    warmup_evals: int = option(1, min=0)            # evaluations (k-fold: folds) before pruning
    space: dict = field(default_factory=dict)
