"""A run killed mid-epoch (no cleanup) and resumed equals an uninterrupted run, to the bit;
so does a k-fold run killed in its second fold, whose finished first fold is not retrained."""

import contextlib
import importlib
import io
import subprocess
import sys

import torch

from common.engine.checkpoint import load_checkpoint
from tests.helpers import ROOT, run_cli

OVERRIDES = [
    "model.hidden=[32,16]", "model.dropout=0.1", "optim.name=adam", "optim.lr=3e-3",
    "sched.name=cosine", "sched.warmup_steps=5", "data.valid_ratio=0.2", "trainer.epochs=4",
    "trainer.batch_size=64", "trainer.accum_steps=2", "trainer.eval_every_steps=6",
    "trainer.ckpt_every_steps=5", "trainer.patience=100", "trainer.seed=11",
    # EMA and mixup state must survive the kill too (mixup draws from the checkpointed RNG)
    "trainer.ema=true", "trainer.ema_decay=0.9", "mix.mixup_alpha=0.2",
]
KILL_AT = 43  # updates; the last checkpoint is at 40, an evaluation at 42 is already logged

CHILD = """
import os, sys
sys.path.insert(0, {root!r})
from common.core.config import load_config
from common.experiments.kfold import kfold_run
from common.experiments.pipeline import train_run
from common.engine.trainer import Callback
from {module} import {task} as TaskClass

class Kill(Callback):
    def on_step_end(self, trainer):
        if trainer.state.step == {kill} and trainer.run_dir.name in ("killed", "fold-2"):
            os._exit(17)  # no cleanup, no final checkpoint

config = load_config(TaskClass.schema(), {config!r}, {overrides!r})
{runner}(TaskClass, config, {run!r}, callbacks=[Kill()], resume={resume})
"""


def run_and_kill(task: str, config: str | None, overrides: list[str], run, kill: int, *,
                 runner: str = "train_run", resume: bool = False
                 ) -> subprocess.CompletedProcess:
    """Run in a child process that dies without cleanup after update `kill` (in the run
    directory named 'killed', or a k-fold run's fold-2); kill=-1: never. With resume, the
    child continues `run` from its last.pt under its saved config."""
    module, cls = task.split(":")
    if resume:
        config, overrides = str(run / "config.toml"), []
    child = CHILD.format(module=module, task=cls, root=str(ROOT), kill=kill, config=config,
                         overrides=overrides, run=str(run), runner=runner, resume=resume)
    return subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)


def run_here(task: str, config: str | None, overrides: list[str], run, *,
             resume: bool = False) -> str:
    """What run_and_kill's child does, without the kill, in this process; returns what the
    run wrote to stderr."""
    from common.core.config import load_config
    from common.experiments.pipeline import train_run

    module, cls = task.split(":")
    task_cls = getattr(importlib.import_module(module), cls)
    if resume:
        config, overrides = str(run / "config.toml"), []
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        train_run(task_cls, load_config(task_cls.schema(), config, overrides), run,
                  resume=resume)
    return err.getvalue()


def kill_and_resume(task: str, config: str | None, overrides: list[str], tmp_path, kill: int,
                    resumed_from: int) -> tuple[dict, dict]:
    """A straight run in tmp_path/straight and one killed after update `kill` in
    tmp_path/killed, resumed from its last.pt (written at update `resumed_from`); returns
    both final last.pt checkpoints."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_here(task, config, overrides, straight)
    crash = run_and_kill(task, config, overrides, killed, kill)   # only the kill needs a child
    assert crash.returncode == 17, crash.stderr[-3000:]
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["trainer"]["step"] == resumed_from
    assert f"resumed from update {resumed_from}" in run_here(task, None, [], killed, resume=True)
    return (load_checkpoint(straight / "checkpoints" / "last.pt"),
            load_checkpoint(killed / "checkpoints" / "last.pt"))


def test_killed_and_resumed_run_equals_straight_run(tmp_path, hw1_demo):
    config = str(ROOT / "configs" / "hw1_sample.toml")
    overrides = [*OVERRIDES, f'data.dir="{hw1_demo}"']
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    done = run_cli("hw1", "train", "--config", config, "--out", str(straight),
                   *[a for o in overrides for a in ("--set", o)])
    assert done.returncode == 0, done.stderr

    crash = run_and_kill("hw.hw1_covid.task:CovidTask", config, overrides, killed, KILL_AT)
    assert crash.returncode == 17, crash.stderr
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["trainer"]["step"] == 40
    assert "42," in (killed / "metrics.csv").read_text()  # logged after the checkpoint
    assert not (killed / "pred.csv").exists()

    resumed = run_cli("hw1", "train", "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr

    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert a["trainer"]["step"] == b["trainer"]["step"] == 68
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["optimizers"]["main"]["state"].items():
        assert torch.equal(value["exp_avg"], b["optimizers"]["main"]["state"][key]["exp_avg"])
    for key, value in a["ema"].items():
        assert torch.equal(value, b["ema"][key]), key
    for name in ("metrics.csv", "steps.csv"):
        assert (straight / name).read_text() == (killed / name).read_text(), name
    assert "resumed from update 40, epoch 2" in resumed.stderr
    assert (straight / "pred.csv").read_text() == (killed / "pred.csv").read_text()


def test_resume_rejects_a_missing_run_and_extra_options(tmp_path):
    missing = run_cli("hw1", "train", "--resume", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no checkpoints/last.pt" in missing.stderr
    mixed = run_cli("hw1", "train", "--resume", str(tmp_path), "--set", "optim.lr=1")
    assert mixed.returncode == 2 and "pass --resume RUN_DIR alone" in mixed.stderr


def test_killed_kfold_resumes_the_unfinished_fold_and_keeps_the_finished_one(tmp_path, hw1_demo):
    config = str(ROOT / "configs" / "hw1_sample.toml")
    overrides = ["model.hidden=[16]", "trainer.epochs=3", "trainer.batch_size=128",
                 "trainer.ckpt_every_steps=7", "trainer.patience=0", "kfold.folds=3",
                 f'data.dir="{hw1_demo}"']
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = run_cli("hw1", "kfold", "--config", config, "--out", str(straight),
                   *[a for o in overrides for a in ("--set", o)])
    assert done.returncode == 0, done.stderr
    assert "out-of-fold mse" in done.stdout

    crash = run_and_kill("hw.hw1_covid.task:CovidTask", config, overrides, killed, 30,
                         runner="kfold_run")
    assert crash.returncode == 17, crash.stderr
    assert (killed / "fold-1" / "oof.pt").is_file() and not (killed / "fold-2" / "oof.pt").exists()
    assert load_checkpoint(killed / "fold-2" / "checkpoints" / "last.pt")["trainer"]["step"] == 28
    fold1 = {p: p.stat().st_mtime_ns for p in (killed / "fold-1").rglob("*") if p.is_file()}

    resumed = run_cli("hw1", "kfold", "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    assert "fold 1/3: finished earlier, kept" in resumed.stderr
    assert {p: p.stat().st_mtime_ns for p in fold1} == fold1      # fold 1 was not touched
    for name in ("kfold.csv", "pred.csv", "folds.csv", "fold-2/metrics.csv", "fold-3/pred.csv"):
        assert (straight / name).read_text() == (killed / name).read_text(), name
    a = torch.load(straight / "test_outputs.pt", weights_only=True)["outputs"]
    b = torch.load(killed / "test_outputs.pt", weights_only=True)["outputs"]
    assert torch.equal(a, b)
