"""Checkpoints written atomically and validated on load."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from common.errors import UserError
from common.io import atomic_write

FORMAT = "mlhw-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write to a temporary file, fsync, then rename: a kill never leaves a half file."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    with atomic_write(path, "wb") as fh:
        torch.save(payload, fh)


def load_torch_file(path: str | Path, *, missing: str, unreadable: str) -> Any:
    """torch.load (tensors only, to the CPU) where a missing or damaged file is a UserError:
    `missing` is the message for an absent file, `unreadable` for a damaged one, where
    {reason} stands for what torch reported."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {missing}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: {unreadable.format(reason=reason)}") from None


def load_checkpoint(path: str | Path, required: tuple[str, ...] = ("model",)) -> dict[str, Any]:
    """Load and check a checkpoint; a missing, truncated or foreign file is a UserError."""
    path = Path(path)
    state = load_torch_file(
        path, missing="checkpoint not found; check the run directory or --ckpt",
        unreadable="not a readable checkpoint (truncated or corrupt: {reason}); use another "
        "checkpoint or retrain")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a checkpoint written by this suite; pass one from a run "
                        "directory's checkpoints/")
    if state.get("version") != VERSION:
        raise UserError(f"{path}: checkpoint version {state.get('version')} is not supported "
                        f"(expected {VERSION}); retrain with this version")
    missing = [key for key in required if key not in state]
    if missing:
        raise UserError(f"{path}: checkpoint lacks {', '.join(missing)}; use checkpoints/last.pt "
                        "to resume")
    return state


def prediction_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to predict with: the EMA weights a last.pt keeps when trainer.ema is on,
    else "model" (best.pt and step-*.pt already hold the EMA weights as "model")."""
    ema = state.get("ema")
    if ema is None:
        return state["model"]
    return {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}
