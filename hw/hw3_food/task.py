"""HW3 task: Food-11 from a uint8 image cache, torchvision v2 augmentation, the course's 5-block
CNN or from-scratch residual networks (never pretrained weights), 11 classes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from common.core.config import option
from common.core.errors import UserError
from common.data.images import ImageDataset, channel_stats
from common.data.loading import split_train_valid
from common.engine.sections import DataConfig
from common.engine.task import ClassificationTask
from common.experiments.submission import write_submission
from hw.hw3_food import data as food
from hw.hw3_food.model import build_network


@dataclass
class FoodDataConfig(DataConfig):
    # given: training/ vs validation/ | random: valid_ratio
    split: str = option("given", choices=("given", "random"))
    image_size: int = option(128, min=8)  # model input, pixels per side
    # side of the decoded cache (>= image_size); 0: image_size
    cache_size: int = option(0, min=0)
    # squash: (s, s) like the course | crop: centre square
    resize: str = option("squash", choices=("squash", "crop"))
    cache_dir: str = ".cache/images"  # where decoded caches are kept; "": memory only
    decode_workers: int = 0           # threads decoding JPEGs; 0: one per core
    skip_bad_images: bool = False     # unreadable files: error, or skip them with a warning
    normalize: bool = True            # per-channel mean/std of the training part
    augment: bool = True              # the training transforms below; false: centre view only
    crop_scale: list[float] = field(default_factory=lambda: [0.25, 1.0])  # RandomResizedCrop
    flip: bool = True
    rotation: float = option(0.0, min=0.0)  # degrees, random in [-r, r]
    color_jitter: float = option(0.0, min=0.0)  # brightness = contrast = saturation jitter
    # none | trivial | auto | rand (TrivialAugmentWide, AutoAugment ImageNet policy, RandAugment)
    policy: str = option("none", choices=("none", "trivial", "auto", "rand"))
    rand_ops: int = 2                 # RandAugment num_ops
    rand_magnitude: int = 9           # RandAugment magnitude
    erasing: float = option(0.0, min=0.0, max=1.0)  # RandomErasing probability
    tta_crop_scale: list[float] = field(default_factory=lambda: [0.6, 1.0])  # TTA views: a
                                      # random resized crop of this area and a flip, no colour


@dataclass
class FoodModelConfig:
    arch: str = "resnet"              # course_cnn | resnet (ours, sized below) | any torchvision
                                      # classification model name (resnet18, resnet50, ...):
                                      # model.py's ARCHS, then torchvision's own registry
    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])  # resnet stages
    blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    bottleneck: bool = False
    # conv3: 3x3 stride 1 | conv3s2: stride 2 | imagenet: 7x7 stride 2 + max pool
    # (torchvision resnets accept all three)
    stem: str = option("conv3", choices=("conv3", "conv3s2", "imagenet"))
    dropout: float = option(0.0, min=0.0, below=1.0)  # before the classifier
    label_smoothing: float = option(0.0, min=0.0, below=1.0)


class FoodTask(ClassificationTask):
    name = "hw3"
    data_config = FoodDataConfig
    model_config = FoodModelConfig
    submission_name = "submission.csv"
    num_classes = food.N_CLASSES
    header = ("Id", "Category")
    demo_answers = food.DEMO_TEST_LABELS

    def __init__(self, config):
        super().__init__(config)
        data = config["data"]
        self.cache_size = data.cache_size or data.image_size
        if self.cache_size < data.image_size:
            raise UserError(f"data.cache_size={data.cache_size} is smaller than "
                            f"data.image_size={data.image_size}")
        self.mean, self.std = [0.0] * 3, [255.0] * 3    # fitted state (`fit`)

    # --- data -----------------------------------------------------------------------------
    def _load(self, data_dir: Path, names: tuple[str, ...]) -> food.FoodImages:
        cfg = self.config["data"]
        return food.load_folders(data_dir, names, size=self.cache_size, resize=cfg.resize,
                                 cache_dir=cfg.cache_dir, skip_bad=cfg.skip_bad_images,
                                 workers=cfg.decode_workers)

    def load_train(self, data_dir: Path) -> food.FoodImages:
        return self._load(data_dir, ("training", "validation"))

    def load_test(self, data_dir: Path) -> food.FoodImages:
        return self._load(data_dir, ("test",))

    def split(self, images: food.FoodImages):
        cfg = self.config["data"]
        if cfg.split == "given":
            return np.flatnonzero(images.folder == 0), np.flatnonzero(images.folder == 1)
        return split_train_valid(len(images), cfg.valid_ratio, cfg.split_seed)  # random

    def fold_labels(self, images: food.FoodImages) -> np.ndarray:
        return images.labels.numpy()

    def _dataset(self, images: food.FoodImages, idx, transform=None) -> ImageDataset:
        idx = np.asarray(idx, dtype=np.int64)
        labels = None if images.labels is None else images.labels[torch.from_numpy(idx)]
        return ImageDataset(images.array, images.rows[idx], labels, transform=transform,
                            crop=self.config["data"].image_size,
                            seed=self.config["trainer"].seed)

    def labelled_dataset(self, images, idx):
        return self._dataset(images, idx)

    def fit(self, images, train_idx) -> dict:
        """The per-channel mean and std of the training images (data.normalize), else the
        plain 0..255 scaling."""
        if self.config["data"].normalize:
            mean, std = channel_stats(images.array, images.rows[train_idx])
            return {"mean": mean, "std": std}
        return {"mean": [0.0] * 3, "std": [255.0] * 3}

    def make_datasets(self, images, train_idx, valid_idx):
        train = self._dataset(images, train_idx, self.train_transform())
        return train, (self._dataset(images, valid_idx) if len(valid_idx) else None)

    def make_test_dataset(self, images):
        return self._dataset(images, np.arange(len(images)))

    # --- augmentation ---------------------------------------------------------------------
    def _crop(self, scale: list[float]) -> v2.Transform:
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise UserError(f"crop scale {scale} must be [min, max] with 0 < min <= max <= 1")
        return v2.RandomResizedCrop(self.config["data"].image_size, scale=tuple(scale),
                                    antialias=True)

    def train_transform(self) -> v2.Compose | None:
        """Cached HWC uint8 array -> PIL (the fastest backend at these sizes) -> augmented
        CHW uint8 tensor; None when augmentation is off."""
        cfg = self.config["data"]
        if not cfg.augment:
            return None
        steps = [self._crop(cfg.crop_scale)]
        if cfg.flip:
            steps.append(v2.RandomHorizontalFlip())
        if cfg.rotation:
            steps.append(v2.RandomRotation(cfg.rotation))
        if cfg.color_jitter:
            steps.append(v2.ColorJitter(cfg.color_jitter, cfg.color_jitter, cfg.color_jitter))
        policies = {"none": None, "trivial": v2.TrivialAugmentWide,
                    "auto": v2.AutoAugment, "rand": v2.RandAugment}
        if cfg.policy == "rand":
            steps.append(v2.RandAugment(num_ops=cfg.rand_ops, magnitude=cfg.rand_magnitude))
        elif policies[cfg.policy] is not None:
            steps.append(policies[cfg.policy]())
        steps.append(v2.PILToTensor())
        if cfg.erasing:
            steps.append(v2.RandomErasing(cfg.erasing))
        return v2.Compose([Image.fromarray, *steps])

    def tta_transform(self) -> v2.Compose:
        crop = self._crop(self.config["data"].tta_crop_scale)
        return v2.Compose([Image.fromarray, crop, v2.RandomHorizontalFlip(), v2.PILToTensor()])

    def tta_view(self, dataset: ImageDataset, view: int, seed: int) -> ImageDataset:
        return dataset.with_transform(self.tta_transform(), seed)

    # --- model and objective --------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return build_network(self.config["model"], image_size=self.config["data"].image_size,
                             num_classes=self.num_classes, mean=self.mean, std=self.std)

    def write_submission(self, images: food.FoodImages, outputs, path: Path) -> Path:
        return write_submission(path, self.header, images.ids, outputs.argmax(-1).numpy())

    # --- fitted state ---------------------------------------------------------------------
    def state_dict(self):
        return {"mean": self.mean, "std": self.std}

    def load_state_dict(self, state):
        self.mean = state.get("mean", self.mean)
        self.std = state.get("std", self.std)

    @classmethod
    def write_demo_data(cls, dest: Path) -> Path:
        return food.write_demo_data(Path(dest))
