"""The engine: Trainer.fit (train + validate + early stopping + checkpoints), evaluate, predict.

What happens to a batch comes from the task's Objective (common/engine/objective.py): by default one
model and optimizer, `forward` + `loss`; a task may bring several named models and optimizers
and its own training step, which calls `backward` and `step` here, so AMP, accumulation,
clipping, DDP and EMA stay in one place. Everything that decides what happens next (step,
epoch, batch position, RNG, early stopping, history) lives in `TrainState` and in the
checkpoint, so a resumed run is the same run. Files are written by the CheckpointManager
(common/engine/checkpoint.py) and the RunLog (common/engine/runlog.py).
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from common.core import distributed
from common.core.config import option
from common.core.errors import UserError
from common.core.runtime import (
    Salt,
    amp_dtype,
    autocast,
    choose_device,
    derive_seed,
    flush_denormals,
    get_rng_state,
    seed_everything,
    set_rng_state,
)
from common.data.batches import take, to_cpu, to_device
from common.data.loading import build_loader, supports_batched_indexing
from common.engine.checkpoint import CheckpointManager, load_checkpoint
from common.engine.objective import Callback, Objective
from common.engine.optim import OptimConfig, OptimizerSpec, SchedConfig
from common.engine.rundir import RunDir
from common.engine.runlog import RunLog
from common.engine.stepper import Stepper

__all__ = ["Callback", "Objective", "OptimizerSpec", "TrainState", "Trainer", "TrainerConfig",
           "to_device"]

NO_BAD_STEP = 2**62  # Trainer._first_bad while every update's loss was finite


@dataclass
class TrainerConfig:
    epochs: int = option(10, min=1)
    batch_size: int = option(64, min=1)
    eval_batch_size: int = option(0, min=0)  # 0: same as batch_size
    accum_steps: int = option(1, min=1)  # micro-batches per update; the update equals the big batch
    clip_grad_norm: float = option(0.0, min=0.0)  # 0: no clipping
    log_grad_norm: bool = True        # the gradient norm of every update (steps.csv, and its
                                      # mean per evaluation in metrics.csv)
    drop_last: bool = False           # drop the last short training batch of each epoch
    eval_every_steps: int = option(0, min=0)  # 0: validate at the end of every epoch
    monitor: str = "valid_loss"       # metric for best.pt and early stopping
    mode: str = option("min", choices=("min", "max"))  # min | max
    patience: int = option(0, min=0)  # evaluations without improvement before stopping; 0: off
    min_delta: float = option(0.0, min=0.0)
    save_every_epochs: int = option(1, min=1)  # write last.pt every N epochs (and at the end)
    ckpt_every_steps: int = option(0, min=0)  # also write last.pt every N updates; 0: off
    seed: int = 0
    device: str = "auto"              # auto | cpu | cuda | cuda:1 | mps
    amp: bool = True                  # mixed precision on CUDA (bf16 if supported, else fp16)
    amp_dtype: str = option("auto", choices=("auto", "bf16", "fp16"))  # auto: bf16 if supported
    channels_last: bool = False       # on CUDA, NHWC memory format for the model and 4-D inputs
    # torch.compile the model that trains (evaluation runs it as written); the first updates
    # of each new input shape are slower (compilation); "eager" checks capture alone
    compile: bool = False
    compile_backend: str = option("inductor", choices=("inductor", "cudagraphs", "eager",
                                                       "aot_eager"))
    sync_batchnorm: bool = False      # under torchrun on CUDA: BatchNorm statistics over all ranks
    num_workers: int = option(0, min=0)
    threads: int = option(0, min=0)  # CPU threads; 0: all cores available to the process
    # on the CPU, denormal floats (below 1.2e-38) as zero: tiny Adam moments late in a run
    # otherwise make every update several times slower (scripts/bench/cpu_step.py)
    flush_denormal: bool = True
    print_every_evals: int = option(1, min=1)  # print every Nth evaluation line (all go to log.txt)
    ema: bool = False                 # keep an exponential moving average of the weights; it is
                                      # what gets evaluated, saved as best.pt and predicted with
    ema_decay: float = option(0.999, min=0.0, max=1.0)
    ema_model: str = ""               # which named model the EMA follows ("": the whole model)
    # keep the weights of the last N evaluations as checkpoints/step-*.pt (for `average`)
    keep_checkpoints: int = option(0, min=0)
    keep_best_checkpoints: int = option(0, min=0)  # also keep the N best by the monitored metric
    tensorboard: bool = False         # also TensorBoard event files in <run>/tensorboard/
    max_batches_per_epoch: int = option(0, min=0)  # for dry runs; 0: all
    max_eval_batches: int = option(0, min=0)  # for dry runs; 0: all


@dataclass
class TrainState:
    epoch: int = 0                    # epoch in progress
    batch_in_epoch: int = 0           # batches of that epoch already consumed
    step: int = 0                     # updates (accumulation groups) so far
    best: float | None = None
    best_step: int = -1
    bad_evals: int = 0
    stopped: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


class RunningMeans:
    """Weighted means of logged values (losses, gradient norms) since the last evaluation, kept
    as device tensors (no synchronisation per step) and checkpointed."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, list[torch.Tensor]] = {}

    def add(self, key: str, total: torch.Tensor, weight=1.0) -> None:
        """Add `total`, the sum of `weight` units' values."""
        entry = self.sums.setdefault(key, [torch.zeros((), dtype=torch.float64,
                                                       device=self.device)] * 2)
        entry[0] = entry[0] + total.detach().double()
        entry[1] = entry[1] + weight

    def pop(self) -> dict[str, float]:
        """Every mean over all processes; then start again."""
        keys = list(self.sums)
        flat = distributed.all_sum([float(v) for k in keys for v in self.sums[k]])
        self.sums = {}
        return {k: flat[2 * i] / flat[2 * i + 1] if flat[2 * i + 1] else math.nan
                for i, k in enumerate(keys)}

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        return {k: [torch.as_tensor(v).cpu() for v in s] for k, s in self.sums.items()}

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        self.sums = {k: [torch.as_tensor(v).to(self.device) for v in s]
                     for k, s in state.items()}


def _name(objective) -> str:
    """A task's name (or an objective's class name), for messages."""
    return getattr(objective, "name", "") or getattr(objective, "__name__", "") or \
        type(objective).__name__


def check_accumulation(objective, cfg: TrainerConfig) -> None:
    """A task (class or instance) that declares `accumulates = False` refuses accum_steps > 1."""
    if cfg.accum_steps > 1 and not objective.accumulates:
        raise UserError(f"trainer.accum_steps={cfg.accum_steps}: {_name(objective)} steps on "
                        "every batch and cannot accumulate; set trainer.accum_steps=1 (and a "
                        "larger trainer.batch_size instead)")


def _suffix(name: str) -> str:
    """Column suffix of a named optimizer: none for "main"."""
    return "" if name == "main" else f"_{name}"


class Trainer:
    """`model` is one module or an nn.ModuleDict of named ones (a GAN's G and D), saved
    together in one checkpoint."""

    def __init__(self, model: nn.Module, objective: Objective, cfg: TrainerConfig, *,
                 optim: OptimConfig | None = None, sched: SchedConfig | None = None,
                 run_dir: str | Path | None = None, callbacks: list[Callback] = (),
                 extra_state: dict[str, Any] | None = None, batch_transform=None):
        self.cfg, self.objective = cfg, objective
        self.device = choose_device(cfg.device)
        if self.device.type == "cpu" and cfg.flush_denormal:
            flush_denormals()
        self.rank, self.world = distributed.rank(), distributed.world_size()
        if self.world > 1 and cfg.sync_batchnorm and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.memory_format = (torch.channels_last if cfg.channels_last
                              and self.device.type == "cuda" else None)
        self.model = model.to(self.device)
        if self.memory_format is not None:
            self.model = self.model.to(memory_format=self.memory_format)
        # a task with its own training step gets plain modules; the engine then syncs the
        # gradients of each optimizer itself (DDP cannot follow several models and steps)
        self.manual = not objective.automatic_optimization
        check_accumulation(objective, cfg)
        self._update = True       # may the running training_step step? (its `update`)
        self.train_model = self.model
        if self.world > 1:
            if self.manual:
                distributed.broadcast_module(self.model)
            else:  # rank 0's weights broadcast now, gradients averaged in backward
                self.train_model = DistributedDataParallel(
                    self.model,
                    device_ids=[self.device.index] if self.device.type == "cuda" else None)
            seed_everything(derive_seed(cfg.seed, Salt.RANK, self.rank))  # dropout, mixup
        if cfg.compile:
            self.train_model = torch.compile(self.train_model, backend=cfg.compile_backend)
        self._build_ema()
        self.batch_transform = batch_transform
        self.amp_dtype = amp_dtype(self.device, cfg.amp, cfg.amp_dtype)
        self.stepper = Stepper(
            objective.configure_optimizers(self.model, optim or OptimConfig(),
                                           sched or SchedConfig()),
            fp16=self.amp_dtype == torch.float16, world=self.world, sync_grads=self.manual,
            clip_grad_norm=cfg.clip_grad_norm, log_grad_norm=cfg.log_grad_norm)
        self._ema_after = self.stepper.owner_of(self.ema_target) if self.ema else None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.run = RunDir(run_dir) if run_dir is not None else None
        self.writes = self.run is not None and distributed.is_main()
        self.ckpts = CheckpointManager(self.run, writes=self.writes,
                                       keep_last=cfg.keep_checkpoints,
                                       keep_best=cfg.keep_best_checkpoints, mode=cfg.mode)
        self.log = RunLog(self.run, writes=self.writes, main=distributed.is_main(),
                          tensorboard=cfg.tensorboard)
        self.callbacks = [*objective.callbacks(), *callbacks]
        self.extra_state = extra_state or {}
        self.state = TrainState()
        self.means = RunningMeans(self.device)
        self._first_bad = torch.full((), NO_BAD_STEP, dtype=torch.long)
        self.best_model_state: dict[str, torch.Tensor] | None = None

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.stepper.optimizers

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The "main" optimizer (the only one on the default path)."""
        return self.optimizers["main"]

    @property
    def lr(self) -> dict[str, float]:
        """Each optimizer's learning rate at its last update (before lr_scale)."""
        return self.stepper.lr

    def _build_ema(self) -> None:
        cfg = self.cfg
        self.ema_target, self.ema, self._eval_view = self.model, None, None
        if not cfg.ema:
            return
        if cfg.ema_model:
            if not isinstance(self.model, nn.ModuleDict) or cfg.ema_model not in self.model:
                names = ", ".join(self.model) if isinstance(self.model, nn.ModuleDict) else ""
                raise UserError(f"trainer.ema_model={cfg.ema_model!r} names no model of this "
                                f"task; choose one of: {names or 'none (leave it empty)'}")
            self.ema_target = self.model[cfg.ema_model]
        self.ema = AveragedModel(self.ema_target, use_buffers=True,
                                 multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))
        if cfg.ema_model:  # the other models evaluate as they are
            self._eval_view = nn.ModuleDict({k: self.ema.module if k == cfg.ema_model else m
                                             for k, m in self.model.items()})

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated, saved as best and used to predict (EMA if on)."""
        if self.ema is None:
            return self.model
        return self._eval_view if self._eval_view is not None else self.ema.module

    # ---------------------------------------------------------------- helpers for steps
    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    def forward(self, batch, *, train: bool = True):
        """(batch, output, loss) under autocast: training runs the (DDP-wrapped) model after
        the batch transform (mixup), evaluation the evaluated model."""
        if train and self.batch_transform is not None:
            batch = self.batch_transform(batch, self.state.epoch)
        with self.autocast():
            output = self.objective.forward(self.train_model if train else self.eval_model,
                                            batch)
            loss = self.objective.loss(output, batch)
        return batch, output, loss

    def backward(self, loss: torch.Tensor, optimizer: str = "main", count=1) -> None:
        """Backward `loss` (a mean over `count` units: items, tokens) into `optimizer`'s
        gradients, weighted so that an accumulated update equals the big batch."""
        self.stepper.backward(loss, optimizer, count)

    def step(self, optimizer: str = "main") -> None:
        """One update of `optimizer` (learning rate, unscale, normalise, clip, step, zero the
        gradients), then of the EMA if it follows the parameters this optimizer updates. Only
        on the last micro-batch of an accumulation group (`update` in training_step)."""
        if not self._update:
            raise UserError(
                f"{_name(self.objective)}: the training step stepped optimizer {optimizer!r} "
                "on a micro-batch that is not the last of its group "
                f"(trainer.accum_steps={self.cfg.accum_steps}); step only when update is "
                "true, or declare accumulates = False")
        self.stepper.step(optimizer, self.state.step)
        if self.ema is not None and optimizer == self._ema_after:
            self.ema.update_parameters(self.ema_target)

    def _no_sync(self, update: bool):
        if self.world > 1 and not self.manual and not update:
            return self.train_model.no_sync()
        return contextlib.nullcontext()

    def to_device(self, batch):
        batch = to_device(batch, self.device, non_blocking=True)
        if self.memory_format is not None and isinstance(batch, list | tuple) \
                and isinstance(batch[0], torch.Tensor) and batch[0].dim() == 4:
            batch = (batch[0].contiguous(memory_format=self.memory_format), *batch[1:])
        return batch

    # ---------------------------------------------------------------- batches
    def sampler(self, dataset, *, train: bool):
        cfg = self.cfg
        return self.objective.batch_sampler(
            dataset, train=train, batch_size=cfg.batch_size if train
            else (cfg.eval_batch_size or cfg.batch_size), seed=cfg.seed,
            drop_last=train and cfg.drop_last, as_tensor=supports_batched_indexing(dataset),
            rank=self.rank, world=self.world)

    def loader(self, dataset, sampler, *, epoch: int = 0, start_batch: int = 0,
               train: bool = False):
        if train and hasattr(dataset, "set_epoch"):  # per-epoch augmentation seeds
            dataset.set_epoch(epoch)
        return build_loader(dataset, batch_sampler=sampler, seed=self.cfg.seed, epoch=epoch,
                            start_batch=start_batch, num_workers=self.cfg.num_workers,
                            pin_memory=self.device.type == "cuda",
                            collate_fn=getattr(dataset, "collate_fn", None))

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def collect(self, dataset, with_targets: bool = True, max_batches: int = 0
                ) -> tuple[Any, Any, float | None]:
        """(predictions, targets, mean loss) of the evaluated model over a dataset, in dataset
        order and on the CPU: exact sharded evaluation, every process predicts its share, the
        shares are gathered in rank order and put back in dataset order, each item once.
        Predictions are what the task's predict/validation step returns, joined and finalized
        by the task; targets and loss are None without with_targets (or when the task reports
        none). Under torchrun every rank gets the whole."""
        model, obj = self.eval_model, self.objective
        distributed.broadcast_buffers(model)  # one model: rank 0's BN statistics
        model.eval()
        sampler = self.sampler(dataset, train=False)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        count, preds, targets = 0.0, [], []
        batches = self.loader(dataset, sampler)
        shown = tqdm(batches, desc="predict", leave=False, dynamic_ncols=True, file=sys.stderr,
                     disable=None if distributed.is_main() else True)  # a terminal only
        for i, batch in enumerate(shown):
            if max_batches and i >= max_batches:
                break
            batch = self.to_device(batch)
            target = loss = None
            with self.autocast():
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
        shown.close()
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

    def evaluate(self, dataset, max_batches: int = 0) -> dict[str, float]:
        """Mean loss (weighted by the task's count) and the task's metrics over a dataset."""
        return self._evaluate(dataset, max_batches)[0]

    def _evaluate(self, dataset, max_batches: int = 0) -> tuple[dict[str, float], Any]:
        """(evaluate's metrics, the predictions they were computed from)."""
        preds, targets, loss = self.collect(dataset, True, max_batches)
        metrics = self.objective.metrics(preds, targets, dataset=dataset)
        return {**({"loss": loss} if loss is not None else {}),
                **{k: float(v) for k, v in metrics.items()}}, preds

    def grad_scale(self, optimizer: str = "main") -> float:
        """The AMP loss scale of `optimizer`'s gradients (1 without fp16): divide a gradient
        read before `step` by it to see its true size."""
        scaler = self.stepper.scalers[optimizer]
        return float(scaler.get_scale()) if scaler is not None else 1.0

    def predict(self, dataset):
        """The task's predictions for every item, in dataset order, on the CPU."""
        return self.collect(dataset, False)[0]

    # ---------------------------------------------------------------- checkpoints
    def full_state(self) -> dict[str, Any]:
        return {
            **self.extra_state,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "ema_model": self.cfg.ema_model,
            **self.stepper.state_dict(),
            "trainer": asdict(self.state),
            "running": self.means.state_dict(),
            "checkpoints": self.ckpts.state_dict(),
            "rng": get_rng_state(),
            "rng_ranks": distributed.all_gather_objects(get_rng_state()) if self.world > 1
            else None,
            "callbacks": [cb.state_dict() if hasattr(cb, "state_dict") else None
                          for cb in self.callbacks],
        }

    def _weights_state(self, metrics: dict[str, float]) -> dict[str, Any]:
        return {**self.extra_state, "model": self.eval_model.state_dict(), "metrics": metrics,
                "trainer": {"epoch": self.state.epoch, "step": self.state.step}}

    def check_finite(self) -> None:
        """Stop (one line) once an update's loss was NaN or infinite: what follows would
        train, checkpoint and submit nonsense."""
        bad = int(self._first_bad)
        if bad != NO_BAD_STEP:
            raise UserError(
                f"the training loss was not finite (NaN or inf) at update {bad} (epoch "
                f"{(bad - 1) // max(1, self.stepper.steps_per_epoch) + 1}); look for NaN or "
                "inf in the inputs, or lower optim.lr / set trainer.clip_grad_norm; the "
                "checkpoints before it are kept")

    def save_last(self) -> None:
        self.check_finite()
        if self.run is not None:
            state = self.full_state()  # every rank: the RNG states are gathered
            if self.writes:
                self.log.flush_steps()
            self.ckpts.save_last(state)

    def save_best(self, metrics: dict[str, float]) -> None:
        """Write best.pt, or keep the best weights in memory when there is no run directory."""
        if self.run is None:
            self.best_model_state = {k: v.detach().clone()
                                     for k, v in self.eval_model.state_dict().items()}
        else:
            self.ckpts.save_best(self._weights_state(metrics))

    def load_best(self) -> None:
        """Put the best weights (from best.pt or from memory) into the evaluated model. Under
        torchrun rank 0 reads the file and sends it to the others."""
        if self.run is not None:
            state = distributed.broadcast_object(
                load_checkpoint(self.run.best)["model"] if distributed.is_main() else None)
            self.eval_model.load_state_dict(state)
        elif self.best_model_state is not None:
            self.eval_model.load_state_dict(self.best_model_state)

    def restore(self, path: str | Path) -> None:
        """Continue exactly from a last.pt written by `save_last` (under torchrun rank 0 reads
        it and sends it to the others; each rank takes back its own RNG state)."""
        ckpt = distributed.broadcast_object(
            load_checkpoint(path, required=("model", "optimizers", "trainer", "rng"))
            if distributed.is_main() else None)
        saved, now = (state.get("config", {}).get("model") for state in (ckpt, self.extra_state))
        if saved is not None and now is not None and saved != now:
            edits = ", ".join(f"model.{k}: {saved.get(k)!r} -> {now.get(k)!r}"
                              for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k))
            raise UserError(f"{path}: written by another [model] than the run's config.toml "
                            f"now says ({edits}); undo the edit to resume, or start a new run")
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise UserError(f"{path}: does not fit this model ({str(exc).splitlines()[0]}); "
                            "resume with the run's own config, or start a new run") from None
        if self.ema is not None:
            if ckpt.get("ema") is None or ckpt.get("ema_model", "") != self.cfg.ema_model:
                raise UserError(f"{path}: was written without this trainer.ema setting; "
                                "resume with the run's own config")
            self.ema.load_state_dict(ckpt["ema"])
        self.stepper.load_state_dict(ckpt, path)
        self.state = TrainState(**ckpt["trainer"])
        self.means.load_state_dict(ckpt.get("running", {}))
        self.ckpts.load_state_dict(ckpt.get("checkpoints", {}), self.state.step)
        for cb, cb_state in zip(self.callbacks, ckpt.get("callbacks", []), strict=False):
            if cb_state is not None and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(cb_state)
        ranks = ckpt.get("rng_ranks")
        if self.world > 1 and (not ranks or len(ranks) != self.world):
            raise UserError(f"{path}: was written by {len(ranks) if ranks else 1} process(es); "
                            f"resume it with as many, not {self.world}")
        set_rng_state(ranks[self.rank] if self.world > 1 else ckpt["rng"])
        self.log.rewrite_metrics(self.state.history)
        self.log.truncate_steps(self.state.step)
        self.log.say(f"resumed from update {self.state.step}, epoch {self.state.epoch}"
                     f" (batch {self.state.batch_in_epoch} of the next)")

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
        cfg, st = self.cfg, self.state
        self.check_finite()
        metrics, outputs = {}, None
        if valid_dataset is not None:
            metrics, outputs = self._evaluate(valid_dataset, cfg.max_eval_batches)
            metrics = {f"valid_{k}": v for k, v in metrics.items()}
        row = {"epoch": st.epoch, "step": st.step,
               **{f"lr{_suffix(n)}": lr for n, lr in self.lr.items()},
               **self.means.pop(), **metrics}
        if valid_dataset is not None and cfg.monitor not in row:
            raise UserError(f"trainer.monitor={cfg.monitor!r} is not a logged metric; "
                            f"choose one of {', '.join(k for k in row if k.startswith('valid_'))}")
        st.history.append(row)
        self.log.append_metrics(st.history)
        self.log.flush_steps()
        value = row.get(cfg.monitor, math.nan)
        improved = valid_dataset is not None and self._improved(value)
        if cfg.keep_checkpoints > 0 or cfg.keep_best_checkpoints > 0:
            self.ckpts.keep(st.step, value, self._weights_state(row))
        if improved:
            st.best, st.best_step, st.bad_evals = value, st.step, 0
            self.save_best(row)
        elif valid_dataset is not None:
            st.bad_evals += 1
            if cfg.patience and st.bad_evals >= cfg.patience:
                st.stopped = True
        text = " ".join(f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in row.items())
        self.log.say(text + (" *" if improved else ""),
                     console=len(st.history) % max(1, cfg.print_every_evals) == 0 or st.stopped)
        for cb in self.callbacks:
            cb.on_evaluate(self, row, outputs)
        return row

    def _record_update(self, sums: dict[str, torch.Tensor], count) -> None:
        """The update's row for steps.csv (its losses: `sums` over `count` units) and the
        running means for metrics.csv."""
        for key, total in sums.items():
            self.means.add(f"train_{key}", total, count)
        # the first update whose loss is not finite, kept on the device (no sync per update);
        # read at each evaluation and checkpoint (check_finite)
        finite = torch.stack([torch.isfinite(t).all() for t in sums.values()]).all()
        step = torch.full((), self.state.step, dtype=torch.long, device=finite.device)
        self._first_bad = torch.where(finite, self._first_bad.to(finite.device),
                                      torch.minimum(self._first_bad.to(finite.device), step))
        row = {"step": self.state.step, "epoch": self.state.epoch,
               **{f"lr{_suffix(n)}": lr for n, lr in self.lr.items()},
               **{k: v / count for k, v in sums.items()}}
        for name, norm in self.stepper.pop_norms().items():
            row[f"grad_norm{_suffix(name)}"] = norm
            self.means.add(f"grad_norm{_suffix(name)}", norm)
        self.log.add_step(row)

    def _show_progress(self, bar: tqdm, loss: torch.Tensor) -> None:
        shown = {"epoch": self.state.epoch, "loss": f"{loss.item():.4g}"}
        last = self.state.history[-1] if self.state.history else {}
        if self.cfg.monitor in last:
            shown[self.cfg.monitor] = f"{last[self.cfg.monitor]:.4g}"
        bar.set_postfix(shown, refresh=False)

    def fit(self, train_dataset, valid_dataset=None) -> TrainState:
        cfg, st, obj = self.cfg, self.state, self.objective
        sampler = self.sampler(train_dataset, train=True)
        n_batches = sampler.num_batches()
        if cfg.max_batches_per_epoch:
            n_batches = min(n_batches, cfg.max_batches_per_epoch)
        if n_batches < 1:
            raise UserError("the training set is empty or smaller than one batch")
        self.stepper.steps_per_epoch = math.ceil(n_batches / cfg.accum_steps)
        self.stepper.total_steps = total_steps = self.stepper.steps_per_epoch * cfg.epochs
        for cb in self.callbacks:
            cb.on_fit_start(self)
        bar = tqdm(total=total_steps, initial=st.step, desc="train", dynamic_ncols=True,
                   disable=None if distributed.is_main() else True, file=sys.stderr)
        group: dict[str, torch.Tensor] = {}
        group_count = 0.0
        while st.epoch < cfg.epochs and not st.stopped:
            self.model.train()
            for batch in self.loader(train_dataset, sampler, epoch=st.epoch,
                                      start_batch=st.batch_in_epoch, train=True):
                b = st.batch_in_epoch
                if b >= n_batches:
                    break
                update = (b + 1) % cfg.accum_steps == 0 or b + 1 == n_batches
                batch = self.to_device(batch)
                self._update = update
                with self._no_sync(update):
                    out = obj.training_step(self, batch, update=update)
                self._update = True
                losses = out if isinstance(out, dict) else {"loss": out}
                n = obj.count(batch)
                for key, value in losses.items():
                    group[key] = group.get(key, 0.0) + value.detach().double() * n
                group_count = group_count + n
                st.batch_in_epoch += 1
                if not update:
                    continue
                st.step += 1
                self._record_update(group, group_count)
                group, group_count = {}, 0.0
                bar.update(1)
                if st.step % 10 == 0:
                    self._show_progress(bar, next(iter(losses.values())))
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
        self.log.plot(st.history, cfg.monitor)
        self.log.close()
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return st
