"""Each user mistake gives one line naming the file and the problem, exit status 2, and no
partial submission."""

import shutil

import pytest
import torch

from tests.conftest import run_cli


@pytest.fixture()
def data(hw1_demo, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(hw1_demo, folder)
    return folder


def fails(*args, expect: str, run=None, trained=False):
    result = run_cli("hw1", *args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expect in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    if run is not None:
        assert not (run / "pred.csv").exists()
        if not trained:
            assert not run.exists()  # bad data is found before a run directory is made
    return lines[0]


def edit(path, transform):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(transform(lines)) + "\n")


def train(data, run):
    return ("train", "--data", str(data), "--out", str(run), "--dry-run")


def test_missing_data_directory(tmp_path):
    fails("train", "--data", str(tmp_path / "nowhere"), "--dry-run",
          expect="nowhere: data directory not found; download it (kaggle competitions "
                 "download -c ml2022spring-hw1)")


def test_missing_test_file(data, tmp_path):
    (data / "covid.test.csv").unlink()
    fails(*train(data, tmp_path / "run"), expect="no test file (covid.test.csv or",
          run=tmp_path / "run")


def test_zip_not_unpacked(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "ml2022spring-hw1.zip").write_bytes(b"PK")
    fails("train", "--data", str(tmp_path / "d"), "--dry-run", expect="unzip")


def test_test_file_missing_a_column(data, tmp_path):
    edit(data / "covid.test.csv", lambda ls: [",".join(line.split(",")[:-1]) for line in ls])
    fails(*train(data, tmp_path / "run"),
          expect="covid.test.csv: missing column(s) d5.worried_finances", run=tmp_path / "run")


def test_test_file_with_an_extra_column(data, tmp_path):
    edit(data / "covid.test.csv",
         lambda ls: [ls[0] + ",extra"] + [line + ",1" for line in ls[1:]])
    fails(*train(data, tmp_path / "run"), expect="unexpected column(s) extra",
          run=tmp_path / "run")


def test_train_file_without_target(data, tmp_path):
    shutil.copy(data / "covid.test.csv", data / "covid.train.csv")
    fails(*train(data, tmp_path / "run"), expect="covid.train.csv: the last column must be",
          run=tmp_path / "run")


def set_cell(row, col, value):
    def transform(lines):
        cells = lines[row].split(",")
        cells[col] = value
        return lines[:row] + [",".join(cells)] + lines[row + 1:]
    return transform


def test_non_numeric_cell(data, tmp_path):
    edit(data / "covid.train.csv", set_cell(5, 39, "abc"))
    fails(*train(data, tmp_path / "run"),
          expect="covid.train.csv: row 6, column 'ili' is not a number ('abc')",
          run=tmp_path / "run")


def test_nan_in_features(data, tmp_path):
    edit(data / "covid.test.csv", set_cell(3, 50, ""))
    fails(*train(data, tmp_path / "run"),
          expect="covid.test.csv: row 4, column 'anxious' is empty (NaN)",
          run=tmp_path / "run")
    edit(data / "covid.test.csv", set_cell(3, 50, "NaN"))
    fails(*train(data, tmp_path / "run"), expect="column 'anxious' is empty (NaN)")


def test_ragged_row(data, tmp_path):
    edit(data / "covid.train.csv", lambda ls: ls[:9] + [ls[9] + ",1,2"] + ls[10:])
    fails(*train(data, tmp_path / "run"), expect="covid.train.csv: malformed CSV",
          run=tmp_path / "run")


def test_empty_test_file(data, tmp_path):
    edit(data / "covid.test.csv", lambda ls: ls[:1])
    fails(*train(data, tmp_path / "run"), expect="covid.test.csv: the file has a header but no",
          run=tmp_path / "run")
    (data / "covid.test.csv").write_text("")
    fails(*train(data, tmp_path / "run"), expect="covid.test.csv: the file is empty")


def test_unknown_config_key(data, tmp_path):
    line = fails(*train(data, tmp_path / "run"), "--set", "optim.learnig_rate=1",
                 expect="unknown key(s) optim.learnig_rate; valid keys in [optim]: name, lr")
    assert "weight_decay" in line


def test_bad_config_file(data, tmp_path):
    (tmp_path / "c.toml").write_text("[model]\nhidden = 'wide'\n")
    fails(*train(data, tmp_path / "run"), "--config", str(tmp_path / "c.toml"),
          expect="c.toml: model.hidden: expected a list")


def test_unknown_feature_pattern(data, tmp_path):
    fails(*train(data, tmp_path / "run"), "--set", "data.features=list",
          "--set", 'data.feature_list=["d9.*"]', expect="'d9.*' matches no column")


def test_truncated_checkpoint_keeps_the_earlier_submission(data, tmp_path):
    run = tmp_path / "run"
    assert run_cli("hw1", *train(data, run)).returncode == 0
    before = (run / "pred.csv").read_text()
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:500])
    fails("predict", "--run", str(run), "--ckpt", "best",
          expect="best.pt: not a readable checkpoint (truncated")
    assert (run / "pred.csv").read_text() == before
    torch.save({"weights": 1}, best)
    fails("predict", "--run", str(run), "--ckpt", "best",
          expect="best.pt: not a checkpoint written by this suite")
    assert (run / "pred.csv").read_text() == before


def test_existing_run_is_not_overwritten(data, tmp_path):
    run = tmp_path / "run"
    assert run_cli("hw1", *train(data, run)).returncode == 0
    fails(*train(data, run), expect="already holds a run; continue it with --resume")


def test_diverging_model_gives_no_submission(data, tmp_path):
    run = tmp_path / "run"
    fails(*train(data, run), "--set", "optim.name=sgd", "--set", "optim.lr=1e6",
          "--set", "data.normalize=false", expect="pred.csv: prediction for id", run=run,
          trained=True)
