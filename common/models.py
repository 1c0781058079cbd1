"""Small building blocks shared by several homeworks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from common.errors import UserError


class Registry:
    """Constructors by name, as timm's `create_model`: `@ARCHS.register("conformer")` on a
    function (or class), `ARCHS.build(name, ...)` to call it. `key` is the config key that
    names the choice, so an unknown name is one line listing the registered ones; config
    options take `choices=ARCHS.names()`."""

    def __init__(self, key: str):
        self.key = key
        self.builders: dict[str, Callable[..., Any]] = {}

    def register(self, *names: str):
        def add(builder):
            for name in names:
                if name in self.builders:
                    raise ValueError(f"{self.key}: {name!r} is registered twice")
                self.builders[name] = builder
            return builder
        return add

    def names(self) -> tuple[str, ...]:
        return tuple(self.builders)

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self.builders:
            raise UserError(f"{self.key}={name!r} is unknown; choose one of "
                            f"{', '.join(self.builders)}")
        return self.builders[name]

    def build(self, name: str, *args, **kwargs) -> Any:
        return self.get(name)(*args, **kwargs)

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
