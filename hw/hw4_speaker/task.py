"""HW4 task: speaker identification from log-mel features. Random crops for training (seeded
per (seed, epoch, item)), whole utterances in length buckets with padding masks for evaluation
and test; the course transformer or torchaudio's Conformer; mean, self-attentive or attentive
statistics pooling; softmax, additive-margin or additive-angular-margin heads; SpecAugment."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.config import option
from common.data import LengthBatchSampler, split_like_random_split, split_train_valid
from common.errors import UserError
from common.mix import classification_loss
from common.runtime import Salt, derive_seed, hashed_uniform
from common.submission import write_submission
from common.task import ClassificationTask, DataConfig
from hw.hw4_speaker import data as speech


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
    arch: str = option("transformer", choices=("transformer", "conformer"))
    d_model: int = option(80, min=8)
    heads: int = option(2, min=1)
    ff_dim: int = option(256, min=1)
    layers: int = option(1, min=1)
    kernel: int = option(15, min=1)         # conformer depthwise convolution (odd)
    dropout: float = option(0.1, min=0.0, below=1.0)
    subsample: bool = False                 # conv front end halving the frame rate twice
    pooling: str = option("mean", choices=("mean", "sap", "asp"))
    head: str = option("mlp", choices=("mlp", "softmax", "amsoftmax", "aamsoftmax"))
    embed_dim: int = option(0, min=0)       # margin heads: embedding size; 0: d_model
    margin: float = option(0.2, min=0.0)
    scale: float = option(30.0, min=1.0)
    freq_mask: int = option(0, min=0)       # SpecAugment (training only): max masked mel bins
    time_mask: int = option(0, min=0)       # and frames, one mask of each per utterance
    label_smoothing: float = option(0.0, min=0.0, below=1.0)


# --------------------------------------------------------------------------- datasets
class Utterances:
    """Utterances of a packed store, indexed a whole batch at a time: (features (B, T, 40)
    padded with -20, lengths (B,), labels (B,) when known). With `crop`, each item is a crop of
    that many frames (shorter ones whole), its start a pure function of (seed, epoch, item)."""

    batched_indexing = True

    def __init__(self, store: speech.PackedMels, rows: np.ndarray, labels: np.ndarray | None,
                 *, crop: int = 0, crop_max: int = 0, seed: int = 0):
        self.store, self.rows = store, np.asarray(rows, dtype=np.int64)
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        full = np.diff(store.offsets)[self.rows]
        self.crop, self.crop_max, self.seed, self.epoch = crop, crop_max, seed, 0
        self.lengths = np.minimum(full, crop) if crop else full  # what a batch holds

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _crop_len(self, idx: np.ndarray) -> int:
        if self.crop_max > self.crop:  # one length per batch, drawn from its first item
            u = hashed_uniform(self.seed, self.epoch + 7919, idx[:1])[0]
            return self.crop + int(u * (self.crop_max - self.crop + 1))
        return self.crop

    def __getitem__(self, idx):
        idx = np.asarray(torch.as_tensor(idx).reshape(-1), dtype=np.int64)
        rows = self.rows[idx]
        starts, full = self.store.offsets[rows], np.diff(self.store.offsets)[rows]
        take = full.copy()
        if self.crop:
            size = self._crop_len(idx)
            take = np.minimum(full, size)
            begin = np.floor(hashed_uniform(self.seed, self.epoch, idx)
                             * (full - take + 1)).astype(np.int64)
            starts = starts + begin
        width = int(take.max())
        frames = np.arange(width)[None, :]
        gather = np.minimum(starts[:, None] + frames, starts[:, None] + take[:, None] - 1)
        x = torch.from_numpy(np.asarray(self.store.array[gather.reshape(-1)],
                                        dtype=np.float32).reshape(len(idx), width, -1))
        lengths = torch.from_numpy(take)
        x[torch.from_numpy(frames >= take[:, None])] = speech.PAD_VALUE
        if self.labels is None:
            return x, lengths
        return x, lengths, self.labels[torch.from_numpy(idx)]

    def with_crop(self, crop: int, seed: int) -> Utterances:
        view = Utterances(self.store, self.rows, self.labels, crop=crop, seed=seed)
        return view


# --------------------------------------------------------------------------- model parts
def length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """True where a frame is padding, (B, T)."""
    return torch.arange(width, device=lengths.device)[None, :] >= lengths[:, None]


class MaskedPooling(nn.Module):
    """mean: the mean of the real frames; sap: a learned attention over frames; asp: the
    attention-weighted mean and standard deviation (twice the width)."""

    def __init__(self, kind: str, dim: int):
        super().__init__()
        self.kind = kind
        if kind in ("sap", "asp"):
            self.attention = nn.Sequential(nn.Linear(dim, dim // 2 or 1), nn.Tanh(),
                                           nn.Linear(dim // 2 or 1, 1))
        self.out_dim = 2 * dim if kind == "asp" else dim

    def forward(self, h: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        if self.kind == "mean":
            keep = (~pad).unsqueeze(-1).to(h.dtype)
            return (h * keep).sum(1) / keep.sum(1).clamp_min(1)
        score = self.attention(h).squeeze(-1).float().masked_fill(pad, -torch.inf)
        w = score.softmax(1).unsqueeze(-1).to(h.dtype)
        mean = (w * h).sum(1)
        if self.kind == "sap":
            return mean
        var = (w * h * h).sum(1) - mean * mean
        return torch.cat([mean, var.clamp_min(1e-6).sqrt()], -1)


class CosineHead(nn.Module):
    """Scaled cosines between the normalised embedding and normalised class weights; the
    margin is the loss's business (Task.loss), so predictions are the plain argmax."""

    def __init__(self, dim: int, classes: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale = scale

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.scale * nn.functional.linear(nn.functional.normalize(e.float(), dim=-1),
                                                 nn.functional.normalize(self.weight, dim=-1))


class Subsample(nn.Module):
    """Two stride-2 convolutions over (time, mel): a quarter of the frames, as speech
    Conformers start. Padded frames are zeroed before each convolution, so a padded utterance
    gives what it gives alone (the convolutions pad with zeros too)."""

    def __init__(self, d: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, d, 3, 2, 1), nn.Conv2d(d, d, 3, 2, 1)
        self.out = nn.Linear(d * math.ceil(math.ceil(speech.N_MELS / 2) / 2), d)

    @staticmethod
    def _zero_padding(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return h.masked_fill(length_mask(lengths, h.shape[2])[:, None, :, None], 0.0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        h = self._zero_padding(x.unsqueeze(1), lengths)
        lengths = (lengths + 1) // 2
        h = self._zero_padding(torch.relu(self.conv1(h)), lengths)
        lengths = (lengths + 1) // 2
        h = torch.relu(self.conv2(h))                        # (B, d, T/4, F/4)
        return self.out(h.permute(0, 2, 1, 3).flatten(2)), lengths


class ZeroPadding(nn.Module):
    """Zeros the padded frames of a (B, D, T) tensor: put before a Conformer block's depthwise
    convolution, which torchaudio leaves unmasked, so padding never leaks into real frames."""

    def __init__(self):
        super().__init__()
        self.pad: torch.Tensor | None = None   # (B, T), set by SpeakerNet for each forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.pad is None else x.masked_fill(self.pad[:, None, :], 0.0)


class SpeakerNet(nn.Module):
    def __init__(self, cfg: SpeakerModelConfig, classes: int):
        super().__init__()
        d = cfg.d_model
        self.subsample = Subsample(d) if cfg.subsample else None
        self.prenet = None if cfg.subsample else nn.Linear(speech.N_MELS, d)
        self.specaug = None
        if cfg.freq_mask or cfg.time_mask:
            import torchaudio

            self.specaug = nn.Sequential(
                torchaudio.transforms.FrequencyMasking(cfg.freq_mask, iid_masks=True),
                torchaudio.transforms.TimeMasking(cfg.time_mask, iid_masks=True))
        if cfg.arch == "conformer":
            from torchaudio.models import Conformer

            self.encoder = Conformer(d, cfg.heads, cfg.ff_dim, cfg.layers, cfg.kernel,
                                     dropout=cfg.dropout)
            self.pad_zeroers = nn.ModuleList()
            for layer in self.encoder.conformer_layers:
                steps = list(layer.conv_module.sequential)  # pointwise, GLU | depthwise, ...
                self.pad_zeroers.append(ZeroPadding())
                layer.conv_module.sequential = nn.Sequential(*steps[:2], self.pad_zeroers[-1],
                                                             *steps[2:])
        else:
            layer = nn.TransformerEncoderLayer(d, cfg.heads, cfg.ff_dim, cfg.dropout,
                                               batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.arch = cfg.arch
        self.pool = MaskedPooling(cfg.pooling, d)
        width = self.pool.out_dim
        if cfg.head == "mlp":  # the course: Linear, ReLU, Linear
            self.head = nn.Sequential(nn.Linear(width, d), nn.ReLU(), nn.Linear(d, classes))
        elif cfg.head == "softmax":
            self.head = nn.Linear(width, classes)
        else:
            emb = cfg.embed_dim or d
            self.head = nn.Sequential(nn.Linear(width, emb), CosineHead(emb, classes, cfg.scale))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.specaug is not None and self.training:
            x = self.specaug(x.transpose(1, 2).unsqueeze(1)).squeeze(1).transpose(1, 2)
        if self.subsample is not None:
            h, lengths = self.subsample(x, lengths)
        else:
            h = self.prenet(x)
        pad = length_mask(lengths, h.shape[1])
        if self.arch == "conformer":
            for zeroer in self.pad_zeroers:
                zeroer.pad = pad
            h, _ = self.encoder(h, lengths)
            for zeroer in self.pad_zeroers:
                zeroer.pad = None
        else:
            h = self.encoder(h, src_key_padding_mask=pad)
        return self.head(self.pool(h, pad))


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
    title = "HW4 speaker identification (ml2022spring-hw4)"
    data_config = SpeakerDataConfig
    model_config = SpeakerModelConfig
    submission_name = "output.csv"
    kaggle_competition = "ml2022spring-hw4"
    download_hint = "the course's Dataset.tar.gz.parta[a-d] (GitHub release " \
        "MachineLearningHW/ML_HW4_Dataset), joined and untarred; or run.py hw4 featurize"
    header = ("Id", "Category")
    num_classes = 600
    demo_answers = speech.DEMO_ANSWERS
    demo_baseline = "acc 0.644 (configs/hw4_sample.toml, measured)"

    def __init__(self, config):
        super().__init__(config)
        self.speakers: list[str] = []

    # --- data -----------------------------------------------------------------------------
    def _store(self, utts: speech.Utterances, desc: str) -> speech.PackedMels:
        cfg = self.config["data"]
        return speech.pack(utts, cache_dir=cfg.cache_dir, dtype=cfg.store_dtype, desc=desc)

    def load_train(self, data_dir: Path):
        utts = speech.load_train(data_dir)
        self.speakers = utts.speakers
        self.num_classes = len(self.speakers)  # mixup's one-hot width
        return utts, self._store(utts, "pack train")

    def load_test(self, data_dir: Path):
        utts = speech.load_test(data_dir)
        return utts, self._store(utts, "pack test")

    def num_train(self, data) -> int:
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

    def tta_view(self, dataset: Utterances, view: int) -> Utterances:
        seed = derive_seed(self.config["trainer"].seed, Salt.TTA, view)
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
    def build_model(self) -> nn.Module:
        if not self.speakers:
            raise UserError("hw4: the speakers are unknown; load the training data first")
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
        self.num_classes = len(self.speakers) or self.num_classes

    @classmethod
    def write_demo_data(cls, dest: Path) -> Path:
        return speech.write_demo_data(Path(dest))
