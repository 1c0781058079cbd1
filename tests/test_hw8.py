"""The homework's tests.

Made by `new --kind images`: the demo data, a short training run that learns,
the submission, and a bad file's one-line error. Keep them passing as you change the
package; add a test for every hook you change."""

import subprocess
import sys
from pathlib import Path

import pandas as pd

from common.config import load_config
from common.pipeline import fit_split
from hw.hw8_anomaly import data
from hw.hw8_anomaly.task import Hw8Task

ROOT = Path(__file__).resolve().parents[1]
NAME = "hw8"


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=600, check=False)


def test_learns_the_demo_data_beyond_chance(tmp_path):
    data.write_demo_data(tmp_path / "demo")
    recipe = ROOT / "configs" / f"{NAME}_cpu.toml"
    config = load_config(Hw8Task.schema(), recipe, ["trainer.print_every_evals=1000000"])
    task = Hw8Task(config)
    images = task.load_train(tmp_path / "demo")
    trainer = fit_split(task, images, *task.split(images))
    metrics = trainer.evaluate(task.labelled_dataset(images, task.split(images)[1]))
    assert metrics["acc"] > 0.6  # chance: 1/3


def test_train_demo_writes_a_valid_submission(tmp_path):
    result = run(NAME, "train", "--demo", "--dry-run", "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    submission = pd.read_csv(tmp_path / "run" / "submission.csv", dtype=str)
    assert list(submission.columns) == ["id", "label"] and len(submission) == 200
    assert set(submission["label"]) <= set(data.SHAPES)


def test_a_bad_file_is_one_line_and_exit_2(tmp_path):
    data.write_demo_data(tmp_path / "bad", n_train=30, n_test=5)
    broken = next((tmp_path / "bad" / data.TRAIN).rglob("*.png"))
    broken.write_bytes(b"not an image")
    result = run(NAME, "train", "--data", str(tmp_path / "bad"), "--set", "data.cache_dir=",
                 "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert broken.name in result.stderr and not (tmp_path / "r").exists()
