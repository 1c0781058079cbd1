"""Fusing predictions (ensembles, k-fold, TTA) and averaging checkpoints.

Fusable kinds: class outputs are logits (N, C); regression outputs are values of any shape;
span outputs are one {span: score} dict per item (question), scores being log-probabilities
(fused: the weighted mean probability); score outputs (anomaly scores, graded by their order
alone, e.g. ROC AUC) are fused as the weighted mean of each member's ranks scaled to 0..1
(rank), of its z-scores (zscore) or of the raw scores (mean).
A fused output is again of its kind (fused classes: the log of the fused probabilities), so
fused outputs can be fused once more. Other kinds (text, token ids, images) cannot be fused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from common.core.errors import UserError
from common.data.batches import to_cpu
from common.data.ranking import average_ranks
from common.engine.checkpoint import load_torch_file, save_torch_file

CLASS_METHODS = ("mean-prob", "mean-logit", "vote")
SCORE_METHODS = ("rank", "zscore", "mean")
# every --method / kfold.method (regression values: mean), as the command line lists them
METHODS = (*CLASS_METHODS, *sorted(SCORE_METHODS))
FUSABLE = ("values", "logits", "spans", "scores")
OUTPUTS_FILE = "test_outputs.pt"


def normalized_weights(weights: Sequence[float] | None, n: int) -> torch.Tensor:
    if weights is None or len(weights) == 0:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    if len(weights) != n:
        raise UserError(f"--weights: {len(weights)} weights for {n} members; give one per member")
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise UserError("--weights: weights must be non-negative and not all zero")
    return w / w.sum()


def vote(outputs: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Weighted majority vote over the members' argmax. Ties go to the larger summed (weighted)
    probability, then to the lowest class index. Returns the winning class per row."""
    probs = torch.stack([o.double().softmax(-1) for o in outputs])          # (M, N, C)
    w = weights.view(-1, 1, 1)
    votes = (torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]) * w).sum(0)
    prob_sum = (probs * w).sum(0)
    top = votes == votes.max(-1, keepdim=True).values
    # among the classes with the most votes, the largest summed probability; argmax returns the
    # first (lowest) index among equal values
    return torch.where(top, prob_sum, torch.full_like(prob_sum, -1.0)).argmax(-1)


def check_fusable(kind: str, what: str = "these runs") -> None:
    if kind not in FUSABLE:
        raise UserError(f"{what} predict {kind}, which cannot be fused; ensembles and "
                        f"test-time augmentation need {', '.join(FUSABLE)}")


def fuse_spans(outputs: Sequence[list[dict]], w: torch.Tensor) -> list[dict]:
    """Per item, the weighted sum of every member's probability of each span any member
    proposed (a member that did not propose a span gives it none), as a log-probability.
    Spans are keys in the data's own coordinates (characters for text), so members with
    different tokenizers fuse."""
    if len({len(o) for o in outputs}) > 1:
        raise UserError("members disagree on the number of items; were they trained on the "
                        "same data?")
    fused = []
    for item in zip(*outputs, strict=True):
        probs: dict = {}
        for wi, member in zip(w.tolist(), item, strict=True):
            for span, score in member.items():
                probs[span] = probs.get(span, 0.0) + wi * math.exp(score)
        fused.append({span: math.log(p) if p > 0 else -math.inf for span, p in probs.items()})
    return fused


def fuse_scores(outputs: Sequence[torch.Tensor], stacked_w: torch.Tensor,
                method: str) -> torch.Tensor:
    """Scores whose scales differ between members (one model's squared errors, another's
    distances) put on one scale before the weighted mean: ranks / n (0..1], z-scores, or
    none (mean)."""
    if method not in SCORE_METHODS:
        raise UserError(f"--method {method}: scores are fused by {', '.join(SCORE_METHODS)}")
    scaled = []
    for o in outputs:
        o = o.double()
        if method == "rank":
            o = average_ranks(o).view(o.shape) / o.numel()
        elif method == "zscore":
            o = (o - o.mean()) / o.std().clamp_min(1e-12)
        scaled.append(o)
    return (torch.stack(scaled) * stacked_w).sum(0).float()


def fuse(outputs: Sequence, *, kind: str, method: str | None = None,
         weights: Sequence[float] | torch.Tensor | None = None):
    """Fuse member outputs. kind 'logits': mean-prob (default), mean-logit or vote;
    kind 'values' (regression): the weighted mean; kind 'spans': the weighted mean probability;
    kind 'scores': rank (default), zscore or mean."""
    if not outputs:
        raise UserError("nothing to fuse: no member outputs")
    check_fusable(kind)
    w = weights if isinstance(weights, torch.Tensor) else normalized_weights(weights, len(outputs))
    if kind == "spans":
        if method not in (None, "mean"):
            raise UserError(f"--method {method}: span scores are averaged; use mean")
        return fuse_spans(outputs, w.double())
    shapes = {tuple(o.shape) for o in outputs}
    if len(shapes) > 1:
        raise UserError(f"members disagree on the output shape {sorted(shapes)}; were they "
                        "trained on the same data?")
    w = w.double()
    stacked_w = w.view(-1, *([1] * outputs[0].dim()))
    if kind == "scores":
        return fuse_scores(outputs, stacked_w, method or "rank")
    if kind == "values":
        if method not in (None, "mean"):
            raise UserError(f"--method {method}: regression outputs are averaged; use mean")
        return (torch.stack([o.double() for o in outputs]) * stacked_w).sum(0).float()
    method = method or "mean-prob"
    if method in ("mean", "mean-prob"):
        probs = (torch.stack([o.double().softmax(-1) for o in outputs]) * stacked_w).sum(0)
        return probs.clamp_min(1e-12).log().float()
    if method == "mean-logit":
        return (torch.stack([o.double() for o in outputs]) * stacked_w).sum(0).float()
    if method == "vote":
        winner = vote(outputs, w)
        n_classes = outputs[0].shape[-1]
        eps = 1e-6  # a proper distribution concentrated on the winner, so it can be fused again
        probs = torch.nn.functional.one_hot(winner, n_classes).double() * (1 - eps) + \
            eps / n_classes
        return probs.log().float()
    raise UserError(f"--method {method}: choose one of {', '.join(CLASS_METHODS)}")


# --------------------------------------------------------------------------- saved outputs
def save_outputs(path: Path, outputs: Any, *, task: str, kind: str,
                 info: dict[str, Any] | None = None) -> Path:
    save_torch_file(path, {"task": task, "kind": kind, "outputs": to_cpu(outputs),
                           **(info or {})})
    return path


def load_outputs(member: str | Path, task: str) -> dict[str, Any]:
    """A member's saved test outputs: a run or fold directory, or a test_outputs.pt file."""
    path = Path(member)
    if path.is_dir():
        path = path / OUTPUTS_FILE
    saved = load_torch_file(
        path, missing="no saved test outputs; pass a finished run, k-fold or fold directory "
        "(train, kfold and predict write test_outputs.pt)",
        unreadable="truncated or not written by this suite; predict that run again with "
        "`predict --run`")
    if not isinstance(saved, dict) or "outputs" not in saved:
        raise UserError(f"{path}: not a test_outputs.pt written by this suite")
    if saved.get("task") != task:
        raise UserError(f"{path}: outputs of {saved.get('task')}, not {task}")
    return saved


# --------------------------------------------------------------------------- checkpoints
