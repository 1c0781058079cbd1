"""The catalogue of failures a user can cause, through the command line as a user runs it: each
case is one `error:` line naming the file or key and the fix, exit status 2, no traceback, and
exactly the files it may leave (none, unless training had started). Runs in-process (the same
`main` as scripts/run.py) to stay fast; tests/hw/ cover the same CLI in subprocesses."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from common.core import io as common_io
from common.engine.checkpoint import load_checkpoint
from hw.cli import main
from tests.helpers import ROOT, cli_child, run_cli


@pytest.fixture(scope="module")
def made_once(hw1_demo, tmp_path_factory) -> Path:
    """The HW1 demo as data/ and a finished dry run of it as run/, made once."""
    root = tmp_path_factory.mktemp("ws")
    shutil.copytree(hw1_demo, root / "data")
    with contextlib.chdir(root):
        assert main(["hw1", "train", "--data", "data", "--out", "run", "--dry-run"]) == 0
    return root


@pytest.fixture()
def ws(made_once, tmp_path, monkeypatch):
    """A working folder (the current one) holding the HW1 demo as data/ and a finished dry run
    as run/: a copy of made_once, its config.toml naming this folder's data."""
    shutil.copytree(made_once, tmp_path, dirs_exist_ok=True)
    config = tmp_path / "run" / "config.toml"
    config.write_text(config.read_text().replace(str(made_once), str(tmp_path)))
    monkeypatch.chdir(tmp_path)
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
    # --- one owner per run folder, nothing finished replaced by surprise
    ("kfold --resume of a train run", no_setup, ["hw1", "kfold", "--resume", "run"],
     ["run: a train run, not a kfold run; continue it with hw1 train --resume run"]),
    ("predict over a finished submission", no_setup, ["hw1", "predict", "--run", "run"],
     ["run/pred.csv: exists (a finished submission); pass --force to replace it, or --out"]),
    ("ensemble over a finished run", no_setup, ["hw1", "ensemble", "run", "--out", "run"],
     ["run/pred.csv: exists (a finished submission); pass --force"]),
    ("a checkpoint path that does not exist", no_setup,
     [*TRAIN, "--set", 'predict.ckpt="/no/such.pt"'],
     ["predict.ckpt='/no/such.pt': no such checkpoint file"]),
    ("nan learning rate", no_setup, [*TRAIN, "--set", "optim.lr=nan"],
     ["optim.lr", "nan is not a number"]),
    ("resume after editing the model", lambda ws: edit(
        ws / "run" / "config.toml", lambda lines: [
            "hidden = [7]" if line.startswith("hidden =") else line for line in lines]),
     ["hw1", "train", "--resume", "run"],
     ["last.pt: written by another [model] than the run's config.toml now says (model.hidden: "
      "[16, 8] -> [7])"]),
    ("a checkpoint of another homework", lambda ws: torch.save(
        {**torch.load(ws / "run" / "checkpoints" / "best.pt", weights_only=False),
         "task_name": "hw8"}, ws / "other.pt"),
     ["hw1", "predict", "--run", "run", "--ckpt", "other.pt", "--force"],
     ["other.pt: a checkpoint of hw8, not hw1"]),
    ("a 300-character --out", no_setup, [*TRAIN[:-2], "x" * 300, "--dry-run"],
     ["a name in this path is 300 bytes long, over the 255 a file system allows"]),
    ("cuda on a machine without one", no_setup, [*TRAIN, "--set", 'trainer.device="cuda"'],
     ["cuda"]),
    ("a UTF-16 config", lambda ws: (ws / "c.toml").write_bytes(
        "[trainer]\nepochs = 2\n".encode("utf-16")), [*TRAIN, "--config", "c.toml"],
     ["c.toml: UTF-16 text; save the config as UTF-8"]),
    ("a Latin-1 config", lambda ws: (ws / "c.toml").write_bytes(
        "# café\n[trainer]\nepochs = 2\n".encode("latin-1")), [*TRAIN, "--config", "c.toml"],
     ["c.toml: line 1 is not UTF-8 text (another encoding?); save the config as UTF-8"]),
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
     ["run: already holds a run; continue it with hw1 train --resume run"]),
    # --- checkpoints and runs
    ("truncated best.pt", lambda ws: (ws / "run" / "checkpoints" / "best.pt").write_bytes(
        (ws / "run" / "checkpoints" / "best.pt").read_bytes()[:500]),
     ["hw1", "predict", "--run", "run", "--ckpt", "best", "--force"],
     ["best.pt: truncated or not a checkpoint; use another checkpoint"]),
    ("random bytes as best.pt", lambda ws: (ws / "run" / "checkpoints" / "best.pt").write_bytes(
        bytes(range(256)) * 8), ["hw1", "predict", "--run", "run", "--ckpt", "best", "--force"],
     ["best.pt: truncated or not a checkpoint"]),
    ("foreign torch file", lambda ws: torch.save({"weights": 1},
                                                 ws / "run" / "checkpoints" / "best.pt"),
     ["hw1", "predict", "--run", "run", "--ckpt", "best", "--force"],
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
    # --- numeric options of every command: the config's rules and wording
    ("negative tta views", no_setup, ["hw1", "predict", "--run", "run", "--tta", "-1"],
     ["--tta -1: -1 must be at least 0"]),
    ("one fold", no_setup, ["hw1", "kfold", "--data", "data", "--folds", "1", "--out", "k"],
     ["--folds 1: 1 must be at least 2"]),
    ("a negative ensemble weight", no_setup,
     ["hw1", "ensemble", "run", "run", "--weights", "-1", "1", "--out", "fused"],
     ["--weights -1.0 1.0: -1.0 must be at least 0.0"]),
    ("average of zero", no_setup, ["hw1", "average", "run", "--best", "0"],
     ["--best 0: 0 must be at least 1"]),
    ("zero sampling temperature", no_setup,
     ["hw5", "backtranslate", "--run", "run", "--sample", "--temperature", "0"],
     ["--temperature 0.0: 0.0 must be greater than 0.0"]),
    ("negative top-k", no_setup, ["hw5", "backtranslate", "--run", "run", "--topk", "-5"],
     ["--topk -5: -5 must be at least 0"]),
    ("negative limit", no_setup, ["hw5", "backtranslate", "--run", "run", "--limit", "-3"],
     ["--limit -3: -3 must be at least 0"]),
    ("no images to generate", no_setup, ["hw6", "generate", "--run", "run", "--count", "0"],
     ["--count 0: 0 must be at least 1"]),
    ("truncation above one", no_setup,
     ["hw6", "generate", "--run", "run", "--truncation", "1.5"],
     ["--truncation 1.5: 1.5 must be at most 1.0"]),
    # --- homework commands: output paths checked before any work
    ("report into a file", lambda ws: (ws / "taken").write_text("x"),
     ["hw5", "report", "--run", "run", "--out", "taken"],
     ["taken: exists and is not a folder; choose another --out"]),
    ("figure onto a folder", no_setup, ["hw6", "report", "--run", "run", "--out", "data"],
     ["data: is a folder; --out names the file to write"]),
    ("compare onto a folder", no_setup, ["compare", "run", "run", "--out", "data"],
     ["data: is a folder; --out names the file to write"]),
    # --- tune: the whole study checked before it exists
    ("zero trials", no_setup, ["hw1", "tune", "--data", "data", "--trials", "0", "--out", "s"],
     ["--trials 0: 0 must be at least 1"]),
    ("negative trials", no_setup,
     ["hw1", "tune", "--data", "data", "--trials", "-1", "--out", "s"],
     ["--trials -1: -1 must be at least 1"]),
    ("zero workers", no_setup, ["hw1", "tune", "--data", "data", "--workers", "0", "--out", "s"],
     ["--workers 0: 0 must be at least 1"]),
    ("tune over one fold", no_setup,
     ["hw1", "tune", "--data", "data", "--folds", "1", "--out", "s"], ["--folds 1:"]),
    ("a storage that is no database", no_setup,
     ["hw1", "tune", "--data", "data", "--storage", "notadb://x", "--out", "s"],
     ["--storage notadb://x: cannot open it"]),
    ("float bounds for an integer key", lambda ws: (ws / "c.toml").write_text(
        '[tune.space]\n"trainer.epochs" = { low = 1.5, high = 3 }\n'),
     ["hw1", "tune", "--data", "data", "--config", "c.toml", "--out", "s"],
     ["tune.space.trainer.epochs: trainer.epochs is an integer; give integer low and high"]),
    ("a choice a --set would refuse", lambda ws: (ws / "c.toml").write_text(
        '[tune.space]\n"optim.name" = { choices = ["adam", "lion"] }\n'),
     ["hw1", "tune", "--data", "data", "--config", "c.toml", "--out", "s"],
     ["tune.space.optim.name: 'lion' is not a choice; use one of sgd, adam"]),
    ("a bound outside the key's range", lambda ws: (ws / "c.toml").write_text(
        '[tune.space]\n"data.valid_ratio" = { low = 0.1, high = 1.5 }\n'),
     ["hw1", "tune", "--data", "data", "--config", "c.toml", "--out", "s"],
     ["tune.space.data.valid_ratio: 1.5 must be less than 1.0"]),
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


def test_a_diverging_model_stops_at_its_first_non_finite_loss_and_writes_no_submission(
        ws, capsys):
    code = main([*TRAIN, "--set", "model.arch=mlp", "--set", "trainer.batch_size=256",
                 "--set", "optim.name=sgd", "--set", "optim.lr=1e6",
                 "--set", "data.normalize=false"])
    err = capsys.readouterr().err
    assert code == 2 and "error: the training loss was not finite (NaN or inf) at update " \
        in err, err
    assert "at update 2 (epoch 1)" in err and len(err.strip().splitlines()) == 1
    assert not (ws / "new").exists()   # it failed before its first checkpoint: nothing kept


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

    monkeypatch.setattr("common.engine.checkpoint.atomic_write", failing)
    code = main(["hw1", "train", "--data", "data", "--out", "new", "--set", "trainer.epochs=3",
                 "--set", "trainer.batch_size=512", "--set", "trainer.save_every_epochs=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: "), err
    assert "new/checkpoints/last.pt: cannot write (simulated); the last good checkpoint is " \
        "kept" in err[-1] and "--resume new" in err[-1]
    assert load_checkpoint(ws / "new" / "checkpoints" / "last.pt")["trainer"]["epoch"] == 1
    assert not [p for p in (ws / "new").rglob("*") if ".tmp" in p.name]
    monkeypatch.setattr("common.engine.checkpoint.atomic_write", real)
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
    assert main(["hw1", "predict", "--run", str(ws / "run"), "--force"]) == 0
    out = capsys.readouterr().out
    assert f"predicting with {ws / 'run' / 'checkpoints' / 'last.pt'}" in out  # hw1: last
    assert (ws / "run" / "config.toml").read_text().count(f'dir = "{ws / "data"}"') == 1


# --------------------------------------------------------------------------- a real full disk
@pytest.mark.slow
def test_a_real_file_size_limit_during_a_checkpoint_is_one_line_and_resumes_exactly(ws):
    """The checkpoint grows by its history every epoch; with the limit one byte under the
    final size, torch's zip writer fails at epoch 6 with EFBIG (reported by torch as a
    RuntimeError). The run stops with one line naming last.pt and the --resume command,
    keeps epoch 5's last.pt whole and no temporary file; resumed without the limit it ends
    bit-identical to a run that never stopped."""
    sets = ["--set", "trainer.epochs=6", "--set", "trainer.save_every_epochs=1",
            "--set", "model.hidden=[64]", "--set", 'trainer.device="cpu"']
    whole = run_cli("hw1", "train", "--data", "data", "--out", "whole", *sets, cwd=ws)
    assert whole.returncode == 0, whole.stderr[-2000:]
    size = (ws / "whole" / "checkpoints" / "last.pt").stat().st_size
    cut = cli_child("hw1", "train", "--data", "data", "--out", "cut", *sets, cwd=ws,
                    limit=size - 1)
    err = cut.stderr.strip().splitlines()
    assert cut.returncode == 2 and "Traceback" not in cut.stderr, cut.stderr[-2000:]
    assert err[-1].startswith("error: cut/checkpoints/last.pt: cannot write (File too large)")
    assert "the last good checkpoint is kept" in err[-1] and "--resume cut" in err[-1]
    assert load_checkpoint(ws / "cut" / "checkpoints" / "last.pt")["trainer"]["epoch"] == 5
    assert not [p for p in (ws / "cut").rglob("*") if ".tmp" in p.name]
    assert not (ws / "cut" / "pred.csv").exists()
    resumed = run_cli("hw1", "train", "--resume", "cut", cwd=ws)  # no limit: in this process
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (ws / "cut" / "pred.csv").read_bytes() == (ws / "whole" / "pred.csv").read_bytes()
    a = load_checkpoint(ws / "cut" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(ws / "whole" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_a_wrapped_write_error_is_the_oserror_it_was(tmp_path):
    """save_torch_file under a real limit, in a child: the caller sees OSError(EFBIG) naming
    the file, not torch's RuntimeError; no partial or temporary file is left."""
    import subprocess
    import sys
    import textwrap

    from tests.helpers import ROOT

    code = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        from common.engine.checkpoint import save_torch_file
        try:
            save_torch_file({str(tmp_path / 'big.pt')!r}, torch.zeros(100_000))
        except OSError as exc:
            print(type(exc).__name__, exc.errno, exc.filename)
    """)
    import resource

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          preexec_fn=limited, timeout=120)
    assert done.stdout.split() == ["OSError", str(errno.EFBIG), str(tmp_path / "big.pt")], \
        done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- hw4 featurize
def write_voices(root: Path, *, speakers=("alice", "bob"), seconds=(1.0, 2.0), test=True,
                 extra: dict[str, int] | None = None) -> Path:
    """WAV files <speaker>/<k>.wav (a tone each), test/x.wav, and `extra` files
    (relative path -> samples) for the broken cases."""
    import numpy as np
    import soundfile

    for spk in speakers:
        (root / spk).mkdir(parents=True, exist_ok=True)
        for k, sec in enumerate(seconds):
            t = np.arange(int(16000 * sec)) / 16000
            soundfile.write(root / spk / f"{k}.wav",
                            (0.3 * np.sin(2 * np.pi * (200 + 50 * k) * t)).astype(np.float32),
                            16000)
    if test:
        (root / "test").mkdir(exist_ok=True)
        soundfile.write(root / "test" / "x.wav", np.zeros(8000, np.float32) + 0.1, 16000)
    for rel, n in (extra or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(root / rel, np.full(n, 0.1, np.float32), 16000)
    return root


@pytest.mark.parametrize("case, expected", [
    ("short", "1.wav: 50 samples, shorter than one analysis window (400 samples"),
    ("empty", "0.wav: 0 samples, shorter than one analysis window"),
    ("unreadable", "bad.wav: unreadable audio"),
    ("no_audio", "the speaker folders hold no .wav or .flac files"),
    ("out_is_file", "exists and is not a folder; choose another --out"),
    ("out_under_file", "is a file, not a folder; choose another --out"),
    ("out_has_files", "already holds files; choose a new --out folder"),
])
def test_featurize_refuses_in_one_line_and_writes_nothing(tmp_path, capsys, case, expected):
    audio = tmp_path / "audio"
    if case == "no_audio":
        (audio / "alice").mkdir(parents=True)
        (audio / "alice" / "notes.txt").write_text("no audio here")
    else:
        write_voices(audio, extra={"short": {"carol/1.wav": 50}, "empty": {"dave/0.wav": 0}}
                     .get(case))
    if case == "unreadable":
        (audio / "bob" / "bad.wav").write_bytes(b"RIFF....not a wave file")
    out = tmp_path / "Dataset"
    if case == "out_is_file":
        out.write_text("mine")
    elif case == "out_under_file":
        (tmp_path / "file").write_text("mine")
        out = tmp_path / "file" / "Dataset"
    elif case == "out_has_files":
        out.mkdir()
        (out / "metadata.json").write_text("{}")
    before = files(tmp_path)
    code = main(["hw4", "featurize", "--audio", str(audio), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert files(tmp_path) == before                      # no dataset, no temporary folder


def test_featurize_without_test_audio_trains_and_maps_files_back(tmp_path, capsys):
    """test/ is optional: the dataset trains (no submission, said so) and predict says there
    is nothing to predict; sources.csv maps every uttr-*.pt to its audio file and speaker."""
    import pandas as pd

    audio = write_voices(tmp_path / "audio", speakers=("alice", "bob", "carol"),
                         seconds=(1.0, 1.5, 2.0, 2.5), test=False)
    out = tmp_path / "Dataset"
    assert main(["hw4", "featurize", "--audio", str(audio), "--out", str(out)]) == 0
    sources = pd.read_csv(out / "sources.csv")
    assert list(sources.columns) == ["feature_path", "source", "speaker"] and len(sources) == 12
    meta = json.loads((out / "metadata.json").read_text())
    for spk, recs in meta["speakers"].items():
        got = sources[sources["speaker"] == spk]
        assert list(got["feature_path"]) == [r["feature_path"] for r in recs]
        assert list(got["source"]) == [str(audio / spk / f"{k}.wav") for k in range(4)]
    assert json.loads((out / "testdata.json").read_text())["utterances"] == []
    capsys.readouterr()
    sets = ["--set", "trainer.epochs=1", "--set", 'data.cache_dir=""', "--set",
            "data.valid_ratio=0.25", "--set", 'trainer.device="cpu"']
    assert main(["hw4", "train", "--data", str(out), "--config", str(ROOT / "configs" /
                                                                      "hw4_cpu.toml"),
                 "--out", str(tmp_path / "run"), *sets]) == 0
    said = capsys.readouterr()
    assert "no test items; trained, no submission written" in said.out + said.err
    assert not (tmp_path / "run" / "output.csv").exists()
    code = main(["hw4", "predict", "--run", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no test items; nothing to predict" in err[0]


def test_featurize_under_a_real_file_size_limit_leaves_nothing(tmp_path):
    """A feature file over the limit (a long recording) fails with EFBIG in the child: one
    line naming the file, no dataset and no temporary folder beside it."""
    audio = write_voices(tmp_path / "audio", seconds=(1.0, 30.0))   # 30 s: ~480 kB of mels
    done = cli_child("hw4", "featurize", "--audio", str(audio), "--out",
                     str(tmp_path / "Dataset"), cwd=tmp_path, limit=200_000)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1 and "Traceback" not in done.stderr, err
    assert "cannot write (File too large)" in err[0] and ".pt" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio"]


# --------------------------------------------------------------------------- download
@pytest.mark.parametrize("behaviour, expected", [
    ("forbidden", "failed: 403 - Forbidden (join the competition"),
    ("damaged", "hw1.zip: a damaged zip from the kaggle CLI"),
    ("good", None),
])
def test_download_makes_its_destination_only_on_success(tmp_path, monkeypatch, capsys,
                                                        behaviour, expected):
    """A stand-in kaggle CLI on PATH: a 403, a damaged zip, or a good zip. The destination
    appears only when everything was extracted; nothing is left beside it otherwise."""
    import zipfile

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("covid.train.csv", "id,x\n0,1\n")
    script = {"forbidden": "echo '403 - Forbidden' >&2; exit 1",
              "damaged": 'printf "PK not a zip" > "$6/hw1.zip"',
              "good": f'cp {good} "$6/hw1.zip"'}[behaviour]
    (bin_dir / "kaggle").write_text(f"#!/bin/sh\n{script}\n")
    (bin_dir / "kaggle").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("KAGGLE_USERNAME", "me")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    work = tmp_path / "work"
    work.mkdir()
    capsys.readouterr()
    code = main(["hw1", "download", "--dest", str(work / "data" / "hw1")])
    err = capsys.readouterr().err.strip().splitlines()
    if expected is None:
        assert code == 0 and (work / "data" / "hw1" / "covid.train.csv").is_file()
        assert sorted(p.name for p in (work / "data").iterdir()) == ["hw1"]
    else:
        assert code == 2 and len(err) == 1 and expected in err[0], err
        assert files(work) == {"data"}          # the parent may exist; nothing inside it


@pytest.mark.slow
def test_a_live_run_has_one_owner_and_a_sigterm_stops_it_cleanly(hw1_demo, tmp_path, capsys):
    """While a real training process owns its folder: a second train into it, a resume of it
    and a predict or ensemble of it are each one error line naming that process (nothing
    written); predict --allow-running --out reads it and says so. Then `kill PID` (SIGTERM)
    unwinds like Ctrl-C: exit 143, status interrupted by SIGTERM (not running with a dead
    pid), the resume command printed, last.pt whole, and the lock gone with the process."""
    import signal
    import subprocess
    import sys
    import time

    from common.core.owner import holder
    from common.engine.rundir import RunDir

    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "scripts" / "run.py"), "hw1", "train", "--data",
           str(hw1_demo), "--out", str(run), "--set", "trainer.epochs=100000",
           "--set", "trainer.print_every_evals=1000"]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "last.pt").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert RunDir(run).status()["state"] == "running"
        assert holder(run)["pid"] == child.pid
        before = files(run)
        capsys.readouterr()
        refused = {
            "second writer": ["hw1", "train", "--data", str(hw1_demo), "--out", str(run)],
            "resume while running": ["hw1", "train", "--resume", str(run)],
            "predict": ["hw1", "predict", "--run", str(run), "--force"],
            "ensemble": ["hw1", "ensemble", str(run), "--out", str(tmp_path / "ens")],
            "compare": ["compare", str(run), "--out", str(tmp_path / "c.png")],
        }
        for case, argv in refused.items():
            code = main(argv)
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 2 and len(err) == 1, (case, err)
            assert f"process {child.pid} (`run.py hw1 train" in err[0], (case, err)
        assert not (tmp_path / "ens").exists() and not (tmp_path / "c.png").exists()
        assert main(["hw1", "predict", "--run", str(run), "--allow-running", "--out",
                     str(tmp_path / "now")]) == 0
        err = capsys.readouterr().err
        assert f"still being written by process {child.pid}" in err
        assert (tmp_path / "now" / "pred.csv").is_file()
        assert "pred.csv" not in files(run) and "pred.csv" not in before
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    assert "stopped by SIGTERM; continue with:" in err and f"--resume {run}" in err
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted" and status["signal"] == "SIGTERM"
    assert RunDir(run).status()["state"] == "interrupted" and holder(run) is None
    assert load_checkpoint(run / "checkpoints" / "last.pt")["trainer"]["step"] > 0  # intact


def test_a_config_with_a_byte_order_mark_is_read(ws, capsys):
    """Notepad saves UTF-8 with a BOM; tomllib alone refuses it."""
    (ws / "c.toml").write_bytes(b"\xef\xbb\xbf[trainer]\nepochs = 1\n")
    assert main([*TRAIN, "--config", "c.toml"]) == 0
    assert "epochs = 1" in (ws / "new" / "config.toml").read_text()


def test_runs_and_compare_survive_a_broken_run_folder(ws, capsys):
    """`runs` shows a run whose config.toml is broken as unreadable and lists the rest;
    `compare` of it is one line."""
    root = ws / "runs" / "hw1"
    for name in ("good", "bad"):
        shutil.copytree(ws / "run", root / name)
    (root / "bad" / "config.toml").write_text("garbage [[\n")
    capsys.readouterr()
    assert main(["runs", "--root", str(ws / "runs")]) == 0
    table = capsys.readouterr().out.splitlines()[1:]
    rows = {line.split()[0]: line.split()[3 if "good" in line else 2] for line in table}
    assert rows == {"hw1/good": "finished", "hw1/bad": "unreadable"}
    assert main(["compare", str(root / "good"), str(root / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad/config.toml: not valid TOML" in err[0]


def test_demo_data_under_a_real_file_size_limit_leaves_nothing(tmp_path):
    """hw4 demo-data on a full disk left 29 partial files: now one line, and no folder."""
    done = cli_child("hw4", "demo-data", "--dest", str(tmp_path / "demo"), cwd=tmp_path,
                     limit=20_000)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(err) == 1 and ".wav: cannot write (File too large)" in err[0], err
    assert list(tmp_path.iterdir()) == []
