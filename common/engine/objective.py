"""What a task tells the engine, in the spirit of Lightning's LightningModule: by default one
model, one optimizer, `forward` + `loss`, tensor predictions joined in dataset order; a task
overrides only what differs (its optimizers, its training step, how a batch is predicted,
how predictions are collected and scored, how batches are formed).

The engine keeps what it does better: AMP, accumulation weighted by the task's count,
clipping, DDP, EMA, exact resume and exact sharded evaluation. See tests/common/test_toy_gan.py,
tests/common/test_toy_seq.py and tests/common/test_toy_span.py for tasks that use each hook."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from common.data.batches import concat
from common.data.loading import EpochBatchSampler
from common.engine.optim import OptimConfig, OptimizerSpec, SchedConfig, param_groups

Trainer = Any   # the engine's Trainer, which calls these hooks (imported by it, not here)


class Callback:
    """Hooks called by Trainer.fit; override any. A callback with state_dict/load_state_dict
    is checkpointed with the run."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer) -> None: ...
    def on_evaluate(self, trainer: Trainer, metrics: dict[str, float], outputs: Any) -> None:
        """After each evaluation: its metrics row, and the validation predictions it was
        computed from (finalized, in dataset order; None without a validation set)."""
    def on_epoch_end(self, trainer: Trainer) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...


class Objective:
    """How a model meets a batch. A task overrides `loss` and usually `metrics`; the other
    hooks have defaults that fit one model trained on (input, ..., target) batches."""

    # False: the task's own `training_step` calls trainer.backward / trainer.step for its
    # named optimizers (a GAN); the engine then leaves DDP out and syncs gradients itself
    automatic_optimization: ClassVar[bool] = True
    # False: the task's step cannot honour `update` (e.g. it must step every micro-batch);
    # the engine then refuses trainer.accum_steps > 1 in one line
    accumulates: ClassVar[bool] = True
    # the task's metrics (without the valid_ prefix) where higher is better; every other
    # metric is lower-is-better (runs and compare sort by this and by the run's trainer.mode)
    higher_is_better: ClassVar[tuple[str, ...]] = ()

    # --- the automatic path ---------------------------------------------------------------
    def forward(self, model: nn.Module, batch) -> Any:
        return model(batch[0])

    def loss(self, output, batch) -> torch.Tensor:
        """The loss averaged over `count(batch)` units (items, tokens, frames)."""
        raise NotImplementedError

    def target(self, batch) -> Any:
        return batch[-1]

    def count(self, batch) -> int | torch.Tensor:
        """What `loss` averages over; accumulation and DDP weigh each micro-batch by it."""
        return len(batch[0])

    def predict_output(self, output, batch) -> Any:
        """What is kept of the model's output for one batch (e.g. spans from logits, with the
        batch's offsets)."""
        return output

    # --- optimizers -------------------------------------------------------------------------
    def layer_id(self, name: str) -> int | None:
        """The layer (0..layer_count) of parameter `name`, for layer-wise lr decay; None: the
        head. Only tasks that use optim.layer_decay define it."""
        raise NotImplementedError

    def layer_count(self, model: nn.Module) -> int:
        """The number of the head's layer for optim.layer_decay (the embeddings are layer 0),
        read from the model that configure_optimizers is given; 0 (the default): the task
        does not number its layers, and layer_decay < 1 is refused."""
        return 0

    def configure_optimizers(self, model: nn.Module, optim: OptimConfig,
                             sched: SchedConfig) -> dict[str, OptimizerSpec]:
        """Named optimizers. Default: "main" over every trainable parameter, in groups shaped
        by optim.no_decay_bias_norm and optim.layer_decay."""
        layers = self.layer_count(model)  # 0: the task does not number its layers
        groups = param_groups(model, optim, layer_id=self.layer_id if layers else None,
                              num_layers=layers)
        return {"main": OptimizerSpec(groups, optim, sched)}

    # --- one training micro-batch ---------------------------------------------------------
    def training_step(self, trainer: Trainer, batch, *, update: bool
                      ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Forward and backward one micro-batch (already on the device); on the last
        micro-batch of an accumulation group (`update`) step the optimizers. Returns the loss,
        or named losses, to log. Override for several models or optimizers (a GAN), with
        `automatic_optimization = False`, calling `trainer.backward(loss, name, count)` and
        `trainer.step(name)`; the engine then skips DDP and averages each optimizer's
        gradients over processes itself. `update` is binding: stepping when it is false is an
        error (declare `accumulates = False` if the step cannot wait)."""
        batch, _, loss = trainer.forward(batch, train=True)
        trainer.backward(loss, count=self.count(batch))
        if update:
            trainer.step()
        return loss

    # --- evaluation and prediction ------------------------------------------------------
    def validation_step(self, model: nn.Module, batch) -> tuple[Any, Any, torch.Tensor | None]:
        """(prediction, target, loss averaged over count(batch)) of one labelled batch, under
        autocast and no_grad. A loss of None: no valid_loss (e.g. a GAN)."""
        output = self.forward(model, batch)
        return self.predict_output(output, batch), self.target(batch), self.loss(output, batch)

    def predict_step(self, model: nn.Module, batch) -> Any:
        """The prediction for one unlabelled batch: logits, token ids, spans, images."""
        return self.predict_output(self.forward(model, batch), batch)

    def join(self, parts: list[Any]) -> Any:
        """Join per-batch predictions (CPU) along the item dimension."""
        return concat(parts)

    def finalize(self, predictions: Any, dataset) -> Any:
        """The collected predictions, in dataset order, after every process's share is
        joined; e.g. fuse the windows of each question into span scores."""
        return predictions

    def metrics(self, predictions, targets, dataset=None) -> dict[str, float]:
        """Metrics from the finalized predictions and the joined targets; `dataset` gives
        access to its metadata (which windows belong to which question, references)."""
        return {}

    # --- batching ---------------------------------------------------------------------------
    def batch_sampler(self, dataset, *, train: bool, batch_size: int, seed: int,
                      drop_last: bool, as_tensor: bool, rank: int, world: int):
        """The batches of an epoch. Whatever it returns must order them as a pure function of
        (seed, epoch) (set_epoch(epoch, start_batch)), report num_batches(), and under
        torchrun give ranks disjoint shares: equal counts when training (even), contiguous
        blocks when evaluating. `in_order = False` makes the engine restore dataset order."""
        return EpochBatchSampler(len(dataset), batch_size, shuffle=train, seed=seed,
                                 drop_last=drop_last, as_tensor=as_tensor, rank=rank,
                                 world=world, even=train)

    # --- extra behaviour --------------------------------------------------------------------
    def callbacks(self) -> list[Callback]:
        return []
