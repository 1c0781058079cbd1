"""Small building blocks shared by several homeworks."""

from __future__ import annotations

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
