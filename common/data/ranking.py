"""Scores whose order is what counts (anomaly scores): ranks with ties averaged, and ROC AUC
as the Mann-Whitney statistic (ties count one half), in torch and float64."""

from __future__ import annotations

import torch

from common.core.errors import UserError


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor, tied values sharing the mean of their ranks (as
    scipy.stats.rankdata's 'average')."""
    values = torch.as_tensor(values).double().flatten()
    order = torch.argsort(values, stable=True)
    ordered = values[order]
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    group = torch.cumsum(starts, 0) - 1                       # tie group of each sorted value
    first = torch.nonzero(starts).flatten().double()          # 0-based start of each group
    size = torch.bincount(group).double()
    ranks = torch.empty_like(values)
    ranks[order] = (first + (size + 1) / 2)[group]
    return ranks


def roc_auc(scores, labels) -> float:
    """The area under the ROC curve of `scores` (higher: more likely positive) for 0/1
    `labels`: the chance that a random positive scores above a random negative."""
    scores = torch.as_tensor(scores).double().flatten()
    labels = torch.as_tensor(labels).flatten().bool()
    if len(scores) != len(labels):
        raise UserError(f"roc_auc: {len(scores)} scores for {len(labels)} labels")
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        raise UserError("roc_auc needs both normal (0) and anomalous (1) items")
    if not torch.isfinite(scores).all():
        return float("nan")  # a diverged model: no order to judge
    rank_sum = average_ranks(scores)[labels].sum().item()
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
