"""HW8 (made by `new hw8 --kind images`, then changed): the face arrays' readers, the synthetic
validation anomalies, ROC AUC and score fusion against independent references, the demo run
against the course sample, and one-line errors."""

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from common.core.errors import UserError
from common.data.ranking import average_ranks, roc_auc
from common.engine.fusion import fuse
from hw.hw8_anomaly import data
from tests.helpers import ROOT, run_cli

NAME = "hw8"
SAMPLE_DEMO_AUC = 0.4416  # configs/hw8_sample.toml on the demo, measured (README)


def run(*args):
    return run_cli(*args)


def faces(folder: Path, train, test=None) -> Path:
    """Arrays as Kaggle's zip unpacks them: folder/data/*.npy."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    np.save(folder / "data" / data.TRAIN, train)
    np.save(folder / "data" / data.TEST, train[:3] if test is None else test)
    return folder


def test_readers_memory_map_the_real_shapes_and_accept_any_0_255_array(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    loaded = data.load_train(faces(tmp_path / "u8", pixels))   # found in the data/ sub-folder
    assert isinstance(loaded.array, np.memmap) and loaded.array.shape == (5, 64, 64, 3)
    assert loaded.ids == [0, 1, 2, 3, 4] and np.array_equal(loaded.array, pixels)
    as_float = data.load_train(faces(tmp_path / "f32", pixels.astype(np.float32)))
    assert as_float.array.dtype == np.float32          # served as is; the model scales it
    assert data.load_test(tmp_path / "u8", 64).array.shape == (3, 64, 64, 3)


@pytest.mark.parametrize("bad, words", [
    (np.zeros((4, 64, 64), np.uint8), "expected (images, side, side, 3)"),
    (np.zeros((0, 64, 64, 3), np.uint8), "expected (images, side, side, 3)"),
    (np.full((4, 64, 64, 3), 300.0, np.float32), "outside 0..255"),
    (np.full((4, 64, 64, 3), np.nan, np.float32), "outside 0..255"),
    (np.zeros((4, 64, 64, 3), "U1"), "expected uint8"),
])
def test_bad_arrays_name_the_file(tmp_path, bad, words):
    faces(tmp_path, bad, np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(UserError, match="trainingset.npy") as err:
        data.load_train(tmp_path)
    assert words in str(err.value)


def test_unreadable_files_and_a_test_set_of_another_size_are_one_line(tmp_path):
    faces(tmp_path, np.zeros((4, 64, 64, 3), np.uint8), np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(UserError, match="images of 32 pixels"):
        data.load_test(tmp_path, 64)
    (tmp_path / "data" / data.TRAIN).write_bytes(pickle.dumps([1, 2]))  # not an .npy
    with pytest.raises(UserError, match="not a readable .npy"):
        data.load_train(tmp_path)
    np.save(tmp_path / "data" / data.TRAIN, np.array([object()] * 4))  # pickled objects
    with pytest.raises(UserError, match="not a readable .npy"):
        data.load_train(tmp_path)
    with pytest.raises(UserError, match="no trainingset.npy"):
        data.load_train(tmp_path / "data" / "nothing")


def test_roc_auc_and_average_ranks_match_scikit_learn_and_scipy():
    rng = np.random.default_rng(1)
    for _ in range(5):
        scores = rng.integers(0, 20, 300).astype(float)   # many ties
        labels = rng.integers(0, 2, 300)
        assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert np.array_equal(average_ranks(torch.tensor(scores)).numpy(), rankdata(scores))
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75   # the textbook example
    with pytest.raises(UserError, match="both normal"):
        roc_auc([1.0, 2.0], [1, 1])


def test_scores_fuse_by_rank_zscore_or_mean():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([30.0, 10.0, 20.0])
    # ranks / n: a (1/3, 2/3, 1), b (1, 1/3, 2/3) -> the mean, by hand
    assert torch.allclose(fuse([a, b], kind="scores"), torch.tensor([2 / 3, 1 / 2, 5 / 6]))
    z = fuse([a, b], kind="scores", method="zscore")
    # z-scores (sample std 1 and 10): a (-1, 0, 1), b (1, -1, 0) -> the mean
    assert torch.allclose(z, torch.tensor([0.0, -0.5, 0.5]), atol=1e-6)
    assert torch.allclose(fuse([a, b], kind="scores", method="mean"), (a + b) / 2)
    with pytest.raises(UserError, match="rank, zscore, mean"):
        fuse([a, b], kind="scores", method="vote")


def test_synthetic_anomalies_are_seeded_and_differ_from_their_faces(tmp_path):
    rng = np.random.default_rng(2)
    array = rng.integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    rows = np.array([7, 3, 31, 12, 0])
    pairs = data.AnomalyPairs(array, rows, seed=8)
    normal, odd, target = pairs[torch.arange(5)]
    assert normal.shape == odd.shape == (5, 3, 64, 64) and normal.dtype == torch.uint8
    assert torch.equal(normal, torch.from_numpy(array[rows]).permute(0, 3, 1, 2))
    assert torch.equal(target, torch.tensor([[0.0, 1.0]] * 5))
    again = data.AnomalyPairs(array, rows[::-1], seed=8)[torch.arange(5)][1].flip(0)
    assert torch.equal(odd, again)                        # a row's anomaly, in any order
    assert torch.equal(odd[2], pairs[2][1])               # batched or one by one
    assert not torch.equal(odd, data.AnomalyPairs(array, rows, seed=9)[torch.arange(5)][1])
    assert all(not torch.equal(n, o) for n, o in zip(normal, odd, strict=True))
    kinds = {data.ANOMALY_KINDS[int(np.random.default_rng(s).integers(5))] for s in range(60)}
    assert kinds == set(data.ANOMALY_KINDS)                # every kind of the recipe is drawn


@pytest.mark.slow
def test_demo_run_ranks_anomalies_and_beats_the_course_sample(tmp_path):
    result = run(NAME, "train", "--demo", "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    submission = pd.read_csv(tmp_path / "run" / "submission.csv")
    assert list(submission.columns) == ["ID", "score"]
    assert submission["ID"].tolist() == list(range(300))
    assert np.isfinite(submission["score"]).all()
    key = pd.read_csv(ROOT / "data" / "demo" / NAME / data.DEMO_ANSWERS)
    auc = roc_auc_score(key["label"], submission["score"])
    assert auc > 0.6 and auc > SAMPLE_DEMO_AUC + 0.1
    assert f"auc {auc:.4g}" in result.stdout
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["valid_auc"].iloc[-1] > 0.6           # the synthetic-anomaly proxy learns


def test_kfold_fuses_fold_scores_by_rank(tmp_path):
    result = run(NAME, "kfold", "--demo", "--dry-run", "--out", str(tmp_path / "kf"))
    assert result.returncode == 0, result.stderr
    assert "out-of-fold over all 1500 items: auc" in result.stderr
    fused = pd.read_csv(tmp_path / "kf" / "submission.csv")
    folds = [pd.read_csv(tmp_path / "kf" / f"fold-{k}" / "submission.csv")["score"]
             for k in (1, 2, 3)]
    by_hand = np.mean([rankdata(f) / len(f) for f in folds], axis=0)
    assert np.allclose(fused["score"], by_hand, atol=1e-6)


def test_a_bad_file_is_one_line_and_exit_2(tmp_path):
    faces(tmp_path / "bad", np.zeros((4, 64, 64), np.uint8))
    result = run(NAME, "train", "--data", str(tmp_path / "bad"), "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert data.TRAIN in result.stderr and not (tmp_path / "r").exists()


@pytest.mark.parametrize("arch", ["fcn", "conv", "vae", "resae"])
def test_every_model_rebuilds_faces_and_scores_pairs(arch):
    from common.core.config import load_config
    from hw.hw8_anomaly.task import Hw8Task

    config = load_config(Hw8Task.schema(), ROOT / "configs" / "hw8.toml",
                         [f'model.arch="{arch}"', "model.widths=[8, 16, 32]", "model.latent=16"])
    task = Hw8Task(config)
    task.side = 32
    model = task.build_model()
    array = np.random.default_rng(3).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    batch = data.AnomalyPairs(array, np.arange(6), seed=0)[torch.arange(6)]
    output = task.forward(model.train(), batch[:1])
    assert output[0].shape == (6, 3, 32, 32) and output[0].abs().max() <= 1
    task.loss(output, batch).backward()
    assert all(p.grad is not None for p in model.parameters())
    scores, target, _ = task.validation_step(model.eval(), batch)
    assert scores.shape == target.shape == (6, 2) and (scores > 0).all()
    recon, _, x = task.forward(model, batch[:1])   # the score is sqrt(summed squared error)
    assert torch.allclose(scores[:, 0], torch.sqrt(((recon - x) ** 2).sum((1, 2, 3))))


def test_the_vae_kl_is_the_closed_form_of_torch_distributions():
    from torch.distributions import Normal, kl_divergence

    from hw.hw8_anomaly.model import VAE

    model = VAE([4, 6, 8]).eval()
    x = torch.randn(3, 3, 32, 32)
    h = model.encoder(x)
    mean, logvar = model.mean(h), model.logvar(h)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    assert torch.allclose(model(x)[1], expected.flatten(1).sum(1), rtol=1e-5, atol=1e-5)
