"""HW8 face anomaly detection with autoencoders (ml2022spring-hw8): the task's hooks.

Made by `new --kind images`. What to change for what:

- the data files' layout: `data.py` (`load_train`, `load_test`, and `write_demo_data` for
  `--demo`);
- the augmentation: `train_transform` (torchvision v2 on each HWC uint8 image; test-time
  augmentation, `predict.tta`, reuses it), its options in `Hw8DataConfig`;
- the inputs' scaling: `make_datasets` fits the per-channel mean and std on the training part
  (saved in `state_dict`, so `predict` reproduces it from the checkpoint);
- the network: `model.py` (`ARCHS`), its options in `Hw8ModelConfig`;
- the loss and the metrics: `loss` and `metrics` (cross-entropy and accuracy come from
  ClassificationTask);
- the submission file: `header`, `submission_name` and `write_submission`.
The engine does the rest (loops, optimizer, checkpoints, k-fold, ensembles, tuning).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

from common.config import option
from common.errors import UserError
from common.images import ImageDataset, channel_stats
from common.sections import DataConfig
from common.submission import write_submission
from common.task import ClassificationTask
from hw.hw8_anomaly import data
from hw.hw8_anomaly.model import ARCHS


@dataclass
class Hw8DataConfig(DataConfig):
    image_size: int = option(32, min=8)     # pixels per side the images are resized to
    cache_dir: str = ".cache/images"        # where decoded images are kept; "": memory only
    augment: bool = True                    # the training transform below; false: none
    crop_scale: list[float] = field(default_factory=lambda: [0.6, 1.0])  # RandomResizedCrop
    flip: bool = True                       # random horizontal flips


@dataclass
class Hw8ModelConfig:
    arch: str = option("cnn", choices=ARCHS.names())
    widths: list[int] = option(factory=lambda: [32, 64, 128], min=1)  # one block per width
    dropout: float = option(0.0, min=0.0, below=1.0)
    label_smoothing: float = option(0.0, min=0.0, below=1.0)


class Hw8Task(ClassificationTask):
    name = "hw8"
    data_config = Hw8DataConfig
    model_config = Hw8ModelConfig
    submission_name = "submission.csv"
    header = ("id", "label")
    demo_answers = data.DEMO_ANSWERS
    demo_config = "hw8_cpu"          # the recipe `--demo` runs

    def __init__(self, config):
        super().__init__(config)
        self.classes: list[str] = []          # the training folders' class names
        self.mean, self.std = [0.0] * 3, [255.0] * 3   # fitted on the training images

    def class_count(self) -> int:
        return len(self.classes)

    # --- data -----------------------------------------------------------------------------
    def load_train(self, data_dir: Path) -> data.Images:
        cfg = self.config["data"]
        images = data.load_train(data_dir, cfg.image_size, cfg.cache_dir)
        self.classes = images.classes
        return images

    def load_test(self, data_dir: Path) -> data.Images:
        cfg = self.config["data"]
        return data.load_test(data_dir, cfg.image_size, self.classes, cfg.cache_dir)

    def num_train(self, images: data.Images) -> int:
        return len(images.ids)

    def fold_labels(self, images: data.Images) -> np.ndarray:
        return images.labels   # stratified folds

    def _dataset(self, images: data.Images, idx, transform=None) -> ImageDataset:
        idx = np.asarray(idx, dtype=np.int64)
        labels = None if images.labels is None else torch.from_numpy(images.labels[idx])
        return ImageDataset(images.array, idx, labels, transform=transform,
                            seed=self.config["trainer"].seed)

    def make_datasets(self, images, train_idx, valid_idx):
        self.mean, self.std = channel_stats(images.array, np.asarray(train_idx))
        valid = self._dataset(images, valid_idx) if len(valid_idx) else None
        return self._dataset(images, train_idx, self.train_transform()), valid

    def labelled_dataset(self, images, idx):
        return self._dataset(images, idx)

    def make_test_dataset(self, images):
        return self._dataset(images, np.arange(len(images.ids)))

    def train_transform(self) -> v2.Compose | None:
        """HWC uint8 array -> augmented CHW uint8 tensor; None when augmentation is off."""
        cfg = self.config["data"]
        if not cfg.augment:
            return None
        low, high = cfg.crop_scale if len(cfg.crop_scale) == 2 else (0, 0)
        if not 0 < low <= high <= 1:
            raise UserError(f"data.crop_scale={cfg.crop_scale}: give [min, max] with "
                            "0 < min <= max <= 1")
        steps = [v2.ToImage(), v2.RandomResizedCrop(cfg.image_size, scale=(low, high))]
        if cfg.flip:
            steps.append(v2.RandomHorizontalFlip())
        return v2.Compose(steps)

    def tta_view(self, dataset: ImageDataset, view: int, seed: int) -> ImageDataset:
        return dataset.with_transform(self.train_transform(), seed)

    # --- fitted state -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"classes": list(self.classes), "mean": self.mean, "std": self.std}

    def load_state_dict(self, state: dict) -> None:
        self.classes = list(state["classes"])
        self.mean, self.std = state["mean"], state["std"]

    # --- model and submission -----------------------------------------------------------------
    def build_model(self) -> nn.Module:
        cfg = self.config["model"]
        return ARCHS.build(cfg.arch, cfg, classes=self.class_count(), mean=self.mean,
                           std=self.std)

    def write_submission(self, images, outputs: torch.Tensor, path: Path) -> Path:
        labels = [self.classes[k] for k in outputs.argmax(-1).tolist()]
        return write_submission(path, self.header, images.ids, labels)

    @classmethod
    def write_demo_data(cls, dest: Path) -> Path:
        return data.write_demo_data(Path(dest))
