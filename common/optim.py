"""Optimizers by name and learning-rate schedules as pure functions of the optimizer step."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from common.errors import UserError


@dataclass
class OptimConfig:
    name: str = "adamw"            # sgd | adam | adamw
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9          # sgd only
    nesterov: bool = False         # sgd only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class SchedConfig:
    name: str = "constant"         # constant | step | cosine | inverse_sqrt
    warmup_steps: int = 0          # linear warmup from 0; warmup_epochs adds to it
    warmup_epochs: float = 0.0
    step_epochs: float = 10.0      # step: multiply by gamma every step_epochs
    gamma: float = 0.1
    min_lr_ratio: float = 0.0      # cosine: final lr as a fraction of optim.lr


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    name = cfg.name.lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                   weight_decay=cfg.weight_decay)
    raise UserError(f"optim.name={cfg.name!r} is unknown; choose sgd, adam or adamw")


def lr_factor(step: int, cfg: SchedConfig, *, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate for the update numbered `step` (0-based)."""
    warmup = cfg.warmup_steps + round(cfg.warmup_epochs * steps_per_epoch)
    name = cfg.name.lower()
    if name not in ("constant", "step", "cosine", "inverse_sqrt"):
        raise UserError(f"sched.name={cfg.name!r} is unknown; choose constant, step, cosine or "
                        "inverse_sqrt")
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if name == "constant":
        return 1.0
    if name == "step":
        period = max(1, round(cfg.step_epochs * steps_per_epoch))
        return cfg.gamma ** (step // period)
    if name == "cosine":
        span = max(1, total_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    # inverse_sqrt: 1 at the end of warmup, then decays as 1/sqrt(step)
    return math.sqrt(max(warmup, 1) / (step + 1))


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    lr = base_lr * factor
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr
