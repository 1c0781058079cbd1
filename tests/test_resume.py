"""A run killed mid-epoch (no cleanup) and resumed equals an uninterrupted run, to the bit."""

import subprocess
import sys

import torch

from common.checkpoint import load_checkpoint
from tests.conftest import ROOT, run_cli

OVERRIDES = [
    "model.hidden=[32,16]", "model.dropout=0.1", "optim.name=adam", "optim.lr=3e-3",
    "sched.name=cosine", "sched.warmup_steps=5", "data.valid_ratio=0.2", "trainer.epochs=4",
    "trainer.batch_size=64", "trainer.accum_steps=2", "trainer.eval_every_steps=6",
    "trainer.ckpt_every_steps=5", "trainer.patience=100", "trainer.seed=11",
]
KILL_AT = 43  # updates; the last checkpoint is at 40, an evaluation at 42 is already logged

CHILD = """
import os, sys
sys.path.insert(0, {root!r})
from common.config import load_config
from common.pipeline import train_run
from common.trainer import Callback
from hw.hw1_covid.task import CovidTask

class Kill(Callback):
    def on_step_end(self, trainer):
        if trainer.state.step == {kill}:
            os._exit(17)  # no cleanup, no final checkpoint

config = load_config(CovidTask.schema(), {config!r}, {overrides!r})
train_run(CovidTask, config, {run!r}, callbacks=[Kill()])
"""


def test_killed_and_resumed_run_equals_straight_run(tmp_path, hw1_demo):
    config = str(ROOT / "configs" / "hw1_sample.toml")
    overrides = [*OVERRIDES, f'data.dir="{hw1_demo}"']
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    done = run_cli("hw1", "train", "--config", config, "--out", str(straight),
                   *[a for o in overrides for a in ("--set", o)])
    assert done.returncode == 0, done.stderr

    child = CHILD.format(root=str(ROOT), kill=KILL_AT, config=config, overrides=overrides,
                         run=str(killed))
    crash = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
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
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["exp_avg"], b["optimizer"]["state"][key]["exp_avg"])
    assert (straight / "metrics.csv").read_text() == (killed / "metrics.csv").read_text()
    assert (straight / "pred.csv").read_text() == (killed / "pred.csv").read_text()


def test_resume_rejects_a_missing_run_and_extra_options(tmp_path):
    missing = run_cli("hw1", "train", "--resume", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no checkpoints/last.pt" in missing.stderr
    mixed = run_cli("hw1", "train", "--resume", str(tmp_path), "--set", "optim.lr=1")
    assert mixed.returncode == 2 and "pass --resume RUN_DIR alone" in mixed.stderr
