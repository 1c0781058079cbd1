"""The catalogue of failures a user can cause, through the command line as a user runs it: each
case is one `error:` line naming the file or key and the fix, exit status 2, no traceback, and
exactly the files it may leave (none, unless training had started). Runs in-process (the same
`main` as scripts/run.py) to stay fast; tests/test_hw*.py cover the same CLI in subprocesses."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
import torch

from common import io as common_io
from common.checkpoint import load_checkpoint
from hw.cli import main


@pytest.fixture()
def ws(hw1_demo, tmp_path, monkeypatch):
    """A working folder holding the HW1 demo as data/ and a finished dry run as run/."""
    shutil.copytree(hw1_demo, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["hw1", "train", "--data", "data", "--out", "run", "--dry-run"]) == 0
    return tmp_path


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def edit(path: Path, transform):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(transform(lines)) + "\n")


def set_cell(row, col, value):
    def transform(lines):
        cells = lines[row].split(",")
        cells[col] = value
        return lines[:row] + [",".join(cells)] + lines[row + 1:]
    return transform


TRAIN = ["hw1", "train", "--data", "data", "--out", "new", "--dry-run"]


def no_setup(ws):
    pass


# (name, setup(ws), arguments, words the one error line holds)
CASES = [
    # --- data
    ("missing data folder", no_setup, ["hw1", "train", "--data", "nowhere", "--dry-run"],
     ["nowhere: data directory not found; download it (kaggle competitions download"]),
    ("missing test file", lambda ws: (ws / "data" / "covid.test.csv").unlink(), TRAIN,
     ["no test file (covid.test.csv or"]),
    ("zip not unpacked", lambda ws: ((ws / "z").mkdir(), (ws / "z" / "hw1.zip").write_bytes(b"PK")),
     ["hw1", "train", "--data", "z", "--dry-run"], ["unzip", "hw1.zip"]),
    ("test file missing a column", lambda ws: edit(
        ws / "data" / "covid.test.csv", lambda ls: [",".join(x.split(",")[:-1]) for x in ls]),
     TRAIN, ["covid.test.csv: missing column(s) d5.worried_finances"]),
    ("test file with an extra column", lambda ws: edit(
        ws / "data" / "covid.test.csv", lambda ls: [ls[0] + ",extra"] + [x + ",1" for x in ls[1:]]),
     TRAIN, ["unexpected column(s) extra"]),
    ("training file without target", lambda ws: shutil.copy(
        ws / "data" / "covid.test.csv", ws / "data" / "covid.train.csv"), TRAIN,
     ["covid.train.csv: the last column must be"]),
    ("non-numeric cell", lambda ws: edit(ws / "data" / "covid.train.csv", set_cell(5, 39, "abc")),
     TRAIN, ["covid.train.csv: line 6, column 'ili' is not a number ('abc'); fix"]),
    ("empty cell", lambda ws: edit(ws / "data" / "covid.test.csv", set_cell(3, 50, "")), TRAIN,
     ["covid.test.csv: line 4, column 'anxious' is empty; fix"]),
    ("NaN cell", lambda ws: edit(ws / "data" / "covid.test.csv", set_cell(3, 50, "NaN")), TRAIN,
     ["line 4, column 'anxious' is NaN; fix"]),
    ("infinite cell", lambda ws: edit(ws / "data" / "covid.test.csv", set_cell(3, 50, "inf")),
     TRAIN, ["line 4, column 'anxious' is infinite; fix or re-download"]),
    ("ragged row", lambda ws: edit(ws / "data" / "covid.train.csv",
                                   lambda ls: ls[:9] + [ls[9] + ",1,2"] + ls[10:]),
     TRAIN, ["covid.train.csv: malformed CSV"]),
    ("header-only test file", lambda ws: edit(ws / "data" / "covid.test.csv", lambda ls: ls[:1]),
     TRAIN, ["covid.test.csv: the file has a header but no rows"]),
    ("empty test file", lambda ws: (ws / "data" / "covid.test.csv").write_text(""), TRAIN,
     ["covid.test.csv: the file is empty"]),
    ("feature pattern matching nothing", no_setup,
     [*TRAIN, "--set", "data.features=list", "--set", 'data.feature_list=["d9.*"]'],
     ["'d9.*' matches no column"]),
    # --- config files and values
    ("unknown key from --set", no_setup, [*TRAIN, "--set", "optim.learnig_rate=1"],
     ["--set optim.learnig_rate=1: unknown key(s) optim.learnig_rate; valid keys in [optim]"]),
    ("wrong type in a config file", lambda ws: (ws / "c.toml").write_text(
        "[model]\nhidden = 'wide'\n"), [*TRAIN, "--config", "c.toml"],
     ["c.toml: model.hidden: expected a list"]),
    ("non-number from --set", no_setup, [*TRAIN, "--set", "optim.lr=abc"],
     ["--set optim.lr=abc: expected a number, got 'abc'"]),
    ("negative epochs", no_setup, [*TRAIN, "--set", "trainer.epochs=-1"],
     ["--set trainer.epochs=-1: -1 must be at least 1"]),
    ("zero epochs", no_setup, [*TRAIN, "--set", "trainer.epochs=0"],
     ["trainer.epochs=0: 0 must be at least 1"]),
    ("zero batch size", no_setup, [*TRAIN, "--set", "trainer.batch_size=0"],
     ["--set trainer.batch_size=0: 0 must be at least 1"]),
    ("valid ratio of 1", no_setup, [*TRAIN, "--set", "data.valid_ratio=1"],
     ["data.valid_ratio=1: 1.0 must be less than 1.0"]),
    ("unknown optimizer", no_setup, [*TRAIN, "--set", "optim.name=lion"],
     ["optim.name=lion: 'lion' is not a choice; use one of sgd, adam, adamw"]),
    ("bad value in a config file", lambda ws: (ws / "c.toml").write_text(
        "[sched]\nname = 'wiggly'\n"), [*TRAIN, "--config", "c.toml"],
     ["c.toml: sched.name: 'wiggly' is not a choice"]),
    # --- output paths
    ("--out is a file", lambda ws: (ws / "taken").write_text("x"),
     ["hw1", "train", "--data", "data", "--out", "taken", "--dry-run"],
     ["taken: exists and is not a folder; choose another --out"]),
    ("--out under a file", lambda ws: (ws / "taken").write_text("x"),
     ["hw1", "train", "--data", "data", "--out", "taken/run", "--dry-run"],
     ["taken/run: taken is a file, not a folder; choose another --out"]),
    ("run already there", no_setup, ["hw1", "train", "--data", "data", "--out", "run"],
     ["run: already holds a run; continue it with --resume run"]),
    # --- checkpoints and runs
    ("truncated best.pt", lambda ws: (ws / "run" / "checkpoints" / "best.pt").write_bytes(
        (ws / "run" / "checkpoints" / "best.pt").read_bytes()[:500]),
     ["hw1", "predict", "--run", "run", "--ckpt", "best"],
     ["best.pt: truncated or not a checkpoint; use another checkpoint"]),
    ("random bytes as best.pt", lambda ws: (ws / "run" / "checkpoints" / "best.pt").write_bytes(
        bytes(range(256)) * 8), ["hw1", "predict", "--run", "run", "--ckpt", "best"],
     ["best.pt: truncated or not a checkpoint"]),
    ("foreign torch file", lambda ws: torch.save({"weights": 1},
                                                 ws / "run" / "checkpoints" / "best.pt"),
     ["hw1", "predict", "--run", "run", "--ckpt", "best"],
     ["best.pt: not a checkpoint written by this suite"]),
    ("best.pt copied over last.pt", lambda ws: shutil.copy(
        ws / "run" / "checkpoints" / "best.pt", ws / "run" / "checkpoints" / "last.pt"),
     ["hw1", "train", "--resume", "run"],
     ["last.pt: holds weights only (like a best.pt), not the state a run resumes from"]),
    ("resume with options", no_setup, ["hw1", "train", "--resume", "run", "--set", "optim.lr=1"],
     ["pass --resume RUN_DIR alone"]),
    ("resume of nothing", no_setup, ["hw1", "train", "--resume", "nothing"],
     ["nothing: no checkpoints/last.pt to resume from"]),
    # --- ensembles: nothing is created before the members are read and checked
    ("ensemble with a missing member", no_setup,
     ["hw1", "ensemble", "run", "nope", "--out", "fused"], ["nope", "no saved test outputs"]),
    ("vote on regression", no_setup,
     ["hw1", "ensemble", "run", "run", "--method", "vote", "--out", "fused"],
     ["regression outputs are averaged; use mean"]),
    ("one weight for two members", no_setup,
     ["hw1", "ensemble", "run", "run", "--weights", "1", "--out", "fused"], ["one per member"]),
    ("average more than kept", no_setup, ["hw1", "average", "run", "--last", "3"],
     ["0 kept checkpoints, fewer than --last 3; train with --set trainer.keep_checkpoints=3"]),
]


@pytest.mark.parametrize(("setup", "args", "words"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_a_user_error_is_one_line_exit_2_and_leaves_nothing(ws, capsys, setup, args, words):
    setup(ws)
    before = files(ws)
    capsys.readouterr()
    code = main(args)  # an unexpected exception (a traceback for the user) fails the test
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert files(ws) == before, files(ws) ^ before
    assert "run directory" not in out or "--resume" in args  # named once it exists


def test_a_diverging_model_leaves_its_run_but_no_submission(ws, capsys):
    code = main([*TRAIN, "--set", "optim.name=sgd", "--set", "optim.lr=1e6",
                 "--set", "data.normalize=false"])
    err = capsys.readouterr().err
    assert code == 2 and "error: " in err and "new/pred.csv: prediction for id" in err
    assert err.strip().splitlines()[-1].startswith("error: ")
    made = files(ws / "new")
    assert "checkpoints/last.pt" in made and "pred.csv" not in made
    assert "test_outputs.pt" not in made


@pytest.mark.parametrize("code_", [errno.EACCES, errno.ENOSPC])
def test_a_write_failing_mid_run_keeps_the_last_good_checkpoint(ws, capsys, monkeypatch, code_):
    """The second last.pt fails (no permission, or a full disk while writing): the first stays
    whole, no temporary file is left, and the message says how to resume."""
    real = common_io.atomic_write
    calls = []

    def failing(path, mode="w"):
        if Path(path).name == "last.pt":
            calls.append(path)
            if len(calls) == 2:
                raise OSError(code_, "simulated", str(path))
        return real(path, mode)

    monkeypatch.setattr("common.checkpoint.atomic_write", failing)
    code = main(["hw1", "train", "--data", "data", "--out", "new", "--set", "trainer.epochs=3",
                 "--set", "trainer.batch_size=512", "--set", "trainer.save_every_epochs=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: "), err
    assert "new/checkpoints/last.pt: cannot write (simulated); the last good checkpoint is " \
        "kept" in err[-1] and "--resume new" in err[-1]
    assert load_checkpoint(ws / "new" / "checkpoints" / "last.pt")["trainer"]["epoch"] == 1
    assert not [p for p in (ws / "new").rglob("*") if ".tmp" in p.name]
    monkeypatch.setattr("common.checkpoint.atomic_write", real)
    assert main(["hw1", "train", "--resume", "new"]) == 0
    assert (ws / "new" / "pred.csv").is_file()


def test_atomic_writes_leave_the_old_file_when_the_disk_fills(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    common_io.write_text_atomic(path, "old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(common_io.os, "fsync", full)
    with pytest.raises(OSError):
        common_io.write_text_atomic(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_an_unwritable_out_folder_is_found_before_the_data_is_read(ws, capsys, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    before = files(ws)
    code = main(["hw1", "train", "--data", "nowhere", "--out", "locked/run", "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "error: locked/run: cannot write in . (Permission denied); " \
        "choose another --out"
    assert files(ws) == before


def test_relative_data_is_stored_absolute_and_predict_works_elsewhere(ws, monkeypatch, capsys):
    other = ws / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    capsys.readouterr()
    assert main(["hw1", "predict", "--run", str(ws / "run")]) == 0
    out = capsys.readouterr().out
    assert f"predicting with {ws / 'run' / 'checkpoints' / 'last.pt'}" in out  # hw1: last
    assert (ws / "run" / "config.toml").read_text().count(f'dir = "{ws / "data"}"') == 1
