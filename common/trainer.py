"""The Trainer: fit (train + validate + early stopping + checkpoints), evaluate and predict.

Loss and metrics come from an Objective supplied by the task; extra behaviour comes from
callbacks. Everything that decides what happens next (step, epoch, batch position, RNG, early
stopping, history) lives in `TrainState` and in the checkpoint, so a resumed run is the same run.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from common import distributed
from common.checkpoint import load_checkpoint, save_checkpoint
from common.data import EpochBatchSampler, build_loader
from common.errors import UserError
from common.io import write_csv_atomic, write_text_atomic
from common.optim import OptimConfig, SchedConfig, build_optimizer, lr_factor, set_lr
from common.runtime import (
    amp_dtype,
    autocast,
    choose_device,
    derive_seed,
    get_rng_state,
    seed_everything,
    set_rng_state,
)

log = logging.getLogger("mlhw")


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 0          # 0: same as batch_size
    accum_steps: int = 1              # micro-batches per update; the update equals the big batch
    clip_grad_norm: float = 0.0       # 0: no clipping
    drop_last: bool = False           # drop the last short training batch of each epoch
    eval_every_steps: int = 0         # 0: validate at the end of every epoch
    monitor: str = "valid_loss"       # metric for best.pt and early stopping
    mode: str = "min"                 # min | max
    patience: int = 0                 # evaluations without improvement before stopping; 0: off
    min_delta: float = 0.0
    save_every_epochs: int = 1        # write last.pt every N epochs (and at the end)
    ckpt_every_steps: int = 0         # also write last.pt every N updates; 0: off
    seed: int = 0
    device: str = "auto"              # auto | cpu | cuda | cuda:1 | mps
    amp: bool = True                  # mixed precision on CUDA (bf16 if supported, else fp16)
    channels_last: bool = False       # on CUDA, NHWC memory format for the model and 4-D inputs
    sync_batchnorm: bool = False      # under torchrun on CUDA: BatchNorm statistics over all ranks
    num_workers: int = 0
    threads: int = 0                  # CPU threads; 0: all cores available to the process
    print_every_evals: int = 1        # print every Nth evaluation line (all go to log.txt)
    ema: bool = False                 # keep an exponential moving average of the weights; it is
                                      # what gets evaluated, saved as best.pt and predicted with
    ema_decay: float = 0.999
    keep_checkpoints: int = 0         # keep the weights of the last N evaluations as
                                      # checkpoints/step-*.pt (for `average`); 0: none
    max_batches_per_epoch: int = 0    # for dry runs; 0: all
    max_eval_batches: int = 0         # for dry runs; 0: all


class Objective:
    """How a model meets a batch. A task overrides `loss` and usually `metrics`."""

    def forward(self, model: nn.Module, batch) -> torch.Tensor:
        return model(batch[0])

    def loss(self, output: torch.Tensor, batch) -> torch.Tensor:
        raise NotImplementedError

    def target(self, batch) -> torch.Tensor:
        return batch[-1]

    def batch_size(self, batch) -> int:
        return len(batch[0])

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {}

    def predict_output(self, output: torch.Tensor) -> torch.Tensor:
        return output


class Callback:
    """Hooks called by Trainer.fit; override any."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer) -> None: ...
    def on_evaluate(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...
    def on_epoch_end(self, trainer: Trainer) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...


@dataclass
class TrainState:
    epoch: int = 0                    # epoch in progress
    batch_in_epoch: int = 0           # batches of that epoch already consumed
    step: int = 0                     # optimizer updates so far
    best: float | None = None
    best_step: int = -1
    bad_evals: int = 0
    stopped: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(b, device, non_blocking) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    return batch


class Trainer:
    def __init__(self, model: nn.Module, objective: Objective, cfg: TrainerConfig, *,
                 optim: OptimConfig | None = None, sched: SchedConfig | None = None,
                 run_dir: str | Path | None = None, callbacks: list[Callback] = (),
                 extra_state: dict[str, Any] | None = None,
                 batch_transform: Callable[[Any, int], Any] | None = None):
        if cfg.mode not in ("min", "max"):
            raise UserError(f"trainer.mode={cfg.mode!r} must be min or max")
        if cfg.accum_steps < 1:
            raise UserError("trainer.accum_steps must be at least 1")
        self.cfg, self.objective = cfg, objective
        self.optim_cfg, self.sched_cfg = optim or OptimConfig(), sched or SchedConfig()
        self.device = choose_device(cfg.device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        if self.world > 1 and cfg.sync_batchnorm and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.memory_format = (torch.channels_last if cfg.channels_last
                              and self.device.type == "cuda" else None)
        self.model = model.to(self.device)
        if self.memory_format is not None:
            self.model = self.model.to(memory_format=self.memory_format)
        if cfg.ema and not 0.0 <= cfg.ema_decay <= 1.0:
            raise UserError(f"trainer.ema_decay={cfg.ema_decay} must lie in [0, 1]")
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay),
                                 use_buffers=True) if cfg.ema else None
        # under torchrun the training forward goes through DDP (rank 0's weights broadcast now,
        # gradients averaged); evaluation uses the plain module, sharded and gathered
        self.train_model = self.model
        if self.world > 1:
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            seed_everything(derive_seed(cfg.seed, 5051, self.rank))  # per-rank dropout, mixup
        self.batch_transform = batch_transform
        self.optimizer = build_optimizer(
            [p for p in self.model.parameters() if p.requires_grad], self.optim_cfg)
        self.amp_dtype = amp_dtype(self.device, cfg.amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks = list(callbacks)
        self.extra_state = extra_state or {}
        self.state = TrainState()
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._loss_count = 0
        self.lr = self.optim_cfg.lr
        self.best_model_state: dict[str, torch.Tensor] | None = None

    # ---------------------------------------------------------------- checkpoints
    @property
    def ckpt_dir(self) -> Path | None:
        return self.run_dir / "checkpoints" if self.run_dir else None

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated, saved as best and used to predict (EMA if on)."""
        return self.ema.module if self.ema is not None else self.model

    def full_state(self) -> dict[str, Any]:
        return {
            **self.extra_state,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"step": self.state.step},
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "trainer": asdict(self.state),
            "train_loss": {"sum": self._loss_sum.cpu(), "count": self._loss_count},
            "rng": get_rng_state(),
            "rng_ranks": distributed.all_gather_objects(get_rng_state()) if self.world > 1
            else None,
            "callbacks": [cb.state_dict() if hasattr(cb, "state_dict") else None
                          for cb in self.callbacks],
        }

    def load_best(self) -> None:
        """Put the best weights (from best.pt or from memory) into the evaluated model. Under
        torchrun rank 0 reads the file and sends it to the others."""
        if self.ckpt_dir:
            state = distributed.broadcast_object(
                load_checkpoint(self.ckpt_dir / "best.pt")["model"] if distributed.is_main()
                else None)
            self.eval_model.load_state_dict(state)
        elif self.best_model_state is not None:
            self.eval_model.load_state_dict(self.best_model_state)

    @property
    def writes(self) -> bool:
        """Whether this process writes files: a run directory and rank 0."""
        return self.ckpt_dir is not None and distributed.is_main()

    def save_last(self) -> None:
        if self.ckpt_dir:
            state = self.full_state()  # every rank: the RNG states are gathered
            if self.writes:
                save_checkpoint(self.ckpt_dir / "last.pt", state)

    def save_best(self, metrics: dict[str, float]) -> None:
        """Write best.pt, or keep the best weights in memory when there is no run directory."""
        if not self.ckpt_dir:
            self.best_model_state = {k: v.detach().clone()
                                     for k, v in self.eval_model.state_dict().items()}
        elif self.writes:
            save_checkpoint(self.ckpt_dir / "best.pt", self._weights_state(metrics))

    def _weights_state(self, metrics: dict[str, float]) -> dict[str, Any]:
        return {**self.extra_state, "model": self.eval_model.state_dict(), "metrics": metrics,
                "trainer": {"epoch": self.state.epoch, "step": self.state.step}}

    def _keep_checkpoint(self, metrics: dict[str, float]) -> None:
        """Write the evaluated weights as step-<step>.pt and delete all but the newest N."""
        if not self.writes or self.cfg.keep_checkpoints <= 0:
            return
        save_checkpoint(self.ckpt_dir / f"step-{self.state.step:09d}.pt",
                        self._weights_state(metrics))
        for old in sorted(self.ckpt_dir.glob("step-*.pt"))[:-self.cfg.keep_checkpoints]:
            old.unlink()

    def restore(self, path: str | Path) -> None:
        """Continue exactly from a last.pt written by `save_last` (under torchrun rank 0 reads
        it and sends it to the others; each rank takes back its own RNG state)."""
        ckpt = distributed.broadcast_object(
            load_checkpoint(path, required=("model", "optimizer", "trainer", "rng"))
            if distributed.is_main() else None)
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None:
            if ckpt.get("ema") is None:
                raise UserError(f"{path}: was written without trainer.ema; resume without it")
            self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(**ckpt["trainer"])
        self._loss_sum = ckpt["train_loss"]["sum"].to(self.device)
        self._loss_count = ckpt["train_loss"]["count"]
        for cb, cb_state in zip(self.callbacks, ckpt.get("callbacks", []), strict=False):
            if cb_state is not None and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(cb_state)
        ranks = ckpt.get("rng_ranks")
        if self.world > 1 and (not ranks or len(ranks) != self.world):
            raise UserError(f"{path}: was written by {len(ranks) if ranks else 1} process(es); "
                            f"resume it with as many, not {self.world}")
        set_rng_state(ranks[self.rank] if self.world > 1 else ckpt["rng"])
        if self.writes:
            self._rewrite_metrics_csv()

    # ---------------------------------------------------------------- logging
    def _write(self, message: str, console: bool) -> None:
        if not distributed.is_main():
            return
        log.info(message)
        if console:
            tqdm.write(message, file=sys.stderr)

    def _metrics_path(self) -> Path | None:
        return self.run_dir / "metrics.csv" if self.writes else None

    def _rewrite_metrics_csv(self) -> None:
        history = self.state.history
        if not history:
            write_text_atomic(self._metrics_path(), "")
            return
        fields = list(history[0])
        write_csv_atomic(self._metrics_path(), fields,
                         ([row.get(k, "") for k in fields] for row in history))

    def _append_metrics(self, row: dict[str, float]) -> None:
        path = self._metrics_path()
        if path is None:
            return
        if len(self.state.history) == 1 or not path.exists():
            self._rewrite_metrics_csv()
            return
        with open(path, "a", newline="", encoding="utf-8") as fh:
            csv.DictWriter(fh, fieldnames=list(self.state.history[0])).writerow(row)

    # ---------------------------------------------------------------- evaluation
    def _loader(self, dataset, *, train: bool, epoch: int = 0, start_batch: int = 0):
        batch_size = self.cfg.batch_size if train else (self.cfg.eval_batch_size
                                                         or self.cfg.batch_size)
        if train and hasattr(dataset, "set_epoch"):  # per-epoch augmentation seeds
            dataset.set_epoch(epoch)
        return build_loader(dataset, batch_size, shuffle=train, seed=self.cfg.seed, epoch=epoch,
                            start_batch=start_batch, drop_last=train and self.cfg.drop_last,
                            num_workers=self.cfg.num_workers,
                            pin_memory=self.device.type == "cuda",
                            collate_fn=getattr(dataset, "collate_fn", None),
                            rank=self.rank, world=self.world, even=train)

    def _forward(self, batch, with_loss: bool, train: bool = False):
        """Move a batch to the device; the model's output and, if asked, the loss (under AMP).
        Training runs the raw model after the batch transform (mixup), evaluation the EMA."""
        batch = to_device(batch, self.device, non_blocking=True)
        if self.memory_format is not None and batch[0].dim() == 4:
            batch = (batch[0].contiguous(memory_format=self.memory_format), *batch[1:])
        if train and self.batch_transform is not None:
            batch = self.batch_transform(batch, self.state.epoch)
        with autocast(self.device, self.amp_dtype):
            output = self.objective.forward(self.train_model if train else self.eval_model, batch)
            loss = self.objective.loss(output, batch) if with_loss else None
        return batch, output, loss

    @torch.no_grad()
    def outputs_and_targets(self, dataset, with_loss: bool = True, max_batches: int = 0):
        """Outputs of the evaluated model over a dataset in order and, if with_loss, the
        targets and the mean loss. Tensors are returned on the CPU. Under torchrun each rank
        evaluates its contiguous share and every rank gets the whole, in dataset order."""
        distributed.broadcast_buffers(self.eval_model)  # one model: rank 0's BN statistics
        self.eval_model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        count, outputs, targets = 0, [], []
        for i, batch in enumerate(self._loader(dataset, train=False)):
            if max_batches and i >= max_batches:
                break
            batch, output, loss = self._forward(batch, with_loss)
            if with_loss:
                n = self.objective.batch_size(batch)
                loss_sum += loss.double() * n
                count += n
                targets.append(self.objective.target(batch).detach().cpu())
            outputs.append(self.objective.predict_output(output).float().cpu())
        parts = distributed.all_gather_objects(
            (torch.cat(outputs) if outputs else None, torch.cat(targets) if targets else None,
             loss_sum.item(), count))
        outputs = torch.cat([p[0] for p in parts if p[0] is not None])
        targets = [p[1] for p in parts if p[1] is not None]
        loss_total, count = sum(p[2] for p in parts), sum(p[3] for p in parts)
        return outputs, torch.cat(targets) if targets else None, loss_total / max(count, 1)

    def evaluate(self, dataset, max_batches: int = 0) -> dict[str, float]:
        """Mean loss (weighted by batch size) and the objective's metrics over the dataset."""
        outputs, targets, loss = self.outputs_and_targets(dataset, True, max_batches)
        metrics = self.objective.metrics(outputs, targets)
        return {"loss": loss, **{k: float(v) for k, v in metrics.items()}}

    def predict(self, dataset) -> torch.Tensor:
        """The objective's outputs for every item, in dataset order, on the CPU."""
        return self.outputs_and_targets(dataset, False)[0]

    # ---------------------------------------------------------------- training
    def _improved(self, value: float) -> bool:
        best = self.state.best
        if best is None or math.isnan(best):
            return not math.isnan(value)
        if self.cfg.mode == "min":
            return value < best - self.cfg.min_delta
        return value > best + self.cfg.min_delta

    def _validate(self, valid_dataset) -> dict[str, float]:
        """Log a metrics row; with a validation set also track the best and early stopping."""
        metrics = {} if valid_dataset is None else {
            f"valid_{k}": v for k, v in
            self.evaluate(valid_dataset, self.cfg.max_eval_batches).items()}
        loss_sum, loss_count = distributed.all_sum([self._loss_sum.item(), self._loss_count])
        train_loss = loss_sum / loss_count if loss_count else math.nan
        self._loss_sum.zero_()
        self._loss_count = 0
        row = {"epoch": self.state.epoch, "step": self.state.step, "lr": self.lr,
               "train_loss": train_loss, **metrics}
        if valid_dataset is not None and self.cfg.monitor not in row:
            raise UserError(f"trainer.monitor={self.cfg.monitor!r} is not a logged metric; "
                            f"choose one of {', '.join(k for k in row if k.startswith('valid_'))}")
        self.state.history.append(row)
        self._append_metrics(row)
        value = row.get(self.cfg.monitor, math.nan)
        improved = valid_dataset is not None and self._improved(value)
        self._keep_checkpoint(row)
        if improved:
            self.state.best, self.state.best_step, self.state.bad_evals = value, self.state.step, 0
            self.save_best(row)
        elif valid_dataset is not None:
            self.state.bad_evals += 1
            if self.cfg.patience and self.state.bad_evals >= self.cfg.patience:
                self.state.stopped = True
        n_evals = len(self.state.history)
        text = " ".join(f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in row.items())
        self._write(text + (" *" if improved else ""),
                    console=n_evals % max(1, self.cfg.print_every_evals) == 0
                    or self.state.stopped)
        for cb in self.callbacks:
            cb.on_evaluate(self, row)
        return row

    def _group_counts(self, sizes: list[int]) -> list[int]:
        """Samples in the accumulation group of each batch, for exact big-batch equivalence."""
        a = self.cfg.accum_steps
        return [sum(sizes[(b // a) * a:(b // a + 1) * a]) for b in range(len(sizes))]

    def _backward(self, batch, group_count: int, sync: bool = True) -> torch.Tensor:
        """Forward and backward one micro-batch, weighted by its share of the update's samples.
        Under torchrun only the last micro-batch of an update (sync) averages gradients."""
        quiet = self.train_model.no_sync() if self.world > 1 and not sync \
            else contextlib.nullcontext()
        with quiet:
            batch, _, loss = self._forward(batch, True, train=True)
            n = self.objective.batch_size(batch)
            scaled = loss * (n / group_count)
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        self._loss_sum += loss.detach().double() * n
        self._loss_count += n
        return loss

    def _show_progress(self, bar: tqdm, loss: torch.Tensor) -> None:
        shown = {"epoch": self.state.epoch, "loss": f"{loss.item():.4g}"}
        last = self.state.history[-1] if self.state.history else {}
        if self.cfg.monitor in last:
            shown[self.cfg.monitor] = f"{last[self.cfg.monitor]:.4g}"
        bar.set_postfix(shown, refresh=False)

    def _optimizer_step(self) -> None:
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.clip_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.state.step += 1

    def fit(self, train_dataset, valid_dataset=None) -> TrainState:
        cfg, st = self.cfg, self.state
        sizes = EpochBatchSampler(len(train_dataset), cfg.batch_size, shuffle=False,
                                  drop_last=cfg.drop_last, rank=self.rank,
                                  world=self.world).batch_sizes()
        if cfg.max_batches_per_epoch:
            sizes = sizes[:cfg.max_batches_per_epoch]
        if not sizes:
            raise UserError("the training set is empty or smaller than one batch")
        group_counts = self._group_counts(sizes)
        steps_per_epoch = math.ceil(len(sizes) / cfg.accum_steps)
        total_steps = steps_per_epoch * cfg.epochs
        for cb in self.callbacks:
            cb.on_fit_start(self)
        bar = tqdm(total=total_steps, initial=st.step, desc="train", dynamic_ncols=True,
                   disable=None if distributed.is_main() else True, file=sys.stderr)
        while st.epoch < cfg.epochs and not st.stopped:
            self.model.train()
            loader = self._loader(train_dataset, train=True, epoch=st.epoch,
                                  start_batch=st.batch_in_epoch)
            for batch in loader:
                b = st.batch_in_epoch
                if b >= len(sizes):
                    break
                self.lr = set_lr(self.optimizer, self.optim_cfg.lr, lr_factor(
                    st.step, self.sched_cfg, total_steps=total_steps,
                    steps_per_epoch=steps_per_epoch))
                update = (b + 1) % cfg.accum_steps == 0 or b + 1 == len(sizes)
                loss = self._backward(batch, group_counts[b], sync=update)
                st.batch_in_epoch += 1
                if not update:
                    continue
                self._optimizer_step()
                bar.update(1)
                if st.step % 10 == 0:
                    self._show_progress(bar, loss)
                for cb in self.callbacks:
                    cb.on_step_end(self)
                if cfg.eval_every_steps and st.step % cfg.eval_every_steps == 0:
                    self._validate(valid_dataset)
                    self.model.train()
                    if st.stopped:
                        break
                if cfg.ckpt_every_steps and st.step % cfg.ckpt_every_steps == 0:
                    self.save_last()
            if st.stopped:
                break
            st.epoch += 1
            st.batch_in_epoch = 0
            if not cfg.eval_every_steps:
                self._validate(valid_dataset)
            for cb in self.callbacks:
                cb.on_epoch_end(self)
            if st.epoch % max(1, cfg.save_every_epochs) == 0 or st.epoch == cfg.epochs:
                self.save_last()
        bar.close()
        if not st.history or st.history[-1]["step"] != st.step:
            self._validate(valid_dataset)
        if valid_dataset is None:  # nothing to choose from: the final weights are the best
            self.save_best({"epoch": st.epoch, "step": st.step})
        self.save_last()
        if self.writes and st.history:
            from common.plots import plot_curves
            plot_curves(st.history, self.run_dir / "curves.png", monitor=cfg.monitor)
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return st
