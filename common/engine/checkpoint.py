"""Checkpoints written atomically and validated on load."""

from __future__ import annotations

import logging
import math
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from common.core.errors import UserError
from common.core.io import atomic_write, surfacing_write_errors
from common.engine.rundir import RunDir

FORMAT = "mlhw-checkpoint"
VERSION = 2            # 2: named optimizers and scalers, named EMA model
READABLE = (1, 2)      # versions whose weights predict; only VERSION resumes
log = logging.getLogger("mlhw")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write to a temporary file, fsync, then rename: a kill never leaves a half file."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    save_torch_file(path, payload)


def save_torch_file(path: str | Path, obj: Any) -> None:
    """torch.save written atomically; a full disk or a file-size limit is the OSError it is
    (torch reports it as a RuntimeError about the zip writer's position), the temporary file
    removed and nothing replaced."""
    with surfacing_write_errors(path), atomic_write(path, "wb") as fh:
        torch.save(obj, fh)


def load_torch_file(path: str | Path, *, missing: str, unreadable: str) -> Any:
    """torch.load (tensors only, to the CPU) where a missing or damaged file is a UserError:
    `missing` is the message for an absent file, `unreadable` for a damaged one (torch's own
    words are left out: long, and for foreign pickles they advise weights_only=False)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {missing}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            OSError):
        raise UserError(f"{path}: {unreadable}") from None


def load_checkpoint(path: str | Path, required: tuple[str, ...] = ("model",)) -> dict[str, Any]:
    """Load and check a checkpoint; a missing, truncated or foreign file is a UserError."""
    path = Path(path)
    state = load_torch_file(
        path, missing="checkpoint not found; check the run directory or --ckpt",
        unreadable="truncated or not a checkpoint; use another checkpoint (best, last) or "
        "retrain")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a checkpoint written by this suite; pass one from a run "
                        "directory's checkpoints/")
    if state.get("version") not in READABLE:
        raise UserError(f"{path}: checkpoint version {state.get('version')} is not supported "
                        f"(expected {VERSION}); retrain with this version")
    if state["version"] != VERSION and "optimizers" in required:
        raise UserError(f"{path}: written by an older version of this suite; it can predict "
                        "but not resume; start a new run")
    missing = [key for key in required if key not in state]
    if missing and "optimizers" in missing:
        raise UserError(f"{path}: holds weights only (like a best.pt), not the state a run "
                        "resumes from; restore the run's own last.pt or start a new run")
    if missing:
        raise UserError(f"{path}: checkpoint lacks {', '.join(missing)}; use one from a run "
                        "directory's checkpoints/")
    return state


def prediction_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to predict with: the EMA weights a last.pt keeps when trainer.ema is on
    (in place of the model it follows, `ema_model`, or of the whole model), else "model"
    (best.pt and step-*.pt already hold the evaluated weights as "model")."""
    ema = state.get("ema")
    if ema is None:
        return state["model"]
    averaged = {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}
    name = state.get("ema_model", "")
    if not name:
        return averaged
    return {**state["model"], **{f"{name}.{k}": v for k, v in averaged.items()}}


class CheckpointManager:
    """The checkpoints of one run: last.pt (everything needed to resume), best.pt (the
    evaluated weights at the best monitored value) and kept step-*.pt weights, for averaging:
    the newest `keep_last` and, as timm's CheckpointSaver keeps them, the `keep_best` best by
    the monitored value. Only the writing process (rank 0 with a run directory) writes."""

    def __init__(self, run, *, writes: bool, keep_last: int = 0, keep_best: int = 0,
                 mode: str = "min"):
        self.run, self.writes = run, writes
        self.keep_last, self.keep_best, self.mode = keep_last, keep_best, mode
        self.kept: list[tuple[int, float]] = []  # (step, monitored value) of step-*.pt

    def save_last(self, state: dict[str, Any]) -> None:
        if self.writes:
            save_checkpoint(self.run.last, state)

    def save_best(self, state: dict[str, Any]) -> None:
        if self.writes:
            save_checkpoint(self.run.best, state)

    def keep(self, step: int, value: float, state: dict[str, Any]) -> None:
        """Write step-<step>.pt and delete the kept files neither newest nor best."""
        if self.keep_last <= 0 and self.keep_best <= 0:
            return
        self.kept = [(s, v) for s, v in self.kept if s != step] + [(step, value)]
        if self.writes:
            save_checkpoint(self.run.step_checkpoint(step), state)
        keep = {s for s, _ in self.kept[-self.keep_last:]} if self.keep_last > 0 else set()
        ranked = sorted(((v, s) for s, v in self.kept if v == v),  # NaN never ranks
                        reverse=self.mode == "max")
        keep |= {s for _, s in ranked[:max(self.keep_best, 0)]}
        for s, _ in self.kept:
            if s not in keep and self.writes:
                self.run.step_checkpoint(s).unlink(missing_ok=True)
        self.kept = [(s, v) for s, v in self.kept if s in keep]

    def state_dict(self) -> dict[str, Any]:
        return {"kept": [[s, v] for s, v in self.kept]}

    def load_state_dict(self, state: dict[str, Any], step: int) -> None:
        """Back to a last.pt of update `step`: files kept after it are written again."""
        self.kept = [(int(s), float(v)) for s, v in state.get("kept", [])]
        if self.writes:
            for path in self.run.step_checkpoints():
                if int(path.stem.split("-")[1]) > step:
                    path.unlink()
            self.kept = [(s, v) for s, v in self.kept if self.run.step_checkpoint(s).is_file()]


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors; other tensors (step counters) are
    taken from the last state."""
    if not states:
        raise UserError("no checkpoints to average")
    keys = list(states[-1])
    for s in states:
        if list(s) != keys:
            raise UserError("the checkpoints hold different models and cannot be averaged")
    out = {}
    for k in keys:
        last = states[-1][k]
        if torch.is_floating_point(last):
            acc = torch.zeros_like(last, dtype=torch.float64)
            for s in states:
                acc += s[k].double()
            out[k] = (acc / len(states)).to(last.dtype)
        else:
            out[k] = last.clone()
    return out


def average_checkpoints(run_dir: str | Path, count: int, *, select: str = "last",
                        monitor: str = "valid_loss", mode: str = "min") -> str:
    """Average the weights of a run's kept checkpoints, the newest `count` (select "last"; all
    there are when fewer, as after early stopping) or the `count` best by the run's metric
    `monitor` ("best", in direction `mode`), into checkpoints/average-<select><count>.pt;
    returns that name."""
    run = RunDir(run_dir)
    kept = run.step_checkpoints()
    flag = f"--{select}"
    if count < 1:
        raise UserError(f"{flag} must be at least 1")
    if not kept or (select == "best" and len(kept) < count):
        key = "keep_checkpoints" if select == "last" else "keep_best_checkpoints"
        raise UserError(f"{run.checkpoints}: {len(kept)} kept checkpoints, fewer than "
                        f"{flag} {count}; train with --set trainer.{key}={count}")
    states = [load_checkpoint(p) for p in kept]
    chosen = list(range(len(kept)))[-count:]
    if select == "best":
        values = [s.get("metrics", {}).get(monitor, math.nan) for s in states]
        if any(math.isnan(v) for v in values):
            raise UserError(f"{run.checkpoints}: kept checkpoints without a "
                            f"{monitor}; use --last")
        ranked = sorted(range(len(kept)), key=lambda i: values[i],
                        reverse=mode == "max")
        chosen = sorted(ranked[:count])
    states = [states[i] for i in chosen]
    averaged = {**states[-1], "model": average_state_dicts([s["model"] for s in states]),
                "averaged": [kept[i].name for i in chosen]}
    averaged.pop("format", None)
    averaged.pop("version", None)
    name = f"average-{select}{count}"
    save_checkpoint(run.checkpoints / f"{name}.pt", averaged)
    log.info("averaged %s into %s", ", ".join(averaged["averaged"]), name)
    return name
