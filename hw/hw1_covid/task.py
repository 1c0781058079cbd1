"""HW1 task: features from the header, optional SelectKBest, standardisation, a network (an MLP
or a Gaussian-kernel layer with a trained head), MSE."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.feature_selection import SelectKBest, f_regression, mutual_info_regression
from torch import nn
from torch.utils.data import TensorDataset

from common.core.config import option
from common.core.errors import UserError
from common.data.loading import as_float_tensor
from common.engine.models import ACTIVATIONS
from common.engine.sections import DataConfig
from common.engine.task import RegressionTask
from common.experiments.submission import write_submission
from hw.hw1_covid import data as covid
from hw.hw1_covid.model import ARCHS, fit_basis


@dataclass
class CovidDataConfig(DataConfig):
    valid_ratio: float = option(0.2, min=0.0, below=1.0)
    split_seed: int = 5201314
    features: str = option("all", choices=("all", "list", "kbest"))
    feature_list: list[str] = field(default_factory=list)  # names or globs, e.g. "d*.cli"
    k: int = option(16, min=1)        # kbest: how many features
    score: str = option("f_regression", choices=("f_regression", "mutual_info"))  # kbest
    include_id: bool = False          # the course sample feeds the id column too
    include_states: bool = True
    normalize: bool = True            # standardise with training-split statistics


@dataclass
class CovidModelConfig:
    arch: str = option("mlp", choices=ARCHS.names())
    hidden: list[int] = option(factory=lambda: [16, 8], min=1)
    activation: str = option("relu", choices=tuple(ACTIVATIONS))
    dropout: float = option(0.0, min=0.0, below=1.0)
    batchnorm: bool = False
    # rbf: kernel width per feature (scikit-learn's gamma times the number of features) and how
    # many training rows serve as centres (0: all; fewer: a seeded Nystroem subset)
    gamma: float = option(3.0, above=0.0)
    centres: int = option(0, min=0)


class CovidTask(RegressionTask):
    name = "hw1"
    data_config = CovidDataConfig
    model_config = CovidModelConfig
    submission_name = "pred.csv"
    header = ("id", "tested_positive")
    demo_answers = covid.DEMO_ANSWERS

    def __init__(self, config):
        super().__init__(config)
        # fitted state (`fit`), declared by load_state_dict
        self.columns: list[str] = []      # every feature column of the training file
        self.selected: list[str] = []     # the model's inputs, in order
        self.mean = self.std = None
        self.basis: dict | None = None    # the model's fitted state (model.arch = "rbf")

    # --- data -----------------------------------------------------------------------------
    def load_train(self, data_dir: Path) -> covid.CovidTable:
        return covid.load_train_table(data_dir)

    def load_test(self, data_dir: Path) -> covid.CovidTable:
        return covid.load_test_table(data_dir, self.columns)

    def candidate_columns(self, columns: list[str]) -> list[str]:
        cfg = self.config["data"]
        names = [c for c in columns if "." in c or cfg.include_states]
        return (["id"] if cfg.include_id else []) + names

    def select_features(self, table: covid.CovidTable, train_idx: np.ndarray) -> list[str]:
        cfg = self.config["data"]
        candidates = self.candidate_columns(table.columns)
        if cfg.features == "all":
            return candidates
        if cfg.features == "list":
            chosen = []
            for pattern in cfg.feature_list:
                hits = [c for c in [*candidates, "id"] if fnmatch.fnmatchcase(c, pattern)]
                if not hits:
                    raise UserError(f"data.feature_list: {pattern!r} matches no column of "
                                    f"{table.path}; columns look like AL, d1.cli, "
                                    "d4.tested_positive")
                chosen += [c for c in hits if c not in chosen]
            return chosen
        if cfg.features == "kbest":
            scores = {"f_regression": f_regression,
                      "mutual_info": lambda x, y: mutual_info_regression(
                          x, y, random_state=cfg.split_seed)}
            if cfg.score not in scores:
                raise UserError(f"data.score={cfg.score!r}: choose f_regression or mutual_info")
            k = min(cfg.k, len(candidates))
            selector = SelectKBest(scores[cfg.score], k=k)
            selector.fit(table.column_matrix(candidates)[train_idx], table.target[train_idx])
            return [c for c, keep in zip(candidates, selector.get_support(), strict=True) if keep]
        raise UserError(f"data.features={cfg.features!r}: choose all, list or kbest")

    def _inputs(self, table: covid.CovidTable, rows=slice(None)) -> torch.Tensor:
        x = table.column_matrix(self.selected)[rows]
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return as_float_tensor(x)

    def fit(self, table, train_idx) -> dict:
        """The columns, the features chosen and their scaling on the training rows, and the
        rbf model's basis."""
        selected = self.select_features(table, train_idx)
        x = table.column_matrix(selected)[train_idx]
        mean = std = None
        if self.config["data"].normalize:
            spread = x.std(axis=0)
            mean, std = x.mean(axis=0), np.where(spread > 1e-12, spread, 1.0)
            x = (x - mean) / std
        basis = fit_basis(self.config["model"], as_float_tensor(x).numpy(),
                          table.target[train_idx], seed=self.config["data"].split_seed)
        return {"columns": list(table.columns), "selected": selected,
                "mean": None if mean is None else torch.from_numpy(mean),
                "std": None if std is None else torch.from_numpy(std), "basis": basis}

    def make_datasets(self, table, train_idx, valid_idx):
        valid = self.labelled_dataset(table, valid_idx) if len(valid_idx) else None
        return self.labelled_dataset(table, train_idx), valid

    def labelled_dataset(self, table, idx):
        return TensorDataset(self._inputs(table, idx), as_float_tensor(table.target[idx]))

    def make_test_dataset(self, table):
        return TensorDataset(self._inputs(table))

    # --- fitted state, saved in every checkpoint -----------------------------------------
    def state_dict(self) -> dict:
        return {"columns": list(self.columns), "selected": list(self.selected),
                "mean": None if self.mean is None else torch.from_numpy(self.mean),
                "std": None if self.std is None else torch.from_numpy(self.std),
                "basis": self.basis}

    def load_state_dict(self, state: dict) -> None:
        self.columns, self.selected = list(state["columns"]), list(state["selected"])
        self.mean = None if state["mean"] is None else state["mean"].numpy()
        self.std = None if state["std"] is None else state["std"].numpy()
        self.basis = state.get("basis")

    # --- model and objective ------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return ARCHS.build(self.config["model"].arch, self.config["model"],
                           features=len(self.selected), basis=self.basis)

    def write_submission(self, table, outputs, path: Path) -> Path:
        return write_submission(path, self.header, table.ids.tolist(), outputs.double().numpy())

    @classmethod
    def write_demo_data(cls, dest: Path) -> Path:
        return covid.write_demo_data(Path(dest))
