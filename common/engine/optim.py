"""Optimizers by name over parameter groups, and learning-rate schedules as pure functions of
the update step."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from common.core.config import option
from common.core.errors import UserError
from common.core.registry import Registry

SCHEDULES = ("constant", "step", "cosine", "linear", "inverse_sqrt")
# torch.optim constructors by optim.name (registered below)
OPTIMIZERS = Registry("optim.name")


@OPTIMIZERS.register("sgd")
def _sgd(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adam", "adamw")
def _adam(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    cls = torch.optim.Adam if cfg.name.lower() == "adam" else torch.optim.AdamW
    params = list(params)
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
               weight_decay=cfg.weight_decay, fused=cfg.fused and fusable(params) or None)


@OPTIMIZERS.register("rmsprop")  # the WGAN paper's choice
def _rmsprop(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps,
                               weight_decay=cfg.weight_decay, momentum=cfg.rmsprop_momentum)



@dataclass
class OptimConfig:
    name: str = option("adamw", choices=OPTIMIZERS.names())  # sgd | adam | adamw | rmsprop
    lr: float = option(1e-3, min=0.0)
    weight_decay: float = option(0.0, min=0.0)
    no_decay_bias_norm: bool = False  # no weight decay on biases and norm weights (1-D params)
    # layer-wise lr decay: layer l of L gets lr * decay^(L - l); needs a task that numbers its
    # layers (Objective.layer_id)
    layer_decay: float = option(1.0, min=1e-12, max=1.0)
    momentum: float = option(0.9, min=0.0, below=1.0)  # sgd (rmsprop: rmsprop_momentum)
    alpha: float = option(0.99, min=0.0, below=1.0)    # rmsprop: smoothing of squared grads
    rmsprop_momentum: float = option(0.0, min=0.0, below=1.0)
    nesterov: bool = False         # sgd only
    betas: list[float] = option(factory=lambda: [0.9, 0.999], min=0.0, below=1.0)
    eps: float = option(1e-8, min=0.0)
    # adam/adamw: PyTorch's fused kernel (one pass over all parameters, CPU and CUDA): the
    # update costs a third of the per-parameter loop's on small models (scripts/bench/cpu_step.py)
    fused: bool = True


@dataclass
class SchedConfig:
    # constant | step | cosine | linear | inverse_sqrt
    name: str = option("constant", choices=SCHEDULES)
    warmup_steps: int = option(0, min=0)  # linear warmup from 0; warmup_epochs adds to it
    warmup_epochs: float = option(0.0, min=0.0)
    step_epochs: float = option(10.0, min=1e-12)  # step: multiply by gamma every step_epochs
    gamma: float = option(0.1, min=0.0)
    # cosine and linear: final lr as a fraction of optim.lr
    min_lr_ratio: float = option(0.0, min=0.0, max=1.0)


@dataclass
class OptimizerSpec:
    """One named optimizer: its parameters (or parameter-group dicts, which may carry
    "weight_decay" and "lr_scale"), its settings and its learning-rate schedule."""

    params: list
    optim: OptimConfig
    sched: SchedConfig


def param_groups(model: nn.Module, cfg: OptimConfig, *,
                 layer_id: Callable[[str], int | None] | None = None,
                 num_layers: int = 0) -> list[dict]:
    """The trainable parameters in groups of equal weight decay and learning-rate scale.

    With `no_decay_bias_norm`, 1-D parameters (biases, norm weights) get no weight decay. With
    `layer_decay` < 1, `layer_id(name)` numbers each parameter's layer (0: embeddings ..
    num_layers: the head; None: the head) and layer l's lr is scaled by decay^(num_layers - l);
    the scale travels in the group as "lr_scale", which `set_lr` applies."""
    if cfg.layer_decay < 1.0 and layer_id is None:
        raise UserError("optim.layer_decay < 1 needs a model whose layers the task numbers; "
                        "this task does not (set optim.layer_decay = 1)")
    groups: dict[tuple[bool, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (cfg.no_decay_bias_norm and param.ndim <= 1)
        scale = 1.0
        if cfg.layer_decay < 1.0:
            layer = layer_id(name)
            scale = cfg.layer_decay ** (num_layers - (num_layers if layer is None else layer))
        group = groups.setdefault((decay, scale), {
            "params": [], "weight_decay": cfg.weight_decay if decay else 0.0, "lr_scale": scale})
        group["params"].append(param)
    return list(groups.values())


def fusable(params) -> bool:
    """Whether PyTorch's fused Adam takes these parameters (or groups): floating point, all on
    one CPU or CUDA device."""
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    return bool(tensors) and len({p.device for p in tensors}) == 1 and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors)


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    """An optimizer over parameters or parameter-group dicts (a group's own keys win)."""
    return OPTIMIZERS.build(cfg.name.lower(), params, cfg)


def lr_factor(step: int, cfg: SchedConfig, *, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate for the update numbered `step` (0-based)."""
    warmup = cfg.warmup_steps + round(cfg.warmup_epochs * steps_per_epoch)
    name = cfg.name.lower()   # one of SCHEDULES: sched.name's option rule
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if name == "constant":
        return 1.0
    if name == "step":
        period = max(1, round(cfg.step_epochs * steps_per_epoch))
        return cfg.gamma ** (step // period)
    if name in ("cosine", "linear"):
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if name == "cosine" else 1 - progress
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape
    # inverse_sqrt: 1 at the end of warmup, then decays as 1/sqrt(step)
    return math.sqrt(max(warmup, 1) / (step + 1))


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    """Set every group's lr to base_lr * factor * the group's lr_scale; returns base_lr * factor."""
    lr = base_lr * factor
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr
