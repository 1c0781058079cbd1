"""HW4 task: speaker identification from log-mel features. Random crops for training (seeded
per (seed, epoch, item)), whole utterances in length buckets with padding masks for evaluation
and test; the course transformer or torchaudio's Conformer; mean, self-attentive or attentive
statistics pooling; softmax, additive-margin or additive-angular-margin heads; SpecAugment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.core.config import option
from common.core.errors import UserError
from common.data.loading import LengthBatchSampler, split_like_random_split, split_train_valid
from common.data.mix import classification_loss
from common.data.ragged import Ragged
from common.engine.sections import DataConfig
from common.engine.task import ClassificationTask
from common.experiments.submission import write_submission
from hw.hw4_speaker import data as speech
from hw.hw4_speaker.data import Utterances
from hw.hw4_speaker.model import ENCODERS, HEADS, POOLINGS, SpeakerNet


@dataclass
class SpeakerDataConfig(DataConfig):
    valid_ratio: float = option(0.1, min=0.0, below=1.0)
    split_seed: int = 87
    # course: torch.randperm after seed 87, as random_split does | random: split_train_valid
    split: str = option("course", choices=("course", "random"))
    segment_len: int = option(128, min=8)   # training crop, frames (10 ms each)
    segment_max: int = option(0, min=0)     # > segment_len: crop length drawn per batch
    eval_max_frames: int = option(20000, min=1)  # padded frames per evaluation batch
    store_dtype: str = option("float32", choices=("float32", "float16"))
    cache_dir: str = ".cache/hw4"           # the packed features; "": memory only
    tta_crop: int = option(256, min=8)      # test-time views: a random crop this long


@dataclass
class SpeakerModelConfig:
    arch: str = option("transformer", choices=ENCODERS.names())
    d_model: int = option(80, min=8)
    heads: int = option(2, min=1)
    ff_dim: int = option(256, min=1)
    layers: int = option(1, min=1)
    kernel: int = option(15, min=1)         # conformer depthwise convolution (odd)
    dropout: float = option(0.1, min=0.0, below=1.0)
    subsample: bool = False                 # conv front end halving the frame rate twice
    pooling: str = option("mean", choices=POOLINGS)
    head: str = option("mlp", choices=HEADS.names())
    embed_dim: int = option(0, min=0)       # margin heads: embedding size; 0: d_model
    margin: float = option(0.2, min=0.0)
    scale: float = option(30.0, min=1.0)
    freq_mask: int = option(0, min=0)       # SpecAugment (training only): max masked mel bins
    time_mask: int = option(0, min=0)       # and frames, one mask of each per utterance
    label_smoothing: float = option(0.0, min=0.0, below=1.0)


def margin_logits(logits: torch.Tensor, target: torch.Tensor, *, kind: str, margin: float,
                  scale: float) -> torch.Tensor:
    """The target class's scaled cosine with the margin applied: s(cos - m) for amsoftmax,
    s cos(theta + m) for aamsoftmax."""
    one_hot = nn.functional.one_hot(target, logits.shape[-1]).bool()
    if kind == "amsoftmax":
        return torch.where(one_hot, logits - scale * margin, logits)
    cos = (logits / scale).clamp(-1 + 1e-7, 1 - 1e-7)
    shifted = torch.cos(torch.acos(cos) + margin) * scale
    return torch.where(one_hot, shifted, logits)


# --------------------------------------------------------------------------- task
class SpeakerTask(ClassificationTask):
    name = "hw4"
    data_config = SpeakerDataConfig
    model_config = SpeakerModelConfig
    submission_name = "output.csv"
    header = ("Id", "Category")
    demo_answers = speech.DEMO_ANSWERS

    def __init__(self, config):
        super().__init__(config)
        self.speakers: list[str] = []     # fitted state (`fit`)

    # --- data -----------------------------------------------------------------------------
    def _store(self, utts: speech.Recordings, desc: str) -> Ragged:
        cfg = self.config["data"]
        return speech.pack(utts, cache_dir=cfg.cache_dir, dtype=cfg.store_dtype, desc=desc)

    def load_train(self, data_dir: Path):
        utts = speech.load_train(data_dir)
        return utts, self._store(utts, "pack train")

    def fit(self, data, train_idx) -> dict:
        """The speakers named in the training metadata (every one, in its order)."""
        return {"speakers": list(data[0].speakers)}

    def load_test(self, data_dir: Path):
        utts = speech.load_test(data_dir)
        return utts, self._store(utts, "pack test")

    def num_train(self, data) -> int:
        return len(data[0])

    def num_test(self, data) -> int:
        return len(data[0])

    def split(self, data):
        cfg, n = self.config["data"], len(data[0])
        split = split_train_valid if cfg.split == "random" else split_like_random_split
        return split(n, cfg.valid_ratio, cfg.split_seed)

    def fold_labels(self, data) -> np.ndarray:
        return data[0].labels

    def labelled_dataset(self, data, idx):
        utts, store = data
        return Utterances(store, idx, utts.labels[idx])

    def make_datasets(self, data, train_idx, valid_idx):
        utts, store = data
        cfg = self.config["data"]
        train = Utterances(store, train_idx, utts.labels[train_idx], crop=cfg.segment_len,
                           crop_max=cfg.segment_max, seed=self.config["trainer"].seed)
        valid = self.labelled_dataset(data, valid_idx) if len(valid_idx) else None
        return train, valid

    def make_test_dataset(self, data):
        utts, store = data
        return Utterances(store, np.arange(len(utts)), None)

    def tta_view(self, dataset: Utterances, view: int, seed: int) -> Utterances:
        return dataset.with_crop(self.config["data"].tta_crop, seed)

    def batch_sampler(self, dataset, *, train, batch_size, seed, drop_last, as_tensor, rank,
                      world):
        if train or dataset.crop:  # equal-length crops: fixed-size batches
            return super().batch_sampler(dataset, train=train, batch_size=batch_size,
                                         seed=seed, drop_last=drop_last, as_tensor=as_tensor,
                                         rank=rank, world=world)
        return LengthBatchSampler(dataset.lengths, max_tokens=self.config["data"].eval_max_frames,
                                  batch_size=batch_size, shuffle=False, as_tensor=as_tensor,
                                  rank=rank, world=world, even=False)

    # --- model and objective --------------------------------------------------------------
    def class_count(self) -> int:
        """The speakers of the training data (600 in the course's)."""
        return len(self.speakers)

    def build_model(self) -> nn.Module:
        if not self.speakers:
            raise UserError("hw4: the speakers are unknown; build the model with a task fitted "
                            "on the training data (Task.fitted)")
        return SpeakerNet(self.config["model"], len(self.speakers))

    def forward(self, model, batch):
        return model(batch[0], batch[1])

    def loss(self, output, batch):
        cfg, target = self.config["model"], batch[-1]
        if cfg.head in ("amsoftmax", "aamsoftmax") and not target.is_floating_point():
            output = margin_logits(output.float(), target, kind=cfg.head, margin=cfg.margin,
                                   scale=cfg.scale)
        return classification_loss(output, target, cfg.label_smoothing)

    def write_submission(self, data, outputs, path: Path) -> Path:
        utts, _ = data
        names = np.array(self.speakers, dtype=object)[outputs.argmax(-1).numpy()]
        return write_submission(path, self.header, utts.paths, names)

    # --- fitted state -----------------------------------------------------------------------
    def state_dict(self):
        return {"speakers": list(self.speakers)}

    def load_state_dict(self, state):
        self.speakers = list(state.get("speakers", self.speakers))

    @classmethod
    def write_demo_data(cls, dest: Path) -> Path:
        return speech.write_demo_data(Path(dest))
