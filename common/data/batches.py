"""Batches and predictions of any structure: tensors, lists, tuples and dicts of them."""

from __future__ import annotations

from typing import Any

import torch


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(b, device, non_blocking) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    return batch


def to_cpu(value: Any) -> Any:
    """Detached CPU copies; half-precision floats (AMP outputs) widened to float32, integer
    tensors (token ids, classes) kept as they are."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.dtype in (torch.float16, torch.bfloat16):
            value = value.float()
        return value.cpu()
    if isinstance(value, list | tuple):
        return type(value)(to_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    return value


def concat(parts: list[Any]) -> Any:
    """Join per-batch (or per-rank) results along the item dimension: tensors are
    concatenated, lists chained, tuples and dicts joined field by field; None stays None."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, list):
        return [item for part in parts for item in part]
    if isinstance(first, tuple):
        return tuple(concat([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: concat([p[k] for p in parts]) for k in first}
    raise TypeError(f"cannot join predictions of type {type(first).__name__}; give the task "
                    "a collate method")


def take(value: Any, index: torch.Tensor) -> Any:
    """Items `index` (a 1-D long tensor) of a joined result, in that order."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value[index]
    if isinstance(value, list):
        return [value[i] for i in index.tolist()]
    if isinstance(value, tuple):
        return tuple(take(v, index) for v in value)
    if isinstance(value, dict):
        return {k: take(v, index) for k, v in value.items()}
    raise TypeError(f"cannot reorder predictions of type {type(value).__name__}")


def count_items(value: Any) -> int:
    if isinstance(value, tuple):
        return count_items(value[0])
    if isinstance(value, dict):
        return count_items(next(iter(value.values())))
    return len(value)
