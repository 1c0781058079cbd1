"""The climb as a workflow: Optuna studies on the engine (database and trial table, resume
after a kill without running a trial twice, pruning a diverging trial, two workers on one
SQLite study), the runs table and comparisons, TensorBoard event files, and the hand-off to
Kaggle (the submit line, download with and without the kaggle CLI)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

from common.experiments.tune import Study, open_study, work
from hw.cli import main as cli_main
from hw.hw1_covid.task import CovidTask
from tests.helpers import ROOT

SPACE = """\
[data]
valid_ratio = 0.2
[model]
hidden = [16]
[trainer]
epochs = 6
batch_size = 256
print_every_evals = 1000
[tune]
trials = 4
startup_trials = 2
[tune.space]
"optim.lr" = { low = 1e-4, high = 3e-2, log = true }
"model.hidden" = { choices = [[8], [32, 16]] }
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tune.toml"
    path.write_text(SPACE)
    return path


def trial_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "trials.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def trained_once(run: Path) -> bool:
    return (run / "log.txt").read_text().count("run directory:") == 1


def test_a_study_writes_its_database_and_trial_table(tmp_path, recipe, hw1_demo, capsys):
    study = tmp_path / "study"
    code = cli_main(["hw1", "tune", "--data", str(hw1_demo), "--config", str(recipe),
                     "--out", str(study), "--ensemble-top", "2", "--set",
                     'trainer.device="cpu"'])
    out = capsys.readouterr().out
    assert code == 0
    assert (study / "study.db").is_file() and (study / "history.png").is_file()
    rows = trial_rows(study)
    assert [r["number"] for r in rows] == ["0", "1", "2", "3"]
    assert set(rows[0]) == {"number", "model.hidden", "optim.lr", "value", "state",
                            "duration_s", "run_dir"}
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    assert "number  model.hidden" in out and "best: trial" in out
    best = json.loads((study / "study.json").read_text())
    assert best["trials"] == 4 and best["storage"].startswith("sqlite:///")
    done = [r for r in rows if r["state"] == "COMPLETE"]
    winner = min(done, key=lambda r: float(r["value"]))
    assert f"best: trial {winner['number']}" in out
    # a trial is an ordinary run: its sampled config saved, predict works on it
    import tomllib

    saved = tomllib.loads((Path(winner["run_dir"]) / "config.toml").read_text())
    assert str(saved["model"]["hidden"]).replace(" ", "") == winner["model.hidden"].replace(
        " ", "") and saved["optim"]["lr"] == pytest.approx(float(winner["optim.lr"]))
    assert cli_main(["hw1", "predict", "--run", winner["run_dir"], "--force"]) == 0
    assert "kaggle competitions submit -c ml2022spring-hw1" in capsys.readouterr().out
    assert (study / "ensemble-top2" / "pred.csv").is_file()


def test_a_dry_run_study_stays_tiny_and_no_validation_stops_it(tmp_path, recipe, hw1_demo,
                                                                 capsys):
    recipe.write_text(SPACE + '"trainer.epochs" = { low = 50, high = 60 }\n')
    common = ["hw1", "tune", "--data", str(hw1_demo), "--config", str(recipe), "--set",
              'trainer.device="cpu"', "--pruner", "none"]
    assert cli_main([*common, "--out", str(tmp_path / "dry"), "--dry-run", "--trials", "1"]) == 0
    (row,) = trial_rows(tmp_path / "dry")
    assert 50 <= int(row["trainer.epochs"]) <= 60 and row["state"] == "COMPLETE"
    with open(Path(row["run_dir"]) / "steps.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2      # one epoch of two batches, sampled or not
    capsys.readouterr()
    folder = tmp_path / "noval"
    code = cli_main([*common, "--out", str(folder), "--set", "data.valid_ratio=0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "no evaluation of valid_loss" in err[-1] and "--folds K" in err[-1]
    trials = open_study(CovidTask, Study.load(folder)).trials
    assert [t.state.name for t in trials] == ["FAIL"]   # stopped at once, not after three


CHILD = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    import common.experiments.tune as tune
    original = tune.ReportToOptuna.on_evaluate
    def on_evaluate(self, trainer, metrics, outputs):
        original(self, trainer, metrics, outputs)
        if self.trial.number == 2 and self.evals == 2:
            os._exit(17)  # killed during trial 3, no cleanup
    tune.ReportToOptuna.on_evaluate = on_evaluate
    from hw.cli import main
    sys.exit(main({argv!r}))
""")


@pytest.mark.slow
def test_a_killed_study_resumes_without_running_a_trial_twice(tmp_path, recipe, hw1_demo):
    study = tmp_path / "study"
    argv = ["hw1", "tune", "--data", str(hw1_demo), "--config", str(recipe), "--out",
            str(study), "--pruner", "none", "--set", 'trainer.device="cpu"']
    child = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), argv=argv)],
                           capture_output=True, text=True)
    assert child.returncode == 17, child.stderr[-2000:]
    first = {p.name: (p / "checkpoints" / "last.pt").stat().st_mtime_ns
             for p in (study / "trials").iterdir() if (p / "checkpoints" / "last.pt").exists()}
    assert sorted(first) == ["trial-0000", "trial-0001", "trial-0002"]
    assert cli_main(["hw1", "tune", "--resume", str(study)]) == 0
    rows = trial_rows(study)
    states = [r["state"] for r in rows]
    assert states.count("COMPLETE") == 4 and states[2] == "FAIL" and len(rows) == 5
    assert rows[3]["optim.lr"] == rows[2]["optim.lr"]  # the interrupted one, queued again
    for name in ("trial-0000", "trial-0001"):  # finished trials were not touched
        assert (study / "trials" / name / "checkpoints" / "last.pt").stat().st_mtime_ns == \
            first[name]
    assert all(trained_once(study / "trials" / f"trial-{i:04d}") for i in (0, 1, 3, 4))


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_reopened_study_or_another_worker_draws_new_values(tmp_path, recipe, sampler):
    from common.experiments.tune import parse_space, suggest

    folder = tmp_path / "study"
    study = Study(task="hw1", config=str(recipe), overrides=[], folder=str(folder),
                  storage=f"sqlite:///{tmp_path / 'study.db'}", name="s", trials=4, timeout=0,
                  sampler=sampler, pruner="none", seed=0, folds=0, startup_trials=10,
                  warmup_evals=0)
    space = parse_space(tomllib.loads(SPACE)["tune"]["space"], CovidTask.schema())

    def draw(stream=0):
        opened = open_study(CovidTask, study, stream)
        trial = opened.ask()
        lr = suggest(trial, space)["optim.lr"]
        opened.tell(trial, 1.0)
        return lr

    first = draw()
    assert draw() != first and draw(stream=1) != first   # a resume, a second worker
    fresh = Study(**{**study.__dict__, "storage": f"sqlite:///{tmp_path / 'b.db'}"})
    study = fresh
    assert draw() == first                                 # a fresh study: tune.seed decides


@pytest.mark.filterwarnings("ignore:Fixed parameter")
@pytest.mark.parametrize("folds", [0, 3])
def test_a_diverging_trial_is_pruned_before_its_last_evaluation(tmp_path, recipe, hw1_demo,
                                                                 folds):
    """A plain trial reports every evaluation (12 epochs), a k-fold trial every fold (3)."""
    folder = tmp_path / "study"
    folder.mkdir()
    epochs = 12 if not folds else 6
    study = Study(task="hw1", config=str(recipe),
                  overrides=[f'data.dir="{hw1_demo}"', 'trainer.device="cpu"',
                             f"trainer.epochs={epochs}"],
                  folder=str(folder), storage=f"sqlite:///{folder / 'study.db'}", name="s",
                  trials=3, timeout=0, sampler="tpe", pruner="median", seed=0, folds=folds,
                  startup_trials=2, warmup_evals=0 if folds else 1)
    opened = open_study(CovidTask, study)
    for lr in (3e-3, 1e-2, 30.0):                  # the last one diverges
        opened.enqueue_trial({"optim.lr": lr, "model.hidden": "[32, 16]"})
    work(CovidTask, study)
    trials = open_study(CovidTask, study).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    pruned = Path(trials[2].user_attrs["run_dir"])
    assert json.loads((pruned / "status.json").read_text())["state"] == "pruned"
    if not folds:
        assert len(trials[2].intermediate_values) < 12   # stopped before its last evaluation
        return
    assert [len(t.intermediate_values) for t in trials] == [3, 3, 1]
    assert (pruned / "fold-1").is_dir() and not (pruned / "fold-2").exists()


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(tmp_path, recipe, hw1_demo):
    study = tmp_path / "study"
    code = cli_main(["hw1", "tune", "--data", str(hw1_demo), "--config", str(recipe),
                     "--out", str(study), "--workers", "2", "--pruner", "none",
                     "--set", 'trainer.device="cpu"', "--set", "trainer.threads=1"])
    assert code == 0
    rows = trial_rows(study)
    assert len(rows) == 4 and len({r["number"] for r in rows}) == 4
    assert {r["state"] for r in rows} == {"COMPLETE"}
    assert len({r["optim.lr"] for r in rows}) == 4      # the workers drew different values
    runs = sorted((study / "trials").iterdir())
    assert len(runs) == 4 and all(trained_once(r) for r in runs)
    pids = {json.loads((r / "status.json").read_text())["pid"] for r in runs}
    assert len(pids) == 2                              # both processes ran trials


# --------------------------------------------------------------------------- runs, compare
@pytest.mark.slow
def test_runs_lists_finished_interrupted_and_failed_runs(tmp_path, hw1_demo, capsys):
    from common.engine.trainer import Callback
    from common.experiments.pipeline import train_run
    from tests.common.test_resume import run_and_kill

    root = tmp_path / "runs" / "hw1"
    sets = [f'data.dir="{hw1_demo}"', "trainer.epochs=3", "model.hidden=[8]",
            "data.valid_ratio=0.2", 'trainer.device="cpu"', "trainer.ckpt_every_steps=2"]
    assert cli_main(["hw1", "train", "--out", str(root / "a-finished"),
                     *[a for s in sets for a in ("--set", s)]]) == 0
    crash = run_and_kill("hw.hw1_covid.task:CovidTask", None, sets, root / "killed", 4)
    assert crash.returncode == 17

    class Boom(Callback):
        def on_step_end(self, trainer):
            raise RuntimeError("boom")

    from common.core.config import load_config

    with pytest.raises(RuntimeError):
        train_run(CovidTask, load_config(CovidTask.schema(), None, sets), root / "c-failed",
                  callbacks=[Boom()])
    assert cli_main(["hw1", "kfold", "--folds", "2", "--out", str(root / "d-kfold"),
                     *[a for s in sets for a in ("--set", s)]]) == 0
    capsys.readouterr()
    assert cli_main(["runs", "--root", str(tmp_path / "runs"), "--sort", "valid_loss"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = {line.split()[0]: line.split()[3:] for line in lines[1:]}
    assert {k: v[0] for k, v in row.items()} == {
        "hw1/a-finished": "finished", "hw1/killed": "dead", "hw1/c-failed": "failed",
        "hw1/d-kfold": "finished"}
    assert {line.split()[0] for line in lines[3:]} == {"hw1/killed", "hw1/c-failed"}  # no value
    finished = row["hw1/a-finished"]
    assert finished[1] == "valid_loss" and float(finished[2]) > 0
    assert "model.hidden=[8]" in finished and "trainer.epochs=3" in finished
    assert not any("data.dir" in cell for cell in finished)
    with open(root / "d-kfold" / "kfold.csv", newline="") as fh:
        oof = [r for r in csv.DictReader(fh) if r["fold"] == "all"][0]["mse"]
    assert row["hw1/d-kfold"][1:4] == ["oof_mse", f"{float(oof):.5g}", "-"]

    out = tmp_path / "compare.png"
    assert cli_main(["compare", str(root / "a-finished"), str(root / "killed"), "--out",
                     str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "trainer.ckpt_every_steps" not in printed  # equal in both
    assert printed.splitlines()[0].split()[:3] == ["key", "a-finished", "killed"]


# --------------------------------------------------------------------------- TensorBoard
def test_tensorboard_event_files_hold_the_logged_scalars(tmp_path, hw1_demo):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from common.engine.plots import read_steps

    run = tmp_path / "run"
    assert cli_main(["hw1", "train", "--data", str(hw1_demo), "--out", str(run), "--set",
                     "trainer.tensorboard=true", "--set", "trainer.epochs=4", "--set",
                     "model.hidden=[8]", "--set", "data.valid_ratio=0.2", "--set",
                     'trainer.device="cpu"']) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/grad_norm", "eval/valid_loss",
            "eval/train_loss"} <= set(tags)
    steps = read_steps(run / "steps.csv")
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == [int(s) for s in steps["step"]]
    assert [e.value for e in logged] == pytest.approx(list(steps["loss"]), rel=1e-6)
    metrics = read_steps(run / "metrics.csv")
    assert [e.value for e in events.Scalars("eval/valid_loss")] == \
        pytest.approx(list(metrics["valid_loss"]), rel=1e-6)


# --------------------------------------------------------------------------- hand-off
def test_handoff_lines_and_download(tmp_path, monkeypatch, capsys):
    from common.experiments.handoff import handoff
    from hw import TASKS

    handoff(TASKS["hw1"], Path("runs/hw1/x/pred.csv"), "x")
    handoff(TASKS["hw5"], Path("runs/hw5/y/prediction.txt"), "y")
    out = capsys.readouterr().out.splitlines()
    assert out == ["hand in: kaggle competitions submit -c ml2022spring-hw1 -f "
                   "runs/hw1/x/pred.csv -m x",
                   "hand in: upload runs/hw5/y/prediction.txt on JudgeBoi (the course's "
                   "server: a .txt under 700 kB, 5 a day)"]
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    bin_dir.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", str(bin_dir))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)

    def download(hw):
        code = cli_main([hw, "download", "--dest", str(tmp_path / "data")])
        return code, capsys.readouterr().err.strip().splitlines()

    code, err = download("hw1")
    assert code == 2 and len(err) == 1 and "pip install kaggle" in err[0], err
    fake = bin_dir / "kaggle"   # a stand-in CLI: records its arguments, writes the zip
    fake.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys, zipfile, pathlib
        dest = pathlib.Path(sys.argv[sys.argv.index("-p") + 1])
        (dest / "args.txt").write_text(" ".join(sys.argv[1:]))
        with zipfile.ZipFile(dest / "ml2022spring-hw1.zip", "w") as zf:
            zf.writestr("covid.train.csv", "id\\n")
        """))
    fake.chmod(0o755)
    code, err = download("hw1")
    assert code == 2 and len(err) == 1 and "kaggle.json" in err[0], err
    monkeypatch.setenv("KAGGLE_USERNAME", "me")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    code, _ = download("hw1")
    assert code == 0
    # the CLI downloads into a folder beside --dest, moved in once extracted
    assert (tmp_path / "data" / "args.txt").read_text() == \
        f"competitions download -c ml2022spring-hw1 -p {tmp_path / f'.data-download-{os.getpid()}'}"
    assert not list(tmp_path.glob(".data-download-*"))
    assert (tmp_path / "data" / "covid.train.csv").read_text() == "id\n"
    code, err = download("hw5")
    assert code == 2 and len(err) == 1 and "not on Kaggle" in err[0], err
    assert os.environ["PATH"] == str(bin_dir) and zipfile  # the fake alone was reachable


def test_a_kfold_objective_is_the_out_of_fold_metric(tmp_path, recipe, hw1_demo):
    study = tmp_path / "study"
    assert cli_main(["hw1", "tune", "--data", str(hw1_demo), "--config", str(recipe),
                     "--out", str(study), "--folds", "2", "--trials", "2", "--set",
                     'trainer.device="cpu"', "--set", "trainer.epochs=3"]) == 0
    for row in trial_rows(study):
        with open(Path(row["run_dir"]) / "kfold.csv", newline="") as fh:
            overall = [r for r in csv.DictReader(fh) if r["fold"] == "all"][0]
        assert float(row["value"]) == pytest.approx(float(overall["mse"]))


@pytest.mark.slow
def test_ctrl_c_in_a_trial_is_one_line_that_says_how_to_continue(hw1_demo, tmp_path):
    """Optuna logs a 30-line traceback for a trial that Ctrl-C ended; the user gets one line."""
    import signal
    import time

    study = tmp_path / "study"
    child = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run.py"), "hw1", "tune",
                              "--data", str(hw1_demo), "--out", str(study), "--trials", "3",
                              "--set", "trainer.print_every_evals=1000000"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(study.glob("trials/*/steps.csv")) and time.monotonic() < deadline:
            time.sleep(0.2)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130 and "Traceback" not in out + err, (out + err)[-3000:]
    assert err.strip().splitlines() == [f"interrupted; continue the study with: python "
                                        f"{ROOT / 'scripts' / 'run.py'} hw1 tune --resume {study}"]
