"""The networks, chosen by model.arch.

Register another with `@ARCHS.register("name")`; its config keys go in the task's
ModelConfig. A model takes uint8 (B, 3, S, S) images and scales them itself (its `mean` and
`std` are the task's fitted per-channel statistics, in 0..255 units)."""

from __future__ import annotations

import torch
from torch import nn

from common.models import Registry

ARCHS = Registry("model.arch")  # (model config, classes, mean, std) -> model


class Scaled(nn.Module):
    """uint8 images -> (x - mean) / std in float."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


@ARCHS.register("cnn")
def cnn(cfg, *, classes: int, mean: list[float], std: list[float]) -> nn.Module:
    """Blocks of 3x3 convolution, batch norm, ReLU and 2x2 max pooling (one per width), global
    average pooling, dropout, a linear classifier."""
    layers: list[nn.Module] = [Scaled(mean, std)]
    width = 3
    for out in cfg.widths:
        layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                   nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        width = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(cfg.dropout),
               nn.Linear(width, classes)]
    return nn.Sequential(*layers)
