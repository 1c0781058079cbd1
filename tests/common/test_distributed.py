"""torchrun with 2 CPU processes (gloo) on the HW1 demo: ranks stay identical, evaluation is
exact, rank 0 alone writes, a failed rank ends the run, and a killed run resumes exactly."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from common.core.config import load_config
from common.engine.checkpoint import load_checkpoint
from common.experiments.pipeline import fit_split, prepare
from hw.hw1_covid.task import CovidTask
from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # torchrun launches: tens of seconds each
CONFIG = str(ROOT / "configs" / "hw1_sample.toml")
OVERRIDES = ["model.hidden=[32,16]", "model.dropout=0.1", "model.batchnorm=true",
             "optim.name=adam", "optim.lr=3e-3", "trainer.epochs=3", "trainer.batch_size=32",
             "trainer.accum_steps=2", "trainer.ckpt_every_steps=4", "trainer.seed=3",
             "trainer.threads=1", "mix.mixup_alpha=0.2", "trainer.ema=true",
             "trainer.ema_decay=0.9", "trainer.monitor=valid_loss", "trainer.mode=min"]

CHILD = """
import hashlib, os, sys
sys.path.insert(0, {root!r})
import torch
from common.core import distributed
from common.core.config import load_config
from common.experiments.pipeline import train_run
from common.engine.trainer import Callback
from {module} import {task} as TaskClass

distributed.init_from_env()
rank = distributed.rank()

class Record(Callback):
    def on_step_end(self, trainer):
        line = [str(trainer.state.step)]
        for part in {parts!r}:
            module = trainer.model[part] if part else trainer.model
            flat = torch.cat([p.detach().flatten() for p in module.parameters()])
            line.append(hashlib.sha1(flat.numpy().tobytes()).hexdigest())
        with open(os.path.join({log!r}, f"rank{{rank}}.txt"), "a") as fh:
            fh.write(" ".join(line) + "\\n")
        if trainer.state.step == {kill} and rank == 1:
            os._exit(17)  # one rank dies without cleanup

config = load_config(TaskClass.schema(), {config!r}, {overrides!r})
train_run(TaskClass, config, {run!r}, callbacks=[Record()])
distributed.shutdown()
"""


def run_child(script: Path, *, task: str, run: Path, log: Path, overrides: list[str],
              config: str | None = None, kill: int = -1, parts=("",)):
    """Train `task` ("module:Class") under torchrun with 2 processes; each rank writes
    "step hash(part)..." after every update to log/rank<r>.txt (part "": the whole model)."""
    module, cls = task.split(":")
    log.mkdir(exist_ok=True)
    script.write_text(CHILD.format(root=str(ROOT), module=module, task=cls, log=str(log),
                                   kill=kill, config=config, overrides=overrides, run=str(run),
                                   parts=tuple(parts)))
    return torchrun(str(script))


def torchrun(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    """Two CPU processes on this machine, as a user launches them."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def child(tmp_path, run, log, kill=-1) -> subprocess.CompletedProcess:
    return run_child(tmp_path / f"child-{run.name}.py", task="hw.hw1_covid.task:CovidTask",
                     run=run, log=log, overrides=OVERRIDES_DEMO, config=CONFIG, kill=kill)


OVERRIDES_DEMO: list[str] = []


@pytest.fixture(scope="module")
def straight(hw1_demo, tmp_path_factory):
    """One uninterrupted 2-process run, recording every rank's weights after every update."""
    OVERRIDES_DEMO[:] = [*OVERRIDES, f'data.dir="{hw1_demo}"']
    tmp = tmp_path_factory.mktemp("ddp")
    res = child(tmp, tmp / "straight", tmp / "log")
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp


def test_ranks_hold_identical_weights_and_rank_0_alone_writes(straight):
    ranks = [(straight / "log" / f"rank{r}.txt").read_text().splitlines() for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) > 10
    assert ranks[0] == ranks[1]  # same weights after every update
    run = straight / "straight"
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    assert files == ["checkpoints", "checkpoints/best.pt", "checkpoints/last.pt", "config.toml",
                     "curves.png", "log.txt", "metrics.csv", "pred.csv", "status.json",
                     "steps.csv", "test_outputs.pt"]
    assert not list(run.rglob("*.tmp*"))
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3]  # one row per evaluation, written once
    # each rank trained on half the rows: updates per epoch = ceil(ceil(ceil(n / 2) / 32) / 2)
    config = load_config(CovidTask.schema(), run / "config.toml")
    task = CovidTask(config)
    n_train = len(task.split(task.load_train(Path(config["data"].dir)))[0])
    per_epoch = math.ceil(math.ceil(math.ceil(n_train / 2) / 32) / 2)
    assert list(metrics["step"]) == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    steps = pd.read_csv(run / "steps.csv")  # one row per update, written by rank 0 alone
    assert list(steps["step"]) == list(range(1, 3 * per_epoch + 1))


def test_validation_metric_and_predictions_equal_a_single_process(straight):
    """Evaluate the saved best weights in this one process: the same loss the 2 ranks logged
    (every validation row counted once) and the same test predictions."""
    run = straight / "straight"
    config = load_config(CovidTask.schema(), run / "config.toml")
    task, data, (train_idx, valid_idx) = prepare(CovidTask, config, config["data"].dir)
    config["trainer"].epochs = 0
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    trainer = fit_split(task, data, train_idx, valid_idx)
    trainer.eval_model.load_state_dict(best["model"])
    _, valid = task.make_datasets(data, train_idx, valid_idx)
    single = trainer.evaluate(valid)
    assert single["loss"] == pytest.approx(best["metrics"]["valid_loss"], rel=1e-6)
    test = task.make_test_dataset(task.load_test(Path(config["data"].dir)))
    preds = pd.read_csv(run / "pred.csv")
    assert len(preds) == len(test)
    assert torch.allclose(trainer.predict(test).flatten(),
                          torch.tensor(preds["tested_positive"].values, dtype=torch.float32),
                          rtol=1e-5, atol=1e-5)


def test_a_failed_rank_ends_the_run_and_resume_under_torchrun_is_exact(straight, tmp_path):
    killed = tmp_path / "killed"
    res = child(tmp_path, killed, tmp_path / "log", kill=10)  # rank 1 dies after update 10
    assert res.returncode != 0  # torchrun ended rank 0 too (the test's timeout guards a hang)
    assert "exitcode" in res.stderr and "17" in res.stderr
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["trainer"]["step"] == 8
    assert not (killed / "pred.csv").exists()
    resumed = torchrun("scripts/run.py", "hw1", "train", "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("submission:") == 1  # printed by rank 0 alone
    a = load_checkpoint(straight / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert a["trainer"]["step"] == b["trainer"]["step"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert (straight / "straight" / "pred.csv").read_text() == (killed / "pred.csv").read_text()


def test_cli_kfold_under_torchrun_makes_one_run_directory(tmp_path):
    res = torchrun(str(ROOT / "scripts" / "run.py"), "hw1", "kfold", "--demo", "--folds", "2",
                   "--dry-run", "--set", "trainer.threads=1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = list((tmp_path / "runs" / "hw1").iterdir())  # one name, chosen by rank 0
    assert len(runs) == 1 and res.stdout.count("run directory:") == 1
    assert sorted(p.name for p in runs[0].iterdir()) == [
        ".owner", "config.toml", "fold-1", "fold-2", "folds.csv", "kfold.csv", "log.txt", "oof.pt",
        "pred.csv", "status.json", "test_outputs.pt"]
    assert res.stdout.count("out-of-fold") == 1
    held_out = pd.read_csv(runs[0] / "kfold.csv")["held_out"].astype(int)
    assert held_out[0] + held_out[1] == held_out[2]  # the two folds cover every row once
