"""HW8 face anomaly detection with autoencoders: the task's hooks.

Made by `new --kind images` (git log shows what changed since). A model learns to rebuild the
normal training faces; an image's anomaly score is its reconstruction error, the square root of
the summed squared error over its pixels (as the course). There are no labels to validate
with, so the validation part holds out normal faces and pairs each with a synthetic anomaly
made from it (`data.synthetic_anomaly`, seeded by data.anomaly_seed and the image); `valid_auc`
is the ROC AUC of the scores on those pairs, and `best.pt` is the checkpoint that ranks them
best. Scores fuse (k-fold, ensembles) by rank, z-score or mean (`kfold.method`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

from common.core.config import option
from common.data.images import ImageDataset, signed_pixels
from common.data.ranking import roc_auc
from common.engine.sections import DataConfig
from common.engine.task import Task
from common.experiments.submission import write_submission
from hw.hw8_anomaly import data
from hw.hw8_anomaly.model import ARCHS


@dataclass
class Hw8DataConfig(DataConfig):
    valid_ratio: float = option(0.05, min=0.0, below=1.0)  # normal faces held out for valid_auc
    anomaly_seed: int = 8                   # the synthetic anomalies' seed (with the image's row)
    flip: bool = False                      # random horizontal flips of the training faces


@dataclass
class Hw8ModelConfig:
    arch: str = option("fcn", choices=ARCHS.names())
    hidden: list[int] = option(factory=lambda: [1024, 256, 64], min=1)  # fcn: code widths
    widths: list[int] = option(factory=lambda: [32, 64, 128, 256], min=1)  # conv/vae/resae
    latent: int = option(128, min=1)        # resae: the bottleneck's width
    noise: float = option(0.0, min=0.0)     # training inputs + N(0, noise^2) (in [-1, 1] units)
    kl_weight: float = option(1.0, min=0.0)  # vae: loss = mse + kl_weight * mean KL per image


class Hw8Task(Task):
    name = "hw8"
    data_config = Hw8DataConfig
    model_config = Hw8ModelConfig
    submission_name = "submission.csv"
    header = ("ID", "score")
    output_kind = "scores"
    higher_is_better = ("auc",)
    demo_answers = data.DEMO_ANSWERS

    def __init__(self, config):
        super().__init__(config)
        self.side = 0      # fitted state (`fit`): the training faces' side in pixels

    # --- data -----------------------------------------------------------------------------
    def load_train(self, data_dir: Path) -> data.Images:
        return data.load_train(data_dir)

    def fit(self, faces: data.Images, train_idx) -> dict:
        """The side the test faces must have and the model is built for."""
        return {"side": int(faces.array.shape[1])}

    def load_test(self, data_dir: Path) -> data.Images:
        return data.load_test(data_dir, self.side)

    def num_train(self, faces: data.Images) -> int:
        return len(faces.ids)

    def make_datasets(self, faces, train_idx, valid_idx):
        flip = v2.Compose([v2.ToImage(), v2.RandomHorizontalFlip()]) \
            if self.config["data"].flip else None
        train = ImageDataset(faces.array, np.asarray(train_idx), transform=flip,
                             seed=self.config["trainer"].seed)
        return train, (self.labelled_dataset(faces, valid_idx) if len(valid_idx) else None)

    def labelled_dataset(self, faces, idx):
        """Held-out normal faces paired with their synthetic anomalies (targets [0, 1])."""
        return data.AnomalyPairs(faces.array, idx, self.config["data"].anomaly_seed)

    def make_test_dataset(self, faces):
        return ImageDataset(faces.array, np.arange(len(faces.ids)))

    # --- objective ------------------------------------------------------------------------
    def forward(self, model: nn.Module, batch):
        """(reconstruction, KL per image, the clean input in [-1, 1]); training inputs get
        model.noise Gaussian noise (a denoising autoencoder)."""
        x = signed_pixels(batch[0])
        noise = self.config["model"].noise
        seen = x + noise * torch.randn_like(x) if model.training and noise else x
        recon, kl = model(seen)
        return recon, kl, x

    def loss(self, output, batch) -> torch.Tensor:
        recon, kl, x = output
        loss = nn.functional.mse_loss(recon.float(), x)
        if self.config["model"].arch == "vae":
            loss = loss + self.config["model"].kl_weight * kl.float().mean()
        return loss

    @staticmethod
    def errors(output) -> torch.Tensor:
        """The anomaly score of each image: sqrt of its summed squared reconstruction error."""
        recon, _, x = output
        return (recon.float() - x).pow(2).flatten(1).sum(1).sqrt()

    def validation_step(self, model, batch):
        normal, odd, target = batch
        output = self.forward(model, (normal,))
        scores = torch.stack([self.errors(output),
                              self.errors(self.forward(model, (odd,)))], dim=1)
        return scores, target, self.loss(output, batch)

    def predict_step(self, model, batch):
        return self.errors(self.forward(model, batch))

    def metrics(self, outputs, targets, dataset=None) -> dict[str, float]:
        return {"auc": roc_auc(outputs, targets)}

    # --- fitted state ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"side": self.side}

    def load_state_dict(self, state: dict) -> None:
        self.side = int(state["side"])

    # --- model and submission -------------------------------------------------------------
    def build_model(self) -> nn.Module:
        cfg = self.config["model"]
        return ARCHS.build(cfg.arch, cfg, side=self.side)

    def write_submission(self, faces, outputs: torch.Tensor, path: Path) -> Path:
        return write_submission(path, self.header, faces.ids, outputs.double().numpy())

    @classmethod
    def write_demo_data(cls, dest: Path) -> Path:
        return data.write_demo_data(Path(dest))
