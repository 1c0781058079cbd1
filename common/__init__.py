"""Reusable training library for the homeworks, in layers (each imports only those above it
in this list): core (errors, configs, runtime), data, engine (Task, Trainer), experiments
(pipeline, k-fold, studies), scaffold (`new`); cli and homework sit on top.

The public face below is imported lazily, so `import common` stays cheap (no torch)."""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "UserError": "common.core.errors",
    "option": "common.core.config",
    "Registry": "common.core.registry",
    "Task": "common.engine.task",
    "ClassificationTask": "common.engine.task",
    "RegressionTask": "common.engine.task",
    "Trainer": "common.engine.trainer",
    "Callback": "common.engine.trainer",
}

__all__ = list(_PUBLIC)

def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'common' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value
