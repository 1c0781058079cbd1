"""Exact sharded evaluation: every process predicts its share of a dataset, the shares are
gathered in rank order and put back into dataset order, each item once."""

from __future__ import annotations

from typing import Any

import torch

from common import distributed
from common.batches import take, to_cpu


@torch.no_grad()
def collect(trainer, dataset, with_targets: bool = True, max_batches: int = 0
            ) -> tuple[Any, Any, float | None]:
    """(predictions, targets, mean loss) of the trainer's evaluated model over a dataset, in
    dataset order and on the CPU. Predictions are what the task's predict/validation step
    returns, joined and finalized by the task; targets and loss are None without with_targets
    (or when the task reports none). Under torchrun every rank gets the whole."""
    model, obj = trainer.eval_model, trainer.objective
    distributed.broadcast_buffers(model)  # one model: rank 0's BN statistics
    model.eval()
    sampler = trainer.sampler(dataset, train=False)
    loss_sum = torch.zeros((), dtype=torch.float64, device=trainer.device)
    count, preds, targets = 0.0, [], []
    for i, batch in enumerate(trainer.loader(dataset, sampler)):
        if max_batches and i >= max_batches:
            break
        batch = trainer.to_device(batch)
        target = loss = None
        with trainer.autocast():
            if with_targets:
                pred, target, loss = obj.validation_step(model, batch)
            else:
                pred = obj.predict_step(model, batch)
        if loss is not None:
            n = obj.count(batch)
            loss_sum += loss.double() * n
            count = count + n
        preds.append(to_cpu(pred))
        if target is not None:
            targets.append(to_cpu(target))
    index = None
    if not getattr(sampler, "in_order", True):  # where each prediction belongs
        sampler.set_epoch(0)
        index = torch.cat([torch.as_tensor(b) for b in list(sampler)[:len(preds)]]
                          or [torch.zeros(0, dtype=torch.long)])
    parts = distributed.all_gather_objects(
        (obj.join(preds) if preds else None, obj.join(targets) if targets else None,
         float(loss_sum), float(count), index))
    preds = obj.join([p[0] for p in parts if p[0] is not None])
    targets = [p[1] for p in parts if p[1] is not None]
    targets = obj.join(targets) if targets else None
    if index is not None:
        order = torch.argsort(torch.cat([p[4] for p in parts]))
        preds, targets = take(preds, order), take(targets, order)
    loss_total, count = sum(p[2] for p in parts), sum(p[3] for p in parts)
    return obj.finalize(preds, dataset), targets, (loss_total / count if count else None)
