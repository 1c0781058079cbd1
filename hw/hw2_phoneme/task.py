"""HW2 task: frames in context windows (an MLP or a BiLSTM/BiGRU over the window), or whole
utterances in frame-budget batches (a tagger labelling every frame at once); 41 classes, the
outputs one row of logits per frame in the split's frame order either way."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from common.core.config import option
from common.core.errors import UserError
from common.data.loading import LengthBatchSampler
from common.engine.models import ACTIVATIONS
from common.engine.sections import DataConfig
from common.engine.task import ClassificationTask
from common.experiments.submission import write_submission
from hw.hw2_phoneme import data as phone
from hw.hw2_phoneme.model import ARCHS, CELLS


@dataclass
class PhonemeDataConfig(DataConfig):
    valid_ratio: float = option(0.2, min=0.0, below=1.0)  # of the utterances (the course: 80/20)
    split_seed: int = 1337            # the course shuffles train_split.txt with random.seed(1337)
    concat_nframes: int = option(1, min=1)  # n (odd): frame t sees frames t-(n-1)/2 .. t+(n-1)/2
    # tagger: padded frames (longest utterance x utterances) per batch; trainer.batch_size
    # caps the utterances
    max_frames: int = option(16000, min=1)


@dataclass
class PhonemeModelConfig:
    # mlp | lstm | gru (bidirectional, over the window) | tagger (over whole utterances)
    arch: str = option("mlp", choices=ARCHS.names())
    cell: str = option("lstm", choices=CELLS)  # tagger: bidirectional lstm | gru | conformer
    hidden: list[int] = option(factory=lambda: [256, 256], min=1)  # mlp widths / rnn head
    activation: str = option("relu", choices=tuple(ACTIVATIONS))
    dropout: float = option(0.0, min=0.0, below=1.0)
    batchnorm: bool = False
    rnn_hidden: int = option(256, min=1)  # per direction
    rnn_layers: int = option(2, min=1)
    rnn_dropout: float = option(0.0, min=0.0, below=1.0)
    label_smoothing: float = option(0.0, min=0.0, below=1.0)
    # tagger with cell = "conformer": width 2 x rnn_hidden, rnn_layers blocks, rnn_dropout
    heads: int = option(4, min=1)
    ff_dim: int = option(0, min=0)          # 0: 4 x the width
    kernel: int = option(15, min=1)         # depthwise convolution, frames (odd)
    # tagger, training only: SpecAugment, per utterance one band of at most freq_mask of the
    # input features and time_masks spans of at most time_mask frames set to 0
    freq_mask: int = option(0, min=0)
    time_mask: int = option(0, min=0)
    time_masks: int = option(1, min=1)


def split_utterances(n_utt: int, valid_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The course's split: shuffle the utterance list with Python's random.seed(seed), the first
    int((1 - valid_ratio) * n) train. Returns sorted utterance indices."""
    if not 0.0 <= valid_ratio < 1.0:
        raise UserError(f"data.valid_ratio={valid_ratio} must be in [0, 1)")
    order = list(range(n_utt))
    random.Random(seed).shuffle(order)
    n_train = int((1.0 - valid_ratio) * n_utt)
    return np.sort(order[:n_train]), np.sort(order[n_train:])


class PhonemeTask(ClassificationTask):
    name = "hw2"
    data_config = PhonemeDataConfig
    model_config = PhonemeModelConfig
    submission_name = "prediction.csv"
    num_classes = phone.N_CLASSES
    header = ("Id", "Class")
    demo_version = 2   # 2: labels depend on a marker phone often 30+ frames back
    demo_answers = phone.DEMO_ANSWERS

    # --- data -----------------------------------------------------------------------------
    def load_train(self, data_dir: Path) -> phone.Frames:
        return phone.load_split(data_dir, "train")

    def load_test(self, data_dir: Path) -> phone.Frames:
        return phone.load_split(data_dir, "test")

    def num_train(self, frames: phone.Frames) -> int:
        return frames.num_frames

    def split(self, frames: phone.Frames):
        cfg = self.config["data"]
        train_utt, valid_utt = split_utterances(len(frames.ids), cfg.valid_ratio, cfg.split_seed)
        return frames.frames_of(train_utt), frames.frames_of(valid_utt)

    def fold_groups(self, frames: phone.Frames) -> np.ndarray:
        return frames.utterance_of_frame()  # k-fold never splits an utterance

    @property
    def tagger(self) -> bool:
        """Whole utterances in, every frame labelled (model.arch = "tagger")."""
        return self.config["model"].arch == "tagger"

    def _windows(self, frames: phone.Frames, idx):
        n = self.config["data"].concat_nframes
        if self.tagger:
            return phone.Utterances(frames, idx, n)
        return phone.FrameWindows(frames, idx, n, flat=self.config["model"].arch == "mlp")

    def labelled_dataset(self, frames, idx):
        return self._windows(frames, idx)

    def make_datasets(self, frames, train_idx, valid_idx):
        mix = self.config["mix"]
        if self.tagger and (mix.mixup_alpha > 0 or mix.cutmix_alpha > 0):
            raise UserError("mix.mixup_alpha / mix.cutmix_alpha: the tagger's batches are "
                            "whole utterances, which mixup cannot mix; set them to 0 (use "
                            "model.time_mask / freq_mask, label_smoothing and dropout)")
        valid = self._windows(frames, valid_idx) if len(valid_idx) else None
        return self._windows(frames, train_idx), valid

    def make_test_dataset(self, frames):
        return self._windows(frames, np.arange(frames.num_frames))

    def batch_sampler(self, dataset, *, train, batch_size, seed, drop_last, as_tensor, rank,
                      world):
        """The tagger's batches: whole utterances within data.max_frames padded frames (and
        at most batch_size of them): for training, packed once from the utterances sorted by
        length and shuffled in order per (seed, epoch); for evaluation, in dataset order, so
        the frames' logits join in the split's frame order."""
        if not self.tagger:
            return super().batch_sampler(dataset, train=train, batch_size=batch_size,
                                         seed=seed, drop_last=drop_last, as_tensor=as_tensor,
                                         rank=rank, world=world)
        return LengthBatchSampler(dataset.lengths, max_tokens=self.config["data"].max_frames,
                                  batch_size=batch_size, shuffle=train, sort=train, seed=seed,
                                  as_tensor=as_tensor, rank=rank, world=world, even=train)

    # --- model and objective ------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return ARCHS.build(self.config["model"].arch, self.config["model"],
                           concat_nframes=self.config["data"].concat_nframes)

    def forward(self, model, batch):
        return model(batch[0], batch[1]) if self.tagger else model(batch[0])

    def count(self, batch):
        """Frames: the tagger's loss is a mean over the batch's real frames."""
        return batch[1].sum() if self.tagger else len(batch[0])

    def write_submission(self, frames, outputs, path: Path) -> Path:
        classes = outputs.argmax(-1).numpy()
        return write_submission(path, self.header, range(frames.num_frames), classes)

    @classmethod
    def write_demo_data(cls, dest: Path) -> Path:
        return phone.write_demo_data(Path(dest))
