"""HW4 networks: log-mels -> (a convolutional subsampler or a linear prenet) -> an encoder by
model.arch (the course's transformer or torchaudio's Conformer, both masking padded frames)
-> masked pooling by model.pooling (mean, self-attentive, attentive statistics) -> a head by
model.head (the course's MLP, softmax, or a cosine head for the margin losses)."""

from __future__ import annotations

import math

import torch
from torch import nn

from common.core.registry import Registry
from common.engine.models import MaskedConformer, SpecAugment, check_heads, length_mask
from hw.hw4_speaker.data import N_MELS

ENCODERS = Registry("model.arch")
HEADS = Registry("model.head")
POOLINGS = ("mean", "sap", "asp")


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
        self.out = nn.Linear(d * math.ceil(math.ceil(N_MELS / 2) / 2), d)

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


@ENCODERS.register("transformer")
class MaskedTransformer(nn.TransformerEncoder):
    """The course's encoder: nn.TransformerEncoder with a key padding mask."""

    def __init__(self, cfg):
        check_heads(cfg.d_model, cfg.heads)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, cfg.ff_dim, cfg.dropout,
                                           batch_first=True)
        super().__init__(layer, cfg.layers, enable_nested_tensor=False)

    def forward(self, h: torch.Tensor, lengths: torch.Tensor, pad: torch.Tensor):
        return super().forward(h, src_key_padding_mask=pad)


@ENCODERS.register("conformer")
class SpeakerConformer(MaskedConformer):
    """torchaudio's Conformer blocks, the padded frames masked (common's MaskedConformer)."""

    def __init__(self, cfg):
        super().__init__(cfg.d_model, cfg.heads, cfg.ff_dim, cfg.layers, cfg.kernel,
                         dropout=cfg.dropout)

    def forward(self, h: torch.Tensor, lengths: torch.Tensor, pad: torch.Tensor):
        return super().forward(h, pad)


@HEADS.register("mlp")
def mlp_head(cfg, width: int, classes: int) -> nn.Module:
    """The course's: Linear, ReLU, Linear."""
    return nn.Sequential(nn.Linear(width, cfg.d_model), nn.ReLU(),
                         nn.Linear(cfg.d_model, classes))


@HEADS.register("softmax")
def linear_head(cfg, width: int, classes: int) -> nn.Module:
    return nn.Linear(width, classes)


@HEADS.register("amsoftmax", "aamsoftmax")
def cosine_head(cfg, width: int, classes: int) -> nn.Module:
    emb = cfg.embed_dim or cfg.d_model
    return nn.Sequential(nn.Linear(width, emb), CosineHead(emb, classes, cfg.scale))


class SpeakerNet(nn.Module):
    def __init__(self, cfg, classes: int):
        super().__init__()
        d = cfg.d_model
        self.subsample = Subsample(d) if cfg.subsample else None
        self.prenet = None if cfg.subsample else nn.Linear(N_MELS, d)
        self.specaug = SpecAugment(cfg.freq_mask, cfg.time_mask) \
            if cfg.freq_mask or cfg.time_mask else None
        self.encoder = ENCODERS.build(cfg.arch, cfg)
        self.pool = MaskedPooling(cfg.pooling, d)
        self.head = HEADS.build(cfg.head, cfg, self.pool.out_dim, classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.specaug is not None:
            x = self.specaug(x)
        if self.subsample is not None:
            h, lengths = self.subsample(x, lengths)
        else:
            h = self.prenet(x)
        pad = length_mask(lengths, h.shape[1])
        return self.head(self.pool(self.encoder(h, lengths, pad), pad))
