"""A tiny classification task built only on `common`, as a new assignment would be: three noisy
Gaussian blobs in 2-D, stored as .npz files, grouped in 'speakers' for grouped folds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from common.engine.models import build_mlp
from common.engine.task import ClassificationTask
from common.experiments.submission import write_submission

CENTRES = np.array([[0.0, 2.0], [1.8, -1.0], [-1.8, -1.0]], dtype=np.float32)


@dataclass
class BlobsModelConfig:
    hidden: list[int] = field(default_factory=lambda: [32])


def _blobs(rng: np.random.Generator, n: int, noise: float):
    y = rng.integers(0, 3, n)
    x = CENTRES[y] + rng.normal(0, noise, (n, 2)).astype(np.float32)
    return x.astype(np.float32), y


def write_blobs(dest: Path, n_train: int = 600, n_test: int = 150, noise: float = 1.2) -> Path:
    rng = np.random.default_rng(0)
    dest.mkdir(parents=True, exist_ok=True)
    x, y = _blobs(rng, n_train, noise)
    np.savez(dest / "train.npz", x=x, y=y, group=np.arange(n_train) // 10)
    xt, yt = _blobs(rng, n_test, noise)
    np.savez(dest / "test.npz", x=xt, y=yt)
    return dest


class NoisyView(Dataset):
    """A test-time view: the inputs plus fresh Gaussian noise drawn from torch's RNG."""

    def __init__(self, base: TensorDataset, scale: float = 0.3):
        self.base, self.scale = base, scale

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        item = self.base[i]
        return (item[0] + self.scale * torch.randn_like(item[0]), *item[1:])


class BlobsTask(ClassificationTask):
    name = "blobs"
    model_config = BlobsModelConfig
    num_classes = 3
    header = ("Id", "Class")

    def load_train(self, data_dir):
        return dict(np.load(Path(data_dir) / "train.npz"))

    def load_test(self, data_dir):
        return dict(np.load(Path(data_dir) / "test.npz"))

    def num_train(self, data):
        return len(data["y"])

    def fold_labels(self, data):
        return data["y"]

    def labelled_dataset(self, data, idx):
        return TensorDataset(torch.from_numpy(data["x"][idx]), torch.from_numpy(data["y"][idx]))

    def make_datasets(self, data, train_idx, valid_idx):
        valid = self.labelled_dataset(data, valid_idx) if len(valid_idx) else None
        return self.labelled_dataset(data, train_idx), valid

    def make_test_dataset(self, data):
        return TensorDataset(torch.from_numpy(data["x"]))

    def tta_view(self, dataset, view, seed):
        return NoisyView(dataset)

    def build_model(self) -> nn.Module:
        return build_mlp(2, self.config["model"].hidden, 3)

    def write_submission(self, data, outputs, path):
        return write_submission(path, self.header, list(range(len(outputs))),
                                outputs.argmax(-1).numpy())


class GroupedBlobsTask(BlobsTask):
    def fold_groups(self, data):
        return data["group"]
