"""One run end to end: config -> data -> Trainer.fit -> best checkpoint -> submission."""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from common import distributed
from common.checkpoint import load_checkpoint, prediction_weights, save_checkpoint
from common.config import Config, config_to_dict, load_config, save_config
from common.errors import UserError
from common.fusion import average_state_dicts, check_fusable, fuse, load_outputs, save_outputs
from common.mix import MixBatch
from common.rundir import RunDir
from common.runlog import say
from common.runtime import Salt, derive_seed, seed_everything, set_cpu_threads
from common.task import Task
from common.trainer import Callback, Trainer

log = logging.getLogger("mlhw")


@contextlib.contextmanager
def run_logging(run_dir: Path):
    """Send the 'mlhw' log to run_dir/log.txt for the duration of a run, and keep
    run_dir/status.json saying how the run stands (rank 0 only): running (with the process id),
    then finished, interrupted (Ctrl-C), pruned (by a tuner) or failed (with the error)."""
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
        yield
    except KeyboardInterrupt:
        status("interrupted")
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


def data_dir_of(task: Task) -> Path:
    data_dir = Path(task.config["data"].dir or f"data/{task.name}")
    if not data_dir.is_dir():
        hint = f"download it ({task.download_hint}) and pass --data" if task.download_hint \
            else "pass --data"
        raise UserError(f"{data_dir}: data directory not found; {hint}, or use --demo")
    return data_dir


def make_trainer(task: Task, model, run_dir: Path | None, callbacks=()) -> Trainer:
    cfg = task.config
    mix = MixBatch(cfg["mix"], task.num_classes)
    return Trainer(model, task, cfg["trainer"], optim=cfg["optim"], sched=cfg["sched"],
                   run_dir=run_dir, callbacks=list(callbacks),
                   extra_state={"config": config_to_dict(cfg), "task": task.state_dict()},
                   batch_transform=mix if mix.enabled else None)


def predict_outputs(task: Task, trainer: Trainer, dataset, *, with_targets: bool = False):
    """The model's outputs for a dataset, fused over test-time augmented views when
    predict.tta > 0 (plain view weighted by predict.tta_plain_weight). With with_targets,
    returns (outputs, targets) for a labelled dataset."""
    cfg = task.config["predict"]
    if cfg.tta > 0:
        check_fusable(task.output_kind, f"{task.name} models")
    outputs, targets, _ = trainer.collect(dataset, with_targets)
    if cfg.tta > 0:
        if not 0.0 <= cfg.tta_plain_weight <= 1.0:
            raise UserError(f"predict.tta_plain_weight={cfg.tta_plain_weight} must lie in [0, 1]")
        views = [outputs]
        for view in range(cfg.tta):
            with torch.random.fork_rng(devices=[]):  # leave the training RNG streams alone
                torch.manual_seed(derive_seed(task.config["trainer"].seed, Salt.TTA, view))
                views.append(trainer.predict(task.tta_view(dataset, view)))
        share = (1.0 - cfg.tta_plain_weight) / cfg.tta
        outputs = fuse(views, kind=task.output_kind,
                       weights=[cfg.tta_plain_weight] + [share] * cfg.tta)
    return (outputs, targets) if with_targets else outputs


def write_outputs(task: Task, test_data, outputs, out_dir: Path,
                  info: dict | None = None) -> Path:
    """Keep raw test outputs (for ensembling) and write the submission next to them (rank 0
    only under torchrun; every rank returns the submission's path)."""
    if not distributed.is_main():
        return out_dir / task.submission_name
    out_dir.mkdir(parents=True, exist_ok=True)
    # the submission first: an invalid one (NaN, wrong rows) leaves no outputs behind either
    submission = task.write_submission(test_data, outputs, out_dir / task.submission_name)
    save_outputs(RunDir(out_dir).outputs, outputs, task=task.name, kind=task.output_kind,
                 info={"task_state": task.state_dict(), **(info or {})})
    return submission


def predict_and_write(task: Task, trainer: Trainer, test_data, run_dir: Path) -> Path:
    """Predict the test set (with TTA if configured) and write outputs and submission."""
    outputs = predict_outputs(task, trainer, task.make_test_dataset(test_data))
    return write_outputs(task, test_data, outputs, run_dir)


def fit_split(task: Task, train_data, train_idx, valid_idx, *, run_dir: Path | None = None,
              resume: bool = False, callbacks: list[Callback] = (), datasets=None) -> Trainer:
    """Fit preprocessing and a fresh model on train_idx, validate on valid_idx, and leave the
    weights chosen by predict.ckpt (best, or last: the final ones) in the returned trainer.
    Without run_dir nothing is written. `datasets`: (train, valid) made already."""
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
        path = RunDir(run_dir).checkpoint(average_checkpoints(task, run_dir, count)) \
            if distributed.is_main() else None
        state = distributed.broadcast_object(load_checkpoint(path) if path else None)
        trainer.eval_model.load_state_dict(state["model"])
        say(f"predicting with the mean of {', '.join(state['averaged'])} "
            f"(predict.average = {count})")
        return trainer
    if which != "last":
        trainer.load_best()
    if run_dir is not None:
        weights = "the final weights" if which == "last" else f"{RunDir(run_dir).best}"
        say(f"predicting with {weights} (predict.ckpt = {which!r})")
    return trainer


def check_average(config: Config) -> None:
    count, kept = config["predict"].average, config["trainer"].keep_checkpoints
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
    check_average(config)
    task = task_cls(config)
    set_cpu_threads(config["trainer"].threads)
    data_dir = data_dir_of(task)
    train_data = task.load_train(data_dir)
    test_data = task.load_test(data_dir)  # read before training: a bad file fails early
    split = task.split(train_data)
    datasets = task.make_datasets(train_data, *split)  # and a config that does not fit it
    with run_logging(run_dir):  # the run directory exists only once the data is valid
        say(f"run directory: {run_dir}")
        if not resume and distributed.is_main():
            save_config(config, RunDir(run_dir).config)
        trainer = fit_split(task, train_data, *split, run_dir=run_dir, resume=resume,
                            callbacks=callbacks, datasets=datasets)
        submission = predict_and_write(task, trainer, test_data, run_dir)
        log.info("submission written to %s", submission)
    return {"run_dir": run_dir, "submission": submission, "best": trainer.state.best,
            "trainer": trainer}


def load_run_config(task_cls: type[Task], run_dir: Path) -> Config:
    """The resolved config a run saved in its directory."""
    config_path = RunDir(run_dir).config
    if not config_path.is_file():
        raise UserError(f"{config_path}: not found; pass a run directory")
    return load_config(task_cls.schema(), config_path)


def default_checkpoint(config: Config) -> str:
    """What train predicted with: average-last<N> under predict.average, else predict.ckpt."""
    count = config["predict"].average
    return f"average-last{count}" if count > 0 else config["predict"].ckpt


def load_run_model(task_cls: type[Task], run_dir: str | Path, *, ckpt: str | None = None,
                   data_dir: str | None = None, tta: int | None = None):
    """A finished run's task (its config, with data_dir / tta if given, and the state fitted on
    the data) and model with the weights of `ckpt` (default: what train predicted with), and
    that checkpoint's path."""
    run_dir = Path(run_dir)
    config = load_run_config(task_cls, run_dir)
    if data_dir:
        config["data"] = replace(config["data"], dir=str(Path(data_dir).resolve()))
    if tta is not None:
        config["predict"] = replace(config["predict"], tta=tta)
    ckpt_path = RunDir(run_dir).checkpoint(ckpt or default_checkpoint(config))
    state = load_checkpoint(ckpt_path)
    task = task_cls(config)
    task.load_state_dict(state.get("task", {}))
    set_cpu_threads(config["trainer"].threads)
    model = task.build_model()
    try:
        model.load_state_dict(prediction_weights(state))
    except RuntimeError as exc:
        raise UserError(f"checkpoint does not fit the model of {RunDir(run_dir).config}: "
                        f"{str(exc).splitlines()[0]}") from None
    return task, model, ckpt_path


def predict_run(task_cls: type[Task], run_dir: str | Path, *, ckpt: str | None = None,
                data_dir: str | None = None, out_dir: Path | None = None,
                tta: int | None = None) -> Path:
    """Rebuild a finished run's model from its checkpoint and write its submission again
    (into out_dir, default the run directory)."""
    task, model, ckpt_path = load_run_model(task_cls, run_dir, ckpt=ckpt, data_dir=data_dir,
                                            tta=tta)
    test_data = task.load_test(data_dir_of(task))
    trainer = make_trainer(task, model, None)
    say(f"predicting with {ckpt_path}")
    return predict_and_write(task, trainer, test_data, out_dir or Path(run_dir))


def _member_config(task_cls: type[Task], member: Path) -> Config:
    """The config of the run a member (run, fold or k-fold directory, or outputs file)
    belongs to: the nearest config.toml at or above it."""
    start = member if member.is_dir() else member.parent
    for folder in (start, *start.parents[:2]):
        if RunDir(folder).config.is_file():
            return load_run_config(task_cls, folder)
    raise UserError(f"{member}: no config.toml in it or above it; pass a run directory")


def fuse_members(task_cls: type[Task], members: list[Path], *, method: str | None = None,
                 weights: list[float] | None = None) -> tuple[Any, dict, dict]:
    """The fused saved test outputs of members, what was fused how, and the first member's
    task state; writes nothing."""
    saved = [load_outputs(m, task_cls.name) for m in members]
    for member, out in zip(members, saved, strict=True):
        check_fusable(out.get("kind", task_cls.output_kind),
                      f"{member}: runs of {task_cls.name}")
    fused = fuse([out["outputs"] for out in saved], kind=task_cls.output_kind,
                 method=method or None, weights=weights)
    info = {"members": [str(m) for m in members], "method": method or "",
            "weights": [float(w) for w in weights or []]}
    return fused, info, saved[0].get("task_state", {})


def fuse_and_write(task: Task, test_data, members: list[Path], out_dir: Path, *,
                   method: str | None = None, weights: list[float] | None = None) -> Path:
    """Fuse the saved test outputs of members into out_dir's outputs and submission."""
    fused, info, _ = fuse_members(type(task), members, method=method, weights=weights)
    return write_outputs(task, test_data, fused, out_dir, info)


def ensemble_run(task_cls: type[Task], members: list[str | Path], out_dir: Path, *,
                 method: str | None = None, weights: list[float] | None = None,
                 data_dir: str | None = None) -> Path:
    """Fuse the saved test outputs of finished runs (or folds) into one submission."""
    members = [Path(m) for m in members]
    if len(members) < 2:
        raise UserError("ensemble needs at least two members (runs, folds or k-fold runs)")
    # everything is read and checked before anything is written
    fused, info, first_state = fuse_members(task_cls, members, method=method, weights=weights)
    RunDir(out_dir).check_writable()
    config = _member_config(task_cls, members[0])
    if data_dir:
        config["data"] = replace(config["data"], dir=str(Path(data_dir).resolve()))
    task = task_cls(config)
    task.load_state_dict(first_state)
    test_data = task.load_test(data_dir_of(task))
    submission = write_outputs(task, test_data, fused, out_dir, info)
    if not RunDir(out_dir).config.exists():
        save_config(config, RunDir(out_dir).config)
    return submission


def average_checkpoints(task: Task, run_dir: str | Path, count: int, *,
                        select: str = "last") -> str:
    """Average the weights of a run's kept checkpoints, the newest `count` (select "last"; all
    there are when fewer, as after early stopping) or the `count` best by the run's monitored
    metric ("best"), into checkpoints/average-<select><count>.pt; returns that name."""
    run = RunDir(run_dir)
    kept = run.step_checkpoints()
    flag = f"--{select}"
    if count < 1:
        raise UserError(f"{flag} must be at least 1")
    if not kept or (select == "best" and len(kept) < count):
        key = "keep_checkpoints" if select == "last" else "keep_best_checkpoints"
        raise UserError(f"{run.checkpoints}: {len(kept)} kept checkpoints, fewer than "
                        f"{flag} {count}; train with --set trainer.{key}={count}")
    states = [load_checkpoint(p) for p in kept]
    chosen = list(range(len(kept)))[-count:]
    if select == "best":
        trainer_cfg = task.config["trainer"]
        values = [s.get("metrics", {}).get(trainer_cfg.monitor, math.nan) for s in states]
        if any(math.isnan(v) for v in values):
            raise UserError(f"{run.checkpoints}: kept checkpoints without a "
                            f"{trainer_cfg.monitor}; use --last")
        ranked = sorted(range(len(kept)), key=lambda i: values[i],
                        reverse=trainer_cfg.mode == "max")
        chosen = sorted(ranked[:count])
    states = [states[i] for i in chosen]
    averaged = {**states[-1], "model": average_state_dicts([s["model"] for s in states]),
                "averaged": [kept[i].name for i in chosen]}
    averaged.pop("format", None)
    averaged.pop("version", None)
    name = f"average-{select}{count}"
    save_checkpoint(run.checkpoints / f"{name}.pt", averaged)
    log.info("averaged %s into %s", ", ".join(averaged["averaged"]), name)
    return name


def average_run(task_cls: type[Task], run_dir: str | Path, count: int, *,
                select: str = "last", data_dir: str | None = None) -> Path:
    """Average a run's kept checkpoints (see average_checkpoints) and predict the test set with
    the result into average-<select><count>/."""
    run = RunDir(run_dir)
    if select == "last" and 0 < len(run.step_checkpoints()) < count:
        raise UserError(f"{run.checkpoints}: {len(run.step_checkpoints())} kept checkpoints, "
                        f"fewer than --last {count}; train with --set "
                        f"trainer.keep_checkpoints={count}")
    task = task_cls(load_run_config(task_cls, run.path))
    name = average_checkpoints(task, run.path, count, select=select)
    return predict_run(task_cls, run.path, ckpt=str(run.checkpoints / f"{name}.pt"),
                       data_dir=data_dir, out_dir=run.path / name)
