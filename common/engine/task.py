"""What a homework supplies to the common pipeline: data, model, objective, submission."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from common.core.config import Config
from common.core.errors import UserError
from common.data.loading import split_train_valid
from common.data.mix import MixConfig, classification_loss
from common.data.ranking import roc_auc
from common.engine.objective import Objective
from common.engine.optim import OptimConfig, SchedConfig
from common.engine.sections import DataConfig, KFoldConfig, PredictConfig, TuneConfig
from common.engine.trainer import TrainerConfig


class Task(Objective):
    """Subclass per homework. `config` is the resolved config (section name -> dataclass)."""

    name: ClassVar[str] = ""
    data_config: ClassVar[type] = DataConfig
    model_config: ClassVar[type] = object
    submission_name: ClassVar[str] = "submission.csv"
    demo_answers: ClassVar[str] = ""      # the demo test set's answer key, beside the data
    demo_version: ClassVar[int] = 1       # raise it when write_demo_data changes: demo folders
                                          # written by an older generator are written again
    # (how a homework is handed in and where its data comes from: its Homework entry)
    output_kind: ClassVar[str] = "values"   # values (regression) | logits (classes, last
                                            # dim) | spans (per item {span: score}) | scores
                                            # (anomaly scores, only their order counts): fusable;
                                            # any other name (text, tokens, images) is not
    num_classes: ClassVar[int] = 0          # fixed class count; class_count() may read state

    def __init__(self, config: Config):
        self.config = config

    @classmethod
    def with_state(cls, config: Config, state: dict[str, Any]) -> Task:
        """A task under `config` holding fitted `state` (what `fit` returned, or a checkpoint's
        "task" entry): the only way fitted state reaches a task."""
        task = cls(config)
        task.load_state_dict(state)
        return task

    def fitted(self, train_data: Any, train_idx: np.ndarray) -> Task:
        """This task's kind and config, holding what `fit` learns from train_data: the task the
        engine hands every hook after `load_train` (load_test, make_datasets, build_model, ...)."""
        return type(self).with_state(self.config, self.fit(train_data, train_idx))

    @property
    def label_smoothing(self) -> float:
        """model.label_smoothing where the model config has it (the one smoothing key: the
        loss's for hard targets, mixup's for the soft ones), else 0."""
        return getattr(self.config["model"], "label_smoothing", 0.0)

    def class_count(self) -> int:
        """Classes of the model's output (mixup's one-hot width): the fixed `num_classes`, or
        what the data said (a task whose classes come from its files overrides this)."""
        return self.num_classes

    def for_config(self, config: Config) -> Task:
        """A task of the same kind under another config, holding this one's fitted state."""
        return type(self).with_state(config, self.state_dict())

    @classmethod
    def schema(cls) -> dict[str, type]:
        return {"data": cls.data_config, "model": cls.model_config, "optim": OptimConfig,
                "sched": SchedConfig, "trainer": TrainerConfig, "mix": MixConfig,
                "predict": PredictConfig, "kfold": KFoldConfig, "tune": TuneConfig}

    # --- data: load_train and split read the files and need no fitted state; every other
    # hook is called on the task `fitted` returns. No hook sets state for another. ----------
    def load_train(self, data_dir: Path) -> Any:
        raise NotImplementedError

    def fit(self, train_data: Any, train_idx: np.ndarray) -> dict[str, Any]:
        """What the later hooks need, learned from the training data: a normaliser from the
        items train_idx, a vocabulary, the class list. Returned in `state_dict`'s form (it is
        saved in every checkpoint); must not change this task. Default: nothing to learn."""
        return {}

    def load_test(self, data_dir: Path) -> Any:
        raise NotImplementedError

    def num_train(self, train_data: Any) -> int:
        return len(train_data)

    def num_test(self, test_data: Any) -> int | None:
        """Test items, where a data set may have none (HW4 audio featurized without a test/
        folder): 0 means train writes no submission and predict refuses; None (the default):
        the loader already insists on test items."""
        return None

    def split(self, train_data: Any) -> tuple[np.ndarray, np.ndarray]:
        data = self.config["data"]
        return split_train_valid(self.num_train(train_data), data.valid_ratio, data.split_seed)

    def make_datasets(self, train_data: Any, train_idx: np.ndarray, valid_idx: np.ndarray):
        """(train, valid) datasets under the fitted state (valid None when valid_idx is
        empty)."""
        raise NotImplementedError

    def labelled_dataset(self, train_data: Any, idx: np.ndarray):
        """Items idx of the training data, with labels, under the fitted state."""
        raise NotImplementedError

    def make_test_dataset(self, test_data: Any):
        raise NotImplementedError

    def tta_view(self, dataset: Any, view: int, seed: int) -> Any:
        """The dataset (test or labelled, as built above) under test-time augmentation view
        `view`; its randomness comes from `seed` (the engine's, one per view; torch's global
        RNG is seeded with it too while the view is predicted)."""
        raise UserError(f"{self.name} has no test-time augmentation; set predict.tta = 0")

    # --- k-fold: what the folds keep together or balance ---------------------------------
    def fold_labels(self, train_data: Any) -> np.ndarray | None:
        """Class per training item, for stratified folds; None: not a classification task."""
        return None

    def fold_groups(self, train_data: Any) -> np.ndarray | None:
        """Group per training item (utterance, speaker) that a fold must not split."""
        return None

    # --- model and prediction -------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def write_submission(self, test_data: Any, outputs: torch.Tensor, path: Path) -> Path:
        raise NotImplementedError

    # --- the fitted state (normalisation, vocabularies): what `fit` returns, saved in
    # checkpoints; load_state_dict is how `with_state` declares it on the task -------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    @classmethod
    def write_demo_data(cls, dest: Path) -> Path:
        raise NotImplementedError

    @classmethod
    def demo_score(cls, submission: Path, data_dir: Path, config: Config
                   ) -> dict[str, float] | None:
        """The submission's score against the demo data's answer key (`demo_answers`, a file
        beside the data in the submission's format): mse for values, ROC AUC for scores (the
        key's second column 1 for an anomaly, 0 for a normal item), accuracy otherwise.
        `config` is the run's resolved config."""
        key = Path(data_dir) / cls.demo_answers
        if not cls.demo_answers or not key.is_file():
            return None
        truth = pd.read_csv(key, dtype=str).iloc[:, 1]
        got = pd.read_csv(submission, dtype=str).iloc[:, 1]
        if cls.output_kind == "values":
            return {"mse": float(((got.astype(float) - truth.astype(float)) ** 2).mean())}
        if cls.output_kind == "scores":
            return {"auc": roc_auc(got.astype(float).to_numpy(), truth.astype(int).to_numpy())}
        return {"em" if cls.output_kind == "spans" else "acc": float((got == truth).mean())}


class RegressionTask(Task):
    """A task whose model outputs one value per item (shape (batch, 1) or (batch,)): mean
    squared error as the loss and the metric."""

    def forward(self, model: nn.Module, batch) -> torch.Tensor:
        return model(batch[0]).squeeze(-1)

    def loss(self, output: torch.Tensor, batch) -> torch.Tensor:
        return nn.functional.mse_loss(output.float(), batch[-1])

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor,
                dataset=None) -> dict[str, float]:
        return {"mse": torch.mean((outputs - targets) ** 2).item()}


class ClassificationTask(Task):
    """A task whose model outputs class logits: cross-entropy on hard or mixed (soft) targets,
    with `model.label_smoothing` if the model config has it, and accuracy."""

    output_kind: ClassVar[str] = "logits"
    higher_is_better: ClassVar[tuple[str, ...]] = ("acc",)

    def loss(self, output: torch.Tensor, batch) -> torch.Tensor:
        return classification_loss(output, batch[-1], self.label_smoothing)

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor,
                dataset=None) -> dict[str, float]:
        return {"acc": (outputs.argmax(-1) == targets).float().mean().item()}
