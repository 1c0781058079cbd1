"""Differentiable augmentation for GANs on small data sets (Zhao et al., 2020): the same random
transforms applied to real and generated images before the discriminator, written with
differentiable tensor operations so that the generator's gradients pass through. Randomness
comes from torch's RNG (saved in checkpoints), one draw per image."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from common.core.errors import UserError

POLICIES = ("flip", "color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [p for p in parts if p not in POLICIES]
    if unknown:
        raise UserError(f"model.augment={policy!r}: unknown {', '.join(unknown)}; use a comma "
                        f"list of {', '.join(POLICIES)} (or \"\" for none)")
    return parts


def _rand(x: torch.Tensor, *shape: int) -> torch.Tensor:
    return torch.rand(len(x), *shape, device=x.device, dtype=x.dtype)


def augment(x: torch.Tensor, policy: tuple[str, ...]) -> torch.Tensor:
    """x: (B, 3, H, W) in [-1, 1]."""
    for part in policy:
        if part == "flip":
            x = torch.where(_rand(x, 1, 1, 1) < 0.5, x.flip(3), x)
        elif part == "color":
            x = x + (_rand(x, 1, 1, 1) - 0.5)                               # brightness
            mean = x.mean(1, keepdim=True)
            x = (x - mean) * (_rand(x, 1, 1, 1) * 2) + mean                 # saturation
            mean = x.mean((1, 2, 3), keepdim=True)
            x = (x - mean) * (_rand(x, 1, 1, 1) + 0.5) + mean               # contrast
        elif part == "translation":
            x = _translate(x, 0.125)
        elif part == "cutout":
            x = _cutout(x, 0.5)
    return x


def _translate(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """Shift each image by up to ratio x its size (whole pixels), zeros shifted in."""
    b, _, h, w = x.shape
    shift = (_rand(x, 2) * 2 - 1) * torch.tensor([ratio * h, ratio * w], device=x.device)
    shift = shift.round()
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = -2 * shift[:, 1] / w
    theta[:, 1, 2] = -2 * shift[:, 0] / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _cutout(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero a square of ratio x the size at a random place in each image."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = (_rand(x) * (h - ch + 1)).floor()[:, None, None]
    left = (_rand(x) * (w - cw + 1)).floor()[:, None, None]
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)
    return x * (~inside)[:, None].to(x.dtype)
