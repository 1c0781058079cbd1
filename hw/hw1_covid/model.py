"""HW1 networks, by model.arch, from the selected (standardised) features to one value.

- `mlp`: the course's fully connected network (widths model.hidden).
- `rbf`: a Gaussian-kernel layer with the training rows as centres, in front of a linear head.
  The layer is fitted state, like the normaliser: `rbf_basis` computes it once from the training
  rows (the kernel matrix's eigenvectors scaled by 1/sqrt(eigenvalue)), so that on the training
  rows the features are orthogonal and the head's least-squares problem has a diagonal Hessian.
  Adam then reaches the ridge solution in a few hundred full-batch steps, and with weight decay
  wd the trained network equals scikit-learn's `KernelRidge(kernel="rbf",
  gamma=model.gamma / features, alpha=wd * n / (2 * var(y)))` on mean-centred targets (n training
  rows; tests/hw/hw1/test_hw1.py checks this against scikit-learn).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.core.errors import UserError
from common.core.registry import Registry
from common.engine.models import build_mlp

ARCHS = Registry("model.arch")  # (model config, input features, fitted basis) -> model
RANK_TOL = 1e-7  # eigen-directions below this fraction of the largest eigenvalue are dropped


@ARCHS.register("mlp")
def mlp(cfg, *, features: int, basis: dict | None = None) -> nn.Module:
    return build_mlp(features, cfg.hidden, 1, activation=cfg.activation, dropout=cfg.dropout,
                     batchnorm=cfg.batchnorm)


def rbf_kernel(x: torch.Tensor, centres: torch.Tensor, gamma: float | torch.Tensor):
    """exp(-gamma * |x - c|^2) for every row of x and every centre."""
    sq = (x.square().sum(-1, keepdim=True) - 2 * x @ centres.T
          + centres.square().sum(-1)).clamp_min(0)
    return torch.exp(-gamma * sq)


def rbf_basis(cfg, x: np.ndarray, y: np.ndarray, *, seed: int) -> dict[str, torch.Tensor]:
    """The fitted state of an `rbf` model from the (standardised) training inputs and targets:
    centres (every row, or model.centres of them drawn with `seed`), the projection that
    whitens the kernel features on the centres, and the target's mean and spread."""
    rows = len(x)
    if cfg.centres and cfg.centres < rows:
        rows_kept = np.sort(np.random.default_rng(seed).choice(rows, cfg.centres, replace=False))
        x_centres = x[rows_kept]
    else:
        x_centres = x
    centres = torch.as_tensor(x_centres, dtype=torch.float64)
    gamma = cfg.gamma / max(x.shape[1], 1)
    eigenvalues, vectors = torch.linalg.eigh(rbf_kernel(centres, centres, gamma))
    keep = eigenvalues > eigenvalues[-1] * RANK_TOL
    projection = vectors[:, keep] / eigenvalues[keep].sqrt()
    spread = float(np.std(y)) or 1.0
    return {"centres": centres.float(), "projection": projection.float(),
            "gamma": torch.tensor(gamma),
            "offset": torch.tensor(float(np.mean(y))), "scale": torch.tensor(spread)}


class RBFRidge(nn.Module):
    """offset + scale * head(k(x, centres) @ projection): a kernel ridge regression whose head
    the engine trains. The basis is fitted state (the task saves it), so it is not in this
    module's state_dict; the head starts at zero (the prediction starts at the target mean).

    It runs in float32 whatever the autocast: the projection's small-eigenvalue columns come
    from cancellation between large entries, which half precision would lose."""

    def __init__(self, basis: dict[str, torch.Tensor]):
        super().__init__()
        for name in ("centres", "projection", "gamma", "offset", "scale"):
            self.register_buffer(name, basis[name].detach().clone(), persistent=False)
        self.head = nn.Linear(self.projection.shape[1], 1, bias=False)
        nn.init.zeros_(self.head.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            # k(x, C) @ (P @ w): the (centres x rank) projection meets the head's vector first,
            # which costs centres * rank per step instead of rows * centres * rank
            weights = self.projection @ self.head.weight.T.float()
            kernel = rbf_kernel(x.float(), self.centres, self.gamma)
            return self.offset + self.scale * (kernel @ weights)


@ARCHS.register("rbf")
def rbf(cfg, *, features: int, basis: dict | None = None) -> nn.Module:
    if basis is None:
        raise UserError("model.arch='rbf' needs its basis fitted on the training rows; this "
                        "checkpoint has none (it was trained with another model.arch)")
    return RBFRidge(basis)


FITTED = {"rbf": rbf_basis}  # archs with fitted state: (model config, x, y, seed) -> basis


def fit_basis(cfg, x: np.ndarray, y: np.ndarray, *, seed: int) -> dict | None:
    """The arch's fitted state from the training rows, or None when it has none."""
    fit = FITTED.get(cfg.arch)
    return None if fit is None else fit(cfg, x, y, seed=seed)
