"""HW1 networks, by model.arch: the course's MLP (widths model.hidden) from the selected
features to one value."""

from __future__ import annotations

from torch import nn

from common.models import Registry, build_mlp

ARCHS = Registry("model.arch")  # (model config, input features) -> model


@ARCHS.register("mlp")
def mlp(cfg, *, features: int) -> nn.Module:
    return build_mlp(features, cfg.hidden, 1, activation=cfg.activation, dropout=cfg.dropout,
                     batchnorm=cfg.batchnorm)
