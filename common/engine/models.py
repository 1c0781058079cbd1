"""Small building blocks shared by several homeworks: MLPs, and for padded sequences (B, T, D)
of different lengths a padding mask, SpecAugment and torchaudio's Conformer blocks with the
padding masked. torchaudio is imported only when a Conformer or SpecAugment is built (the
speech homeworks install it); the rest of common never needs it."""

from __future__ import annotations

import torch
from torch import nn

from common.core.errors import UserError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh,
               "leaky_relu": nn.LeakyReLU, "elu": nn.ELU}


def build_mlp(in_features: int, hidden: list[int], out_features: int, *,
              activation: str = "relu", dropout: float = 0.0,
              batchnorm: bool = False) -> nn.Sequential:
    """Linear -> [BatchNorm] -> activation -> [Dropout] per hidden layer, then a linear head."""
    if activation not in ACTIVATIONS:
        raise UserError(f"model.activation={activation!r} is unknown; choose one of "
                        f"{', '.join(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if batchnorm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(ACTIVATIONS[activation]())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def check_heads(width: int, heads: int) -> None:
    """Attention splits its width among model.heads: one line where torch would assert."""
    if width % heads:
        divisors = [h for h in range(1, min(width, 16) + 1) if width % h == 0]
        raise UserError(f"model.heads={heads}: attention's width {width} must be a multiple "
                        f"of its heads; choose one of {', '.join(map(str, divisors))}")


def length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """True where a frame is padding, (B, T)."""
    return torch.arange(width, device=lengths.device)[None, :] >= lengths[:, None]


class SpecAugment(nn.Module):
    """SpecAugment's masks on (B, T, F) features while training (none in eval mode): per
    sequence, one band of at most `freq_mask` features and `time_masks` spans of at most
    `time_mask` frames set to 0, drawn independently per sequence (torchaudio's transforms,
    from torch's global RNG, so a resumed run draws the same)."""

    def __init__(self, freq_mask: int = 0, time_mask: int = 0, time_masks: int = 1):
        super().__init__()
        import torchaudio

        masks = []
        if freq_mask:
            masks.append(torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True))
        if time_mask:
            masks += [torchaudio.transforms.TimeMasking(time_mask, iid_masks=True)
                      for _ in range(time_masks)]
        self.masks = nn.Sequential(*masks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not len(self.masks):
            return x
        return self.masks(x.transpose(1, 2).unsqueeze(1)).squeeze(1).transpose(1, 2)


class ZeroPadding(nn.Module):
    """Zeros the padded frames of a (B, D, T) tensor: put before a Conformer block's depthwise
    convolution, which torchaudio leaves unmasked, so padding never leaks into real frames."""

    def __init__(self):
        super().__init__()
        self.pad: torch.Tensor | None = None   # (B, T), set by MaskedConformer for each forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.pad is None else x.masked_fill(self.pad[:, None, :], 0.0)


class MaskedConformer(nn.Module):
    """torchaudio's Conformer blocks over (B, T, d) with a (B, T) padding mask, each block with
    the padded frames zeroed before its depthwise convolution, so a padded sequence gives what
    it gives alone (the blocks are torchaudio's; their parameters keep torchaudio's names)."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, layers: int, kernel: int, *,
                 dropout: float = 0.0):
        super().__init__()
        from torchaudio.models import Conformer

        check_heads(d_model, heads)
        if kernel % 2 == 0:
            raise UserError(f"model.kernel={kernel} must be odd (the Conformer's depthwise "
                            "convolution keeps the sequence's length)")
        conformer = Conformer(d_model, heads, ff_dim, layers, kernel, dropout=dropout)
        self.conformer_layers = conformer.conformer_layers
        self.pad_zeroers = nn.ModuleList()
        for layer in self.conformer_layers:
            steps = list(layer.conv_module.sequential)  # pointwise, GLU | depthwise, ...
            self.pad_zeroers.append(ZeroPadding())
            layer.conv_module.sequential = nn.Sequential(*steps[:2], self.pad_zeroers[-1],
                                                         *steps[2:])

    def forward(self, h: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        for zeroer in self.pad_zeroers:
            zeroer.pad = pad
        try:
            x = h.transpose(0, 1)                 # torchaudio's blocks are time-first
            for layer in self.conformer_layers:
                x = layer(x, pad)
            return x.transpose(0, 1)
        finally:
            for zeroer in self.pad_zeroers:
                zeroer.pad = None
