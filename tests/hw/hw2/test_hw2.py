"""HW2: reading libriphone, frame windows, the utterance split, submissions, the recipes."""

import random
import shutil

import numpy as np
import pytest
import torch

from common.core.config import load_config
from common.core.errors import UserError
from common.experiments.kfold import make_folds
from common.experiments.pipeline import fit_split
from hw.hw2_phoneme import data as phone
from hw.hw2_phoneme.task import PhonemeTask, split_utterances
from tests.helpers import ROOT, run_cli


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return phone.write_demo_data(tmp_path_factory.mktemp("hw2demo"))


def tiny_frames(lengths=(3, 4, 1)):
    offsets = torch.tensor([0, *np.cumsum(lengths)])
    feats = torch.arange(int(offsets[-1]) * 39, dtype=torch.float32).view(-1, 39)
    labels = torch.arange(int(offsets[-1])) % 41
    return phone.Frames([f"u{i}" for i in range(len(lengths))], feats, offsets, labels, ROOT)


def naive_window(frames, f, n):
    """The course's definition, written as plainly as possible."""
    u = int(np.searchsorted(frames.offsets.numpy(), f, side="right") - 1)
    start, end = int(frames.offsets[u]), int(frames.offsets[u + 1])
    rows = [min(max(f + r, start), end - 1) for r in range(-(n // 2), n // 2 + 1)]
    return torch.cat([frames.feats[r] for r in rows])


@pytest.mark.parametrize("n", [1, 3, 5, 11])
def test_windows_match_the_course_definition(n):
    frames = tiny_frames()
    ds = phone.FrameWindows(frames, np.arange(frames.num_frames), n)
    x, y = ds[torch.arange(frames.num_frames)]
    assert x.shape == (frames.num_frames, 39 * n)
    for f in range(frames.num_frames):
        assert torch.equal(x[f], naive_window(frames, f, n)), f
    assert torch.equal(y, frames.labels)
    # the sequence view holds the same numbers, frames in time order
    seq = phone.FrameWindows(frames, np.arange(frames.num_frames), n, flat=False)
    assert torch.equal(seq[torch.arange(frames.num_frames)][0].flatten(1), x)
    with pytest.raises(UserError, match="odd"):
        phone.FrameWindows(frames, np.arange(3), 4)


def test_split_is_the_courses_utterance_split():
    train, valid = split_utterances(4286, 0.2, 1337)
    assert len(train) == 3428 and len(valid) == 858
    order = list(range(4286))
    random.seed(1337)
    random.shuffle(order)
    assert train.tolist() == sorted(order[:3428])


def test_loading_the_demo_and_kaggle_nesting(demo, tmp_path):
    frames = phone.load_split(demo, "train")
    ids = (demo / "libriphone" / "train_split.txt").read_text().split()
    assert frames.ids == ids and frames.feats.shape == (frames.num_frames, 39)
    assert frames.labels.shape == (frames.num_frames,) and int(frames.labels.max()) <= 40
    lengths = frames.lengths()
    assert int(lengths.min()) >= 139 and int(lengths.max()) <= 998
    nested = tmp_path / "kaggle"
    shutil.copytree(demo / "libriphone", nested / "libriphone" / "libriphone")
    again = phone.load_split(nested, "test")
    assert again.num_frames == phone.load_split(demo, "test").num_frames

    task = PhonemeTask(load_config(PhonemeTask.schema()))
    train_idx, valid_idx = task.split(frames)
    utt = frames.utterance_of_frame()
    assert not set(utt[train_idx]) & set(utt[valid_idx])
    assert len(train_idx) + len(valid_idx) == frames.num_frames
    folds = make_folds(frames.num_frames, 3, groups=task.fold_groups(frames))
    for _, held_out in folds:  # k-fold keeps every utterance in one fold
        assert not set(utt[held_out]) & set(np.delete(utt, held_out))


def broken_copy(demo, tmp_path):
    dest = tmp_path / "broken" / "libriphone"
    shutil.copytree(demo / "libriphone", dest)
    return dest


def test_bad_files_name_the_utterance_and_file(demo, tmp_path):
    root = broken_copy(demo, tmp_path)
    first = (root / "train_split.txt").read_text().split()[0]
    feat = root / "feat" / "train" / f"{first}.pt"
    torch.save(torch.zeros(10, 40), feat)
    with pytest.raises(UserError, match=rf"{first}.pt: utterance {first} must be a \(T, 39\)"):
        phone.load_split(root.parent, "train")
    torch.save(torch.zeros(10, 39), feat)
    with pytest.raises(UserError, match=rf"utterance {first} has 10 frames but \d+ labels"):
        phone.load_split(root.parent, "train")
    nan = torch.zeros(10, 39)
    nan[7, 3] = float("nan")
    torch.save(nan, feat)  # one NaN made every loss NaN and every prediction class 0
    with pytest.raises(UserError, match=rf"{first}.pt: utterance {first} frame 7 holds NaN"):
        phone.load_split(root.parent, "train")
    # the labels lists as Notepad saves them: a byte-order mark before the first id
    for name in ("train_split.txt", "train_labels.txt"):
        (root / name).write_bytes(b"\xef\xbb\xbf" + (root / name).read_bytes())
    assert phone.read_ids(root / "train_split.txt")[0] == first
    assert first in phone.read_labels(root / "train_labels.txt")
    feat.unlink()
    with pytest.raises(UserError, match=rf"{first}.pt: missing feature file"):
        phone.load_split(root.parent, "train")
    labels = root / "train_labels.txt"
    labels.write_text(labels.read_text().replace(f"{first} 0 ", f"{first} 41 ", 1))
    with pytest.raises(UserError, match=rf"line 1 \(utterance {first}\): labels must lie in 0..40"):
        phone.load_split(root.parent, "train")


def test_cli_bad_data_is_one_line_and_exit_2(demo, tmp_path):
    root = broken_copy(demo, tmp_path)
    first = (root / "test_split.txt").read_text().split()[0]
    (root / "feat" / "test" / f"{first}.pt").write_bytes(b"not a tensor")
    result = run_cli("hw2", "train", "--data", str(root.parent), "--out", str(tmp_path / "run"),
                     "--config", str(ROOT / "configs" / "hw2_sample.toml"), "--dry-run")
    lines = [line for line in result.stderr.splitlines() if line.strip()
             and not line.startswith("loading")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"{first}.pt: unreadable feature file for utterance {first}" in lines[0]
    assert not (tmp_path / "run").exists()


def test_dry_run_writes_a_complete_submission(demo, tmp_path):
    result = run_cli("hw2", "kfold", "--data", str(demo), "--out", str(tmp_path / "kf"),
                     "--config", str(ROOT / "configs" / "hw2_sample.toml"), "--folds", "2",
                     "--dry-run", "--set", "data.concat_nframes=5")
    assert result.returncode == 0, result.stderr
    test = phone.load_split(demo, "test")
    lines = (tmp_path / "kf" / "prediction.csv").read_text().splitlines()
    assert lines[0] == "Id,Class" and len(lines) == test.num_frames + 1
    ids = [int(line.split(",")[0]) for line in lines[1:]]
    classes = [int(line.split(",")[1]) for line in lines[1:]]
    assert ids == list(range(test.num_frames)) and 0 <= min(classes) and max(classes) <= 40
    outputs = torch.load(tmp_path / "kf" / "test_outputs.pt", weights_only=True)["outputs"]
    assert outputs.shape == (test.num_frames, 41) and outputs.std(0).min() > 0  # per frame


def valid_acc(demo, config, *overrides):
    config = load_config(PhonemeTask.schema(), ROOT / "configs" / config, [
        f'data.dir="{demo}"', "trainer.print_every_evals=1000000000", *overrides])
    task = PhonemeTask(config)
    frames = task.load_train(demo)
    train_idx, valid_idx = task.split(frames)
    trainer = fit_split(task, frames, train_idx, valid_idx)
    return trainer.evaluate(task.labelled_dataset(frames, valid_idx))["acc"]


@pytest.mark.slow
def test_wider_windows_the_window_rnn_and_the_tagger_each_beat_the_one_before(tmp_path):
    """The demo's labels hang on a marker phone often 30+ frames back: a wider window sees
    more of them, the tagger sees every one."""
    # a smaller demo (100 training utterances) keeps this under a minute on two CPU cores
    demo = phone.write_demo_data(tmp_path / "small", n_train=100, n_test=5)
    sample = valid_acc(demo, "hw2_sample.toml", "trainer.epochs=3", "optim.lr=1e-3")
    wide = valid_acc(demo, "hw2_sample.toml", "trainer.epochs=3", "optim.lr=1e-3",
                     "data.concat_nframes=11")
    rnn = valid_acc(demo, "hw2_window.toml", "trainer.epochs=3", "model.rnn_hidden=48",
                    "model.rnn_layers=1", "model.hidden=[64]", "optim.lr=3e-3",
                    "sched.warmup_steps=0", "trainer.batch_size=256", "data.concat_nframes=15")
    tagger = valid_acc(demo, "hw2_cpu.toml", "trainer.epochs=12", "data.max_frames=2000")
    print(f"demo valid acc: n=1 MLP {sample:.3f}, n=11 MLP {wide:.3f}, BiLSTM n=15 {rnn:.3f}, "
          f"tagger {tagger:.3f}")
    assert sample > 0.15                 # beyond chance (1/41) but blind to context
    assert wide > sample + 0.15
    assert rnn > wide + 0.01
    assert tagger > rnn + 0.1            # context beyond any window
