"""One run end to end: config -> data -> Trainer.fit -> best checkpoint -> submission.
Using a run once it has finished (predict, ensemble, average) is common/experiments/finished.py."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.core import distributed
from common.core.config import Config, config_to_dict, save_config
from common.core.errors import Terminated, UserError
from common.core.runtime import (
    Salt,
    choose_device,
    derive_seed,
    seed_everything,
    set_cpu_threads,
)
from common.data.mix import MixBatch
from common.engine.checkpoint import average_checkpoints, load_checkpoint, prediction_weights
from common.engine.fusion import check_fusable, fuse, save_outputs
from common.engine.rundir import RunDir
from common.engine.runlog import say
from common.engine.task import Task
from common.engine.trainer import Callback, Trainer, check_accumulation

log = logging.getLogger("mlhw")


@contextlib.contextmanager
def stop_signals_as_interrupts():
    """SIGTERM and SIGHUP raise Terminated (a KeyboardInterrupt) in the main thread for the
    duration, so a run stopped by `kill` unwinds like Ctrl-C instead of vanishing mid-write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def run_logging(run_dir: Path):
    """Send the 'mlhw' log to run_dir/log.txt for the duration of a run, and keep
    run_dir/status.json saying how the run stands (rank 0 only): running (with the process id),
    then finished, interrupted (Ctrl-C, or the signal that stopped it: SIGTERM, SIGHUP), pruned
    (by a tuner) or failed (with the error). A process killed outright (SIGKILL, power) cannot
    say so; RunDir.status reads such a run as dead."""
    if not distributed.is_main():
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(RunDir(run_dir).log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    def status(state: str, **info) -> None:
        with contextlib.suppress(OSError):  # never in the way of the run's own error
            RunDir(run_dir).set_status(state, **info)

    status("running")
    try:
        with stop_signals_as_interrupts():
            yield
    except KeyboardInterrupt as exc:
        status("interrupted", signal=exc.name if isinstance(exc, Terminated) else "SIGINT")
        raise
    except BaseException as exc:
        pruned = type(exc).__name__ == "TrialPruned"
        status("pruned" if pruned else "failed",
               error=(str(exc).splitlines() or [type(exc).__name__])[0])
        raise
    else:
        status("finished")
    finally:
        log.removeHandler(handler)
        handler.close()


def dry_run_config(config: Config) -> Config:
    """A tiny slice of everything: one epoch of two batches, two validation batches."""
    config = dict(config)
    config["trainer"] = replace(config["trainer"], epochs=1, max_batches_per_epoch=2,
                                max_eval_batches=2, eval_every_steps=0, ckpt_every_steps=0)
    return config


def data_dir_of(task: Task, download_hint: str = "") -> Path:
    """The task's data folder (data.dir, default data/<name>), or a one-line error saying
    where the data comes from (`download_hint`, the homework's)."""
    data_dir = Path(task.config["data"].dir or f"data/{task.name}")
    if not data_dir.is_dir():
        hint = f"download it ({download_hint}) and pass --data" if download_hint \
            else "pass --data"
        raise UserError(f"{data_dir}: data directory not found; {hint}, or use --demo")
    return data_dir


def make_trainer(task: Task, model, run_dir: Path | None, callbacks=()) -> Trainer:
    cfg = task.config
    mix = MixBatch(cfg["mix"], task.class_count(), task.label_smoothing)
    return Trainer(model, task, cfg["trainer"], optim=cfg["optim"], sched=cfg["sched"],
                   run_dir=run_dir, callbacks=list(callbacks),
                   extra_state={"config": config_to_dict(cfg), "task": task.state_dict(),
                                "task_name": task.name},
                   batch_transform=mix if mix.enabled else None)


def predict_outputs(task: Task, trainer: Trainer, dataset, *, with_targets: bool = False):
    """The model's outputs for a dataset, fused over test-time augmented views when
    predict.tta > 0 (plain view weighted by predict.tta_plain_weight). With with_targets,
    returns (outputs, targets) for a labelled dataset."""
    cfg = task.config["predict"]
    if cfg.tta > 0:
        check_fusable(task.output_kind, f"{task.name} models")
    start = time.perf_counter()
    outputs, targets, _ = trainer.collect(dataset, with_targets)
    if cfg.tta > 0:
        views = [outputs]
        for view in range(cfg.tta):  # a line per view: 8 views of a large set take minutes
            say(f"test-time augmentation: view {view + 1} of {cfg.tta} "
                f"({len(dataset)} items, {time.perf_counter() - start:.0f} s so far)")
            seed = derive_seed(task.config["trainer"].seed, Salt.TTA, view)
            with torch.random.fork_rng(devices=[]):  # leave the training RNG streams alone
                torch.manual_seed(seed)
                views.append(trainer.predict(task.tta_view(dataset, view, seed)))
        share = (1.0 - cfg.tta_plain_weight) / cfg.tta
        outputs = fuse(views, kind=task.output_kind,
                       weights=[cfg.tta_plain_weight] + [share] * cfg.tta)
    return (outputs, targets) if with_targets else outputs


def check_finite_outputs(outputs, submission: Path) -> None:
    """Refuse to write a submission from NaN or infinite outputs, whatever their kind (scores,
    logits, images; tensors, arrays, or lists and dicts of them): a model that diverged
    would hand in nonsense without a word."""
    parts = outputs.values() if isinstance(outputs, dict) else \
        outputs if isinstance(outputs, list | tuple) else [outputs]
    for part in parts:
        if isinstance(part, dict | list | tuple):
            check_finite_outputs(part, submission)
            continue
        values = torch.as_tensor(part) if isinstance(part, np.ndarray) else part
        if isinstance(values, torch.Tensor) and values.is_floating_point():
            bad = (~torch.isfinite(values)).reshape(len(values), -1).any(1) \
                if values.ndim else ~torch.isfinite(values).reshape(1)
            if bad.any():
                raise UserError(f"{submission}: the model's output for test item "
                                f"{int(bad.nonzero()[0])} is not finite (NaN or inf); nothing "
                                "written; the model diverged: retrain with a lower optim.lr")


def write_outputs(task: Task, test_data, outputs, out_dir: Path,
                  info: dict | None = None) -> Path:
    """Keep raw test outputs (for ensembling) and write the submission next to them (rank 0
    only under torchrun; every rank returns the submission's path)."""
    if not distributed.is_main():
        return out_dir / task.submission_name
    check_finite_outputs(outputs, out_dir / task.submission_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    # the submission first: an invalid one (wrong rows) leaves no outputs behind either
    submission = task.write_submission(test_data, outputs, out_dir / task.submission_name)
    save_outputs(RunDir(out_dir).outputs, outputs, task=task.name, kind=task.output_kind,
                 info={"task_state": task.state_dict(), **(info or {})})
    return submission


def predict_and_write(task: Task, trainer: Trainer, test_data, run_dir: Path) -> Path:
    """Predict the test set (with TTA if configured) and write outputs and submission."""
    outputs = predict_outputs(task, trainer, task.make_test_dataset(test_data))
    return write_outputs(task, test_data, outputs, run_dir)


def prepare(task_cls: type[Task], config: Config, data_dir: str | Path
            ) -> tuple[Task, Any, tuple[np.ndarray, np.ndarray]]:
    """Read the training data in data_dir, split it, and fit a task on the training part:
    (the fitted task, the training data, (train_idx, valid_idx))."""
    unfitted = task_cls(config)
    train_data = unfitted.load_train(Path(data_dir))
    split = unfitted.split(train_data)
    return unfitted.fitted(train_data, split[0]), train_data, split


def fit_split(task: Task, train_data, train_idx, valid_idx, *, run_dir: Path | None = None,
              resume: bool = False, callbacks: list[Callback] = (), datasets=None) -> Trainer:
    """Fit a fresh model on train_idx with `task` (fitted on train_idx: `Task.fitted`),
    validate on valid_idx, and leave the weights chosen by predict.ckpt (best, or last: the
    final ones) in the returned trainer. Without run_dir nothing is written. `datasets`:
    (train, valid) made already."""
    train_ds, valid_ds = datasets or task.make_datasets(train_data, train_idx, valid_idx)
    seed_everything(task.config["trainer"].seed)
    trainer = make_trainer(task, task.build_model(), run_dir, callbacks)
    log.info("%d train / %d valid items, device %s", len(train_ds),
             len(valid_ds) if valid_ds is not None else 0, trainer.device)
    if resume:
        trainer.restore(RunDir(run_dir).last)
    trainer.fit(train_ds, valid_ds)
    which, count = task.config["predict"].ckpt, task.config["predict"].average
    if count > 0 and run_dir is not None:
        trainer_cfg = task.config["trainer"]
        path = RunDir(run_dir).checkpoint(average_checkpoints(
            run_dir, count, monitor=trainer_cfg.monitor, mode=trainer_cfg.mode)) \
            if distributed.is_main() else None
        state = distributed.broadcast_object(load_checkpoint(path) if path else None)
        trainer.eval_model.load_state_dict(state["model"])
        say(f"predicting with the mean of {', '.join(state['averaged'])} "
            f"(predict.average = {count})")
        return trainer
    if which == "best":
        trainer.load_best()
    elif which != "last":  # a checkpoint of the user's (checked to exist before training)
        trainer.eval_model.load_state_dict(prediction_weights(load_checkpoint(which)))
    if run_dir is not None:
        weights = {"last": "the final weights", "best": f"{RunDir(run_dir).best}"}.get(
            which, which)
        say(f"predicting with {weights} (predict.ckpt = {which!r})")
    return trainer


def check_run_config(task_cls: type[Task], config: Config) -> None:
    """What a config asks that the run could only find out late: averaging more checkpoints
    than it keeps, accumulation for a task that cannot accumulate."""
    check_accumulation(task_cls, config["trainer"])
    choose_device(config["trainer"].device)  # a device this machine lacks: now, not mid-run
    count, kept = config["predict"].average, config["trainer"].keep_checkpoints
    ckpt = config["predict"].ckpt
    if count == 0 and ckpt not in ("best", "last") and not Path(ckpt).is_file():
        raise UserError(f"predict.ckpt={ckpt!r}: no such checkpoint file; use best, last or "
                        "the path of an existing .pt")
    if count > kept:
        raise UserError(f"predict.average={count} needs the last {count} checkpoints kept; "
                        f"set trainer.keep_checkpoints={count} (now {kept})")


def train_run(task_cls: type[Task], config: Config, run_dir: Path, *, resume: bool = False,
              callbacks: list[Callback] = ()) -> dict:
    """Train, then predict the test set with the checkpoint predict.ckpt names (best unless it
    says last). Returns paths and metrics."""
    run_dir = Path(run_dir)
    if not resume and RunDir(run_dir).last.exists():
        raise UserError(f"{run_dir}: already holds a run; continue it with --resume {run_dir} "
                        "or choose another --out")
    RunDir(run_dir).check_writable()
    check_run_config(task_cls, config)
    set_cpu_threads(config["trainer"].threads)
    data_dir = data_dir_of(task_cls(config))
    task, train_data, split = prepare(task_cls, config, data_dir)
    test_data = task.load_test(data_dir)  # read before training: a bad file fails early
    datasets = task.make_datasets(train_data, *split)  # and a config that does not fit it
    with run_logging(run_dir):  # the run directory exists only once the data is valid
        say(f"run directory: {run_dir}")
        if not resume and distributed.is_main():
            save_config(config, RunDir(run_dir).config)
        trainer = fit_split(task, train_data, *split, run_dir=run_dir, resume=resume,
                            callbacks=callbacks, datasets=datasets)
        if task.num_test(test_data) == 0:
            submission = None
            say(f"{data_dir}: no test items; trained, no submission written")
        else:
            submission = predict_and_write(task, trainer, test_data, run_dir)
            log.info("submission written to %s", submission)
    return {"run_dir": run_dir, "submission": submission, "best": trainer.state.best,
            "trainer": trainer}
