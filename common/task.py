"""What a homework supplies to the common pipeline: data, model, objective, submission."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from common.config import Config
from common.data import split_train_valid
from common.optim import OptimConfig, SchedConfig
from common.trainer import Objective, TrainerConfig


@dataclass
class DataConfig:
    """Base of every task's [data] section."""

    dir: str = ""                     # data folder; --data and --demo set it
    valid_ratio: float = 0.2          # used by tasks that split train into train/valid
    split_seed: int = 0


@dataclass
class PredictConfig:
    ckpt: str = "best"                # best | last | a path to a checkpoint


class Task(Objective):
    """Subclass per homework. `config` is the resolved config (section name -> dataclass)."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    data_config: ClassVar[type] = DataConfig
    model_config: ClassVar[type] = object
    submission_name: ClassVar[str] = "submission.csv"
    download_hint: ClassVar[str] = ""

    def __init__(self, config: Config):
        self.config = config

    @classmethod
    def schema(cls) -> dict[str, type]:
        return {"data": cls.data_config, "model": cls.model_config, "optim": OptimConfig,
                "sched": SchedConfig, "trainer": TrainerConfig, "predict": PredictConfig}

    # --- data --------------------------------------------------------------------------
    def load_train(self, data_dir: Path) -> Any:
        raise NotImplementedError

    def load_test(self, data_dir: Path) -> Any:
        raise NotImplementedError

    def num_train(self, train_data: Any) -> int:
        return len(train_data)

    def split(self, train_data: Any) -> tuple[np.ndarray, np.ndarray]:
        data = self.config["data"]
        return split_train_valid(self.num_train(train_data), data.valid_ratio, data.split_seed)

    def make_datasets(self, train_data: Any, train_idx: np.ndarray, valid_idx: np.ndarray):
        """Fit any preprocessing on the training part only; return (train, valid) datasets."""
        raise NotImplementedError

    def labelled_dataset(self, train_data: Any, idx: np.ndarray):
        """Items idx of the training data, with labels, under the preprocessing already fitted."""
        raise NotImplementedError

    def make_test_dataset(self, test_data: Any):
        raise NotImplementedError

    # --- model and prediction -------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def write_submission(self, test_data: Any, outputs: torch.Tensor, path: Path) -> Path:
        raise NotImplementedError

    # --- state fitted on the data (normalisation, vocabularies), saved in checkpoints -----
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    @classmethod
    def write_demo_data(cls, dest: Path) -> Path:
        raise NotImplementedError
