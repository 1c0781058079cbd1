"""Using a finished run: its config and model read back, its test set predicted again, runs
and folds ensembled from their saved outputs, kept checkpoints averaged and predicted with."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from common.core.config import Config, load_config, save_config
from common.core.errors import UserError
from common.core.runtime import set_cpu_threads
from common.engine.checkpoint import average_checkpoints, load_checkpoint, prediction_weights
from common.engine.fusion import check_fusable, fuse, load_outputs
from common.engine.rundir import RunDir
from common.engine.runlog import say
from common.engine.task import Task
from common.experiments.pipeline import data_dir_of, make_trainer, predict_and_write, write_outputs


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
    owner = state.get("task_name", task_cls.name)  # checkpoints before it was kept: unknown
    if owner != task_cls.name:
        raise UserError(f"{ckpt_path}: a checkpoint of {owner}, not {task_cls.name}; pass one "
                        f"from this {task_cls.name} run's checkpoints/")
    try:
        task = task_cls.with_state(config, state.get("task", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{ckpt_path}: its fitted state does not fit {task_cls.name} "
                        f"({type(exc).__name__}: {exc}); pass a checkpoint of this run") from None
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
    data_dir = data_dir_of(task)
    test_data = task.load_test(data_dir)
    if task.num_test(test_data) == 0:
        raise UserError(f"{data_dir}: no test items; nothing to predict (pass --data with a "
                        "test set)")
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
    task = task_cls.with_state(config, first_state)
    test_data = task.load_test(data_dir_of(task))
    submission = write_outputs(task, test_data, fused, out_dir, info)
    if not RunDir(out_dir).config.exists():
        save_config(config, RunDir(out_dir).config)
    return submission


def average_run(task_cls: type[Task], run_dir: str | Path, count: int, *,
                select: str = "last", data_dir: str | None = None) -> Path:
    """Average a run's kept checkpoints (see average_checkpoints) and predict the test set with
    the result into average-<select><count>/."""
    run = RunDir(run_dir)
    if select == "last" and 0 < len(run.step_checkpoints()) < count:
        raise UserError(f"{run.checkpoints}: {len(run.step_checkpoints())} kept checkpoints, "
                        f"fewer than --last {count}; train with --set "
                        f"trainer.keep_checkpoints={count}")
    trainer_cfg = load_run_config(task_cls, run.path)["trainer"]
    name = average_checkpoints(run.path, count, select=select, monitor=trainer_cfg.monitor,
                               mode=trainer_cfg.mode)
    return predict_run(task_cls, run.path, ckpt=str(run.checkpoints / f"{name}.pt"),
                       data_dir=data_dir, out_dir=run.path / name)
