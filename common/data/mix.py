"""Mixup and CutMix as a training batch transform, with the soft-target cross-entropy they need.

Written here rather than taken from torchvision.transforms.v2.MixUp/CutMix because those accept
image batches only (HW2 frames and HW4 spectrograms are mixed too), and because we keep the
original batch dominant (lam >= 0.5), so alpha -> 0 leaves a batch unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.core.config import option
from common.core.errors import UserError


@dataclass
class MixConfig:
    mixup_alpha: float = option(0.0, min=0.0)  # Beta(alpha, alpha) mixing weight; 0: no mixup
    # CutMix box weight, images (N, C, H, W) only; 0: no CutMix
    cutmix_alpha: float = option(0.0, min=0.0)
    prob: float = option(1.0, min=0.0, max=1.0)  # chance that a batch is mixed at all
    # with both on: chance of CutMix instead of mixup
    switch_prob: float = option(0.5, min=0.0, max=1.0)
    off_epoch: int = option(0, min=0)  # from this epoch (0-based) on, no mixing; 0: never off


def classification_loss(logits: torch.Tensor, target: torch.Tensor,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy for hard (integer) or soft (probability) targets; soft targets (mixed
    batches) carry their smoothing already."""
    if target.is_floating_point() and target.dim() == logits.dim():
        return F.cross_entropy(logits.float(), target)
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


def sample_beta(alpha: float) -> float:
    """One draw of Beta(alpha, alpha) from torch's RNG, exact for tiny alpha too, where
    torch.distributions.Beta returns 0.5: Gamma(a) = Gamma(a + 1) * U^(1/a), in log space."""
    g = torch.distributions.Gamma(torch.tensor(alpha + 1.0, dtype=torch.float64), 1.0).sample((2,))
    log_g = g.log() + torch.rand(2, dtype=torch.float64).log() / alpha
    return float(torch.sigmoid(log_g[0] - log_g[1]))


def one_hot_smooth(target: torch.Tensor, n_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    off = smoothing / n_classes
    return F.one_hot(target.long(), n_classes).float() * (1.0 - smoothing) + off


def cutmix_box(h: int, w: int, lam: float):
    """A box covering about (1 - lam) of an h x w image, centred uniformly at random; returns
    (top, bottom, left, right) clipped to the image."""
    cut = (1.0 - lam) ** 0.5
    ch, cw = int(h * cut), int(w * cut)
    cy = int(torch.randint(h, (1,)))
    cx = int(torch.randint(w, (1,)))
    top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    left, right = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    return top, bottom, left, right


class MixBatch:
    """Mix a training batch (input first, target last) with a shuffled copy of itself.

    Integer targets become soft one-hot targets over `n_classes`, smoothed by
    `label_smoothing` (the task's model.label_smoothing: the one key, whose value hard
    targets get in the loss); float targets (regression values or soft labels) are mixed as
    they are. Randomness comes from torch's global RNG,
    which the trainer checkpoints, so a resumed run mixes the same way."""

    def __init__(self, cfg: MixConfig, n_classes: int = 0, label_smoothing: float = 0.0):
        self.cfg, self.n_classes, self.label_smoothing = cfg, n_classes, label_smoothing

    @property
    def enabled(self) -> bool:
        return self.cfg.mixup_alpha > 0 or self.cfg.cutmix_alpha > 0

    def _soft(self, y: torch.Tensor) -> torch.Tensor:
        if y.is_floating_point():
            return y
        if not self.n_classes:
            raise UserError("mixup of integer targets needs a classification task")
        return one_hot_smooth(y, self.n_classes, self.label_smoothing)

    def __call__(self, batch, epoch: int):
        cfg = self.cfg
        if not self.enabled or (cfg.off_epoch and epoch >= cfg.off_epoch):
            return batch
        x, y = batch[0], batch[-1]
        if cfg.prob < 1.0 and float(torch.rand(())) >= cfg.prob:
            return (*batch[:-1], self._soft(y))
        use_cutmix = cfg.cutmix_alpha > 0 and x.dim() == 4 and (
            cfg.mixup_alpha <= 0 or float(torch.rand(())) < cfg.switch_prob)
        alpha = cfg.cutmix_alpha if use_cutmix else cfg.mixup_alpha
        lam = sample_beta(alpha)
        lam = max(lam, 1.0 - lam)  # the original batch stays dominant
        perm = torch.randperm(len(x)).to(x.device)
        if use_cutmix:
            top, bottom, left, right = cutmix_box(x.shape[-2], x.shape[-1], lam)
            x = x.clone()
            x[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / (x.shape[-2] * x.shape[-1])
        else:
            x = x * lam + x[perm] * (1.0 - lam)
        soft = self._soft(y)
        mixed_y = soft * lam + soft[perm] * (1.0 - lam)
        return (x, *batch[1:-1], mixed_y)
