"""Constructors chosen by name from a config key (models, heads, optimizers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common.core.errors import UserError


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
