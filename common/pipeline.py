"""One run end to end: config -> data -> Trainer.fit -> best checkpoint -> submission."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from common.checkpoint import load_checkpoint
from common.config import Config, config_to_dict, load_config, save_config
from common.errors import UserError
from common.io import atomic_write
from common.runtime import seed_everything, set_cpu_threads
from common.task import Task
from common.trainer import Callback, Trainer

log = logging.getLogger("mlhw")


def new_run_dir(root: str | Path, task_name: str, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / task_name / f"{stamp}-{name}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


@contextlib.contextmanager
def run_logging(run_dir: Path):
    """Send the 'mlhw' log to run_dir/log.txt for the duration of a run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "log.txt", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
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


def _make_trainer(task: Task, model, run_dir: Path | None, callbacks=()) -> Trainer:
    cfg = task.config
    return Trainer(model, task, cfg["trainer"], optim=cfg["optim"], sched=cfg["sched"],
                   run_dir=run_dir, callbacks=list(callbacks),
                   extra_state={"config": config_to_dict(cfg), "task": task.state_dict()})


def predict_and_write(task: Task, trainer: Trainer, test_data, run_dir: Path) -> Path:
    """Predict the test set, keep the raw outputs (for ensembling) and write the submission."""
    outputs = trainer.predict(task.make_test_dataset(test_data))
    with atomic_write(run_dir / "test_outputs.pt", "wb") as fh:
        torch.save(outputs, fh)
    return task.write_submission(test_data, outputs, run_dir / task.submission_name)


def fit_split(task: Task, train_data, train_idx, valid_idx, *, run_dir: Path | None = None,
              resume: bool = False, callbacks: list[Callback] = ()) -> Trainer:
    """Fit preprocessing and a fresh model on train_idx, validate on valid_idx, and leave the
    best weights in the returned trainer's model. Without run_dir nothing is written."""
    train_ds, valid_ds = task.make_datasets(train_data, train_idx, valid_idx)
    seed_everything(task.config["trainer"].seed)
    trainer = _make_trainer(task, task.build_model(), run_dir, callbacks)
    log.info("%d train / %d valid items, device %s", len(train_ds),
             len(valid_ds) if valid_ds is not None else 0, trainer.device)
    if resume:
        trainer.restore(run_dir / "checkpoints" / "last.pt")
    trainer.fit(train_ds, valid_ds)
    trainer.load_best()
    return trainer


def train_run(task_cls: type[Task], config: Config, run_dir: Path, *, resume: bool = False,
              callbacks: list[Callback] = ()) -> dict:
    """Train, then predict the test set with the best checkpoint. Returns paths and metrics."""
    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    if not resume and last.exists():
        raise UserError(f"{run_dir}: already holds a run; continue it with --resume {run_dir} "
                        "or choose another --out")
    task = task_cls(config)
    set_cpu_threads(config["trainer"].threads)
    data_dir = data_dir_of(task)
    train_data = task.load_train(data_dir)
    test_data = task.load_test(data_dir)  # read before training: a bad file fails early
    with run_logging(run_dir):  # the run directory exists only once the data is valid
        if not resume:
            save_config(config, run_dir / "config.toml")
        trainer = fit_split(task, train_data, *task.split(train_data), run_dir=run_dir,
                            resume=resume, callbacks=callbacks)
        submission = predict_and_write(task, trainer, test_data, run_dir)
        log.info("submission written to %s", submission)
    return {"run_dir": run_dir, "submission": submission, "best": trainer.state.best,
            "trainer": trainer}


def load_run_config(task_cls: type[Task], run_dir: Path) -> Config:
    """The resolved config a run saved in its directory."""
    config_path = Path(run_dir) / "config.toml"
    if not config_path.is_file():
        raise UserError(f"{config_path}: not found; pass a run directory")
    return load_config(task_cls.schema(), config_path)


def resolve_checkpoint(run_dir: Path, which: str) -> Path:
    if which in ("best", "last"):
        return run_dir / "checkpoints" / f"{which}.pt"
    return Path(which)


def predict_run(task_cls: type[Task], run_dir: str | Path, *, ckpt: str | None = None,
                data_dir: str | None = None) -> Path:
    """Rebuild a finished run's model from its checkpoint and write its submission again."""
    run_dir = Path(run_dir)
    config = load_run_config(task_cls, run_dir)
    if data_dir:
        config["data"] = replace(config["data"], dir=str(data_dir))
    state = load_checkpoint(resolve_checkpoint(run_dir, ckpt or config["predict"].ckpt))
    task = task_cls(config)
    task.load_state_dict(state.get("task", {}))
    set_cpu_threads(config["trainer"].threads)
    test_data = task.load_test(data_dir_of(task))
    model = task.build_model()
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise UserError(f"checkpoint does not fit the model of {run_dir / 'config.toml'}: "
                        f"{str(exc).splitlines()[0]}") from None
    trainer = _make_trainer(task, model, None)
    return predict_and_write(task, trainer, test_data, run_dir)
