"""The competition toolkit: folds, fusion, mixup/CutMix, TTA, EMA and checkpoint averaging."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.core.config import build_config, load_config
from common.core.errors import UserError
from common.core.runtime import Salt, derive_seed
from common.data.mix import (
    MixBatch,
    MixConfig,
    classification_loss,
    sample_beta,
)
from common.engine.checkpoint import average_state_dicts, load_checkpoint
from common.engine.fusion import fuse, vote
from common.engine.rundir import RunDir
from common.engine.sections import KFoldConfig
from common.engine.trainer import Callback, Trainer
from common.experiments.finished import average_run, predict_run
from common.experiments.kfold import kfold_run, make_folds, predict_kfold
from common.experiments.pipeline import fit_split, predict_outputs, train_run
from tests.common.test_trainer import Regression, cfg, data, model
from tests.toy import BlobsTask, GroupedBlobsTask, write_blobs

QUIET = ["trainer.print_every_evals=1000000000", "trainer.device=\"cpu\""]


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return write_blobs(tmp_path_factory.mktemp("blobs"))


def blobs_config(blobs, *overrides):
    return load_config(BlobsTask.schema(), None, [
        *QUIET, f'data.dir="{blobs}"', "trainer.epochs=15", "trainer.batch_size=32",
        "optim.lr=0.01", "trainer.monitor=\"valid_acc\"", "trainer.mode=\"max\"", *overrides])


# --------------------------------------------------------------------------- folds
@pytest.mark.parametrize("split", ["kfold", "stratified", "group"])
def test_folds_are_disjoint_cover_everything_and_are_deterministic(split):
    n = 103
    labels = np.arange(n) % 4
    groups = np.arange(n) // 5
    folds = make_folds(n, 5, seed=3, split=split, labels=labels, groups=groups)
    held = np.concatenate([va for _, va in folds])
    assert sorted(held.tolist()) == list(range(n))           # disjoint and covering
    for tr, va in folds:
        assert not set(tr) & set(va) and len(tr) + len(va) == n
    again = make_folds(n, 5, seed=3, split=split, labels=labels, groups=groups)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again, strict=True))
    other = make_folds(n, 5, seed=4, split=split, labels=labels, groups=groups)
    assert any(len(a[1]) != len(b[1]) or (a[1] != b[1]).any()
               for a, b in zip(folds, other, strict=True))
    if split == "group":  # no group straddles two folds
        for _, va in folds:
            others = set(groups) - set(groups[va])
            assert not set(groups[va]) & others
    if split == "stratified":
        for _, va in folds:
            assert np.bincount(labels[va], minlength=4).max() - \
                np.bincount(labels[va], minlength=4).min() <= 1


def test_fold_errors_are_user_errors():
    with pytest.raises(UserError, match="kfold.folds: 1 must be at least 2"):
        build_config({"kfold": KFoldConfig}, {"kfold": {"folds": 1}})   # the key's own rule
    with pytest.raises(UserError, match="no groups"):
        make_folds(10, 2, split="group")
    with pytest.raises(UserError, match="more folds"):
        make_folds(3, 5)


# --------------------------------------------------------------------------- fusion
def test_vote_tie_break_summed_probability_then_lowest_index():
    a = torch.log(torch.tensor([[0.5, 0.4, 0.1]]))    # votes 0
    b = torch.log(torch.tensor([[0.05, 0.9, 0.05]]))  # votes 1; 1-1 tie, class 1 has more prob
    w = torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert vote([a, b], w).tolist() == [1]
    c = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    assert vote([a, b, c], torch.full((3,), 1 / 3, dtype=torch.float64)).tolist() == [0]
    # a perfect tie in votes and summed probability goes to the lowest index
    d = torch.log(torch.tensor([[0.3, 0.6, 0.1]]))
    e = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    assert vote([d, e], w).tolist() == [0]
    assert fuse([d, e], kind="logits", method="vote").argmax(-1).tolist() == [0]
    # weights decide before probability does
    assert fuse([a, b], kind="logits", method="vote", weights=[1, 3]).argmax(-1).tolist() == [1]


def test_fuse_methods():
    x = torch.randn(6, 4)
    y = torch.randn(6, 4)
    assert torch.allclose(fuse([x, x], kind="logits"), x.log_softmax(-1), atol=1e-6)
    assert torch.allclose(fuse([x, y], kind="logits", method="mean-logit"), (x + y) / 2)
    mean_prob = (x.softmax(-1) + 3 * y.softmax(-1)) / 4
    assert torch.allclose(fuse([x, y], kind="logits", weights=[1, 3]).exp(), mean_prob,
                          atol=1e-6)
    r = torch.randn(5)
    assert torch.allclose(fuse([r, 3 * r], kind="values", weights=[1, 1]), 2 * r)
    with pytest.raises(UserError, match="regression"):
        fuse([r, r], kind="values", method="vote")
    with pytest.raises(UserError, match="shape"):
        fuse([x, x[:3]], kind="logits")
    with pytest.raises(UserError, match="one per member"):
        fuse([x, y], kind="logits", weights=[1])


# --------------------------------------------------------------------------- mixup
def test_classification_loss_for_hard_one_hot_and_mixed_targets():
    logits = torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    hard = F.cross_entropy(logits, y)
    assert torch.allclose(classification_loss(logits, F.one_hot(y, 5).float()), hard)
    assert torch.allclose(classification_loss(logits, y), hard)
    mixed = torch.softmax(torch.randn(8, 5), -1)   # -sum_c t_c log softmax_c, batch mean
    by_hand = -(mixed * torch.log_softmax(logits, -1)).sum(-1).mean()
    assert torch.allclose(classification_loss(logits, mixed), by_hand)
    smooth = F.cross_entropy(logits, y, label_smoothing=0.1)
    soft = F.one_hot(y, 5).float() * 0.9 + 0.1 / 5
    assert torch.allclose(classification_loss(logits, soft), smooth, atol=1e-6)


def test_the_one_smoothing_key_reaches_the_mixed_targets():
    """model.label_smoothing smooths hard targets in the loss and the one-hot targets mixup
    makes (by hand: 1 - eps + eps / C on the label, eps / C elsewhere)."""
    from common.experiments.pipeline import make_trainer
    from hw.hw3_food.task import FoodTask

    cfg = load_config(FoodTask.schema(), None, ["model.label_smoothing=0.2",
                                                "mix.mixup_alpha=1e-4", "model.arch=cnn"])
    task = FoodTask(cfg)
    mix = make_trainer(task, torch.nn.Linear(2, 11), None).batch_transform
    assert mix.label_smoothing == 0.2
    _, soft = mix((torch.zeros(3, 2), torch.tensor([0, 5, 10])), epoch=0)
    expected = torch.full((3, 11), 0.2 / 11)
    expected[[0, 1, 2], [0, 5, 10]] = 0.8 + 0.2 / 11
    assert torch.allclose(soft, expected, atol=1e-3)


def test_mixup_with_alpha_near_zero_leaves_the_batch_unchanged():
    torch.manual_seed(0)
    x, y = torch.randn(16, 7), torch.randint(0, 4, (16,))
    mixed_x, soft = MixBatch(MixConfig(mixup_alpha=1e-4), n_classes=4)((x, y), epoch=0)
    assert torch.allclose(mixed_x, x, atol=1e-4)
    assert torch.allclose(soft, F.one_hot(y, 4).float(), atol=1e-4)


def test_mixup_and_cutmix_mix_inputs_and_targets_consistently():
    torch.manual_seed(1)
    # image i is filled with the value i and has label i, so every pixel names its source
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 16, 16)
    y = torch.arange(8)
    mixed_x, soft = MixBatch(MixConfig(mixup_alpha=1.0), n_classes=8)((x, y), epoch=0)
    assert torch.allclose(soft.sum(-1), torch.ones(8))
    assert (soft[y, y] >= 0.5 - 1e-6).all()                  # the original label dominates
    assert torch.allclose(mixed_x[:, 0, 0, 0], soft @ torch.arange(8.0), atol=1e-5)
    assert not torch.allclose(mixed_x, x)
    cut_x, cut_soft = MixBatch(MixConfig(cutmix_alpha=1.0), n_classes=8)((x, y), epoch=0)
    for i in range(8):  # each label weighs exactly the share of pixels it contributed
        share = torch.bincount(cut_x[i, 0].flatten().long(), minlength=8).float() / 256
        assert torch.allclose(cut_soft[i], share, atol=1e-6)
    assert not torch.equal(cut_x, x)
    # switched off from off_epoch on, and regression targets mix as values
    off = MixBatch(MixConfig(mixup_alpha=1.0, off_epoch=3), n_classes=8)
    assert off((x, y), epoch=3)[0] is x
    r = torch.randn(8)
    mx, my = MixBatch(MixConfig(mixup_alpha=1.0))((x.flatten(1), r), epoch=0)
    assert my.shape == r.shape and my.is_floating_point()


def test_mixup_mixes_with_the_drawn_weight_and_stops_at_off_epoch():
    x, y = torch.randn(10, 3), torch.randint(0, 4, (10,))
    mix = MixBatch(MixConfig(mixup_alpha=0.4, off_epoch=2), n_classes=4)
    torch.manual_seed(5)
    mixed_x, soft = mix((x, y), epoch=1)
    torch.manual_seed(5)  # the same draws, by hand: the weight, folded to >= 0.5, the partner
    lam = sample_beta(0.4)
    lam = max(lam, 1 - lam)
    perm = torch.randperm(10)
    assert 0.5 <= lam < 1.0
    assert torch.allclose(mixed_x, lam * x + (1 - lam) * x[perm])
    one_hot = F.one_hot(y, 4).float()
    assert torch.allclose(soft, lam * one_hot + (1 - lam) * one_hot[perm])
    assert not torch.allclose(mixed_x, x)
    same_x, same_y = mix((x, y), epoch=2)
    assert same_x is x and same_y is y


def test_mixup_training_still_learns(blobs):
    config = blobs_config(blobs, "mix.mixup_alpha=0.4")
    task = BlobsTask(config)
    data_ = task.load_train(blobs)
    trainer = fit_split(task, data_, *task.split(data_))
    assert trainer.batch_transform is not None
    assert trainer.evaluate(task.labelled_dataset(data_, task.split(data_)[1]))["acc"] > 0.7
    # train rows carry the soft-target loss only; no training accuracy pretends to be hard
    assert not any(k.startswith("train_") and k != "train_loss" for k in trainer.state.history[0])


# --------------------------------------------------------------------------- TTA
def test_tta_with_zero_views_equals_plain_prediction_and_views_are_seeded(blobs):
    config = blobs_config(blobs, "trainer.epochs=3")
    task = BlobsTask(config)
    data_ = task.load_train(blobs)
    trainer = fit_split(task, data_, *task.split(data_))
    test = task.make_test_dataset(task.load_test(blobs))
    plain = trainer.predict(test)
    assert torch.equal(predict_outputs(task, trainer, test), plain)
    task.config["predict"].tta = 4
    task.config["predict"].tta_plain_weight = 1.0
    assert torch.allclose(predict_outputs(task, trainer, test).exp(), plain.softmax(-1),
                          atol=1e-6)
    task.config["predict"].tta_plain_weight = 0.5
    a = predict_outputs(task, trainer, test)
    b = predict_outputs(task, trainer, test)
    assert torch.equal(a, b) and not torch.allclose(a.exp(), plain.softmax(-1), atol=1e-4)
    # the fusion is w * plain + (1 - w) * mean of the views, each view predicted on its own
    task.config["predict"].tta_plain_weight = 0.25
    views = []
    for view in range(4):
        seed = derive_seed(task.config["trainer"].seed, Salt.TTA, view)
        torch.manual_seed(seed)
        views.append(trainer.predict(task.tta_view(test, view, seed)).softmax(-1))
    expected = 0.25 * plain.softmax(-1) + 0.75 * torch.stack(views).mean(0)
    assert torch.allclose(predict_outputs(task, trainer, test).exp(), expected, atol=1e-6)


# --------------------------------------------------------------------------- EMA
def test_ema_with_decay_zero_equals_the_raw_weights():
    trainer = Trainer(model(), Regression(), cfg(ema=True, ema_decay=0.0))
    trainer.fit(data())
    for raw, ema in zip(trainer.model.state_dict().values(),
                        trainer.eval_model.state_dict().values(), strict=True):
        assert torch.equal(raw, ema)


def test_ema_follows_the_recurrence_computed_by_hand():
    """ema_1 = w_1, then ema_t = d * ema_(t-1) + (1 - d) * w_t after every update t."""
    seen = []

    class Record(Callback):
        def on_step_end(self, trainer):
            seen.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})

    trainer = Trainer(model(), Regression(), cfg(ema=True, ema_decay=0.7, epochs=1,
                                                 batch_size=100), callbacks=[Record()])
    trainer.fit(data(300))
    assert len(seen) == 3
    expected = dict(seen[0])
    for weights in seen[1:]:
        expected = {k: 0.7 * expected[k] + 0.3 * weights[k] for k in weights}
    for key, value in trainer.eval_model.state_dict().items():
        assert torch.allclose(value, expected[key], atol=1e-7), key
    assert not torch.allclose(expected["0.weight"], seen[-1]["0.weight"])


def test_ema_lags_the_raw_weights_and_is_what_gets_evaluated():
    trainer = Trainer(model(), Regression(), cfg(ema=True, ema_decay=0.9, epochs=2))
    trainer.fit(data(), data(100, seed=1))
    raw = trainer.model[0].weight
    assert not torch.allclose(raw, trainer.eval_model[0].weight)
    plain = Trainer(trainer.model, Regression(), cfg())
    assert trainer.evaluate(data(100, seed=1))["mse"] != plain.evaluate(data(100, seed=1))["mse"]


# --------------------------------------------------------------------------- averaging
def test_averaging_identical_checkpoints_returns_that_checkpoint():
    state = model().state_dict()
    state["counter"] = torch.tensor(7)
    avg = average_state_dicts([state, state, state])
    assert avg.keys() == state.keys()
    assert all(torch.equal(avg[k], state[k]) for k in state)
    other = {k: v * 3 if v.is_floating_point() else v for k, v in state.items()}
    mid = average_state_dicts([state, other])
    assert torch.allclose(mid["0.weight"], state["0.weight"] * 2)
    with pytest.raises(UserError, match="different models"):
        average_state_dicts([state, nn.Linear(2, 2).state_dict()])


# --------------------------------------------------------------------------- k-fold, toy task
def test_kfold_stratified_with_ensemble_on_a_classification_task(blobs, tmp_path, capsys):
    config = blobs_config(blobs, "kfold.folds=3", "predict.tta=2")
    result = kfold_run(BlobsTask, config, tmp_path / "kf")
    # every test-time view says so (minutes pass on a CPU): 3 folds x (held-out part, test)
    said = capsys.readouterr().out
    assert said.count("test-time augmentation: view 1 of 2") == 6
    assert said.count("test-time augmentation: view 2 of 2") == 6
    assert result["oof"]["acc"] > 0.7
    folds = (tmp_path / "kf" / "folds.csv").read_text().splitlines()[1:]
    counts = np.bincount([int(line.split(",")[1]) for line in folds])[1:]
    assert counts.tolist() == [200, 200, 200]
    test_y = np.load(blobs / "test.npz")["y"]
    fused = torch.load(tmp_path / "kf" / "test_outputs.pt", weights_only=True)["outputs"]
    assert (fused.argmax(-1).numpy() == test_y).mean() > 0.7
    # predicting the k-fold run again (every fold, then fused) reproduces it; without TTA it
    # differs but agrees on most classes
    assert torch.equal(_repredict(tmp_path / "kf", tta=2), fused)
    plain = _repredict(tmp_path / "kf", tta=0)
    assert not torch.allclose(plain, fused)
    assert (plain.argmax(-1) == fused.argmax(-1)).float().mean() > 0.9


def _repredict(run_dir, tta):
    predict_kfold(BlobsTask, run_dir, tta=tta)
    return torch.load(run_dir / "test_outputs.pt", weights_only=True)["outputs"]


def test_kfold_groups_keep_a_group_in_one_fold(blobs, tmp_path):
    config = blobs_config(blobs, "kfold.folds=3", "trainer.epochs=1")
    kfold_run(GroupedBlobsTask, config, tmp_path / "kf")
    rows = (tmp_path / "kf" / "folds.csv").read_text().splitlines()[1:]
    fold_of = np.array([int(r.split(",")[1]) for r in rows])
    groups = np.load(blobs / "train.npz")["group"]
    assert all(len(set(fold_of[groups == g])) == 1 for g in np.unique(groups))


# --------------------------------------------------------------------------- best vs last
def test_best_and_last_differ_and_each_predicts_with_its_own_weights(blobs, tmp_path):
    """A learning rate that explodes after epoch 3 makes the last weights worse than the best;
    kept checkpoints are the newest and the best, and each prediction uses what it names."""
    config = blobs_config(blobs, "trainer.epochs=6", "sched.name=\"step\"",
                          "sched.step_epochs=3", "sched.gamma=1000",
                          "trainer.keep_checkpoints=1", "trainer.keep_best_checkpoints=1")
    run = RunDir(tmp_path / "run")
    train_run(BlobsTask, config, run.path)
    best, last = load_checkpoint(run.best), load_checkpoint(run.last)
    assert best["trainer"]["step"] < last["trainer"]["step"]
    kept = {load_checkpoint(p)["trainer"]["step"] for p in run.step_checkpoints()}
    assert kept == {best["trainer"]["step"], last["trainer"]["step"]}

    def outputs(path):
        return torch.load(path / "test_outputs.pt", weights_only=True)["outputs"]

    trained = outputs(run.path)                       # train predicts with best.pt
    predict_run(BlobsTask, run.path, ckpt="last", out_dir=tmp_path / "last")
    predict_run(BlobsTask, run.path, ckpt="best", out_dir=tmp_path / "best")
    assert torch.equal(outputs(tmp_path / "best"), trained)
    assert not torch.allclose(outputs(tmp_path / "last"), trained)
    average_run(BlobsTask, run.path, 1, select="best")
    assert torch.equal(outputs(run.path / "average-best1"), trained)
    average_run(BlobsTask, run.path, 1, select="last")
    assert torch.equal(outputs(run.path / "average-last1"), outputs(tmp_path / "last"))


def test_predict_average_trains_then_predicts_with_the_mean_of_the_last_n(blobs, tmp_path):
    """predict.average = 3: train's submission comes from the mean weights of the newest 3
    kept checkpoints, the same as `average --last 3` afterwards; predict --run repeats it; too
    few kept checkpoints is refused before anything is read or written."""
    def outputs(path):
        return torch.load(path / "test_outputs.pt", weights_only=True)["outputs"]

    config = blobs_config(blobs, "trainer.epochs=5", "trainer.keep_checkpoints=3",
                          "predict.average=3")
    run = RunDir(tmp_path / "run")
    train_run(BlobsTask, config, run.path)
    averaged = load_checkpoint(run.checkpoints / "average-last3.pt")
    steps = [load_checkpoint(p)["trainer"]["step"] for p in run.step_checkpoints()]
    assert averaged["averaged"] == [p.name for p in run.step_checkpoints()] and len(steps) == 3
    trained = outputs(run.path)
    predict_run(BlobsTask, run.path, out_dir=tmp_path / "again")
    assert torch.equal(outputs(tmp_path / "again"), trained)
    average_run(BlobsTask, run.path, 3, select="last")
    assert torch.equal(outputs(run.path / "average-last3"), trained)
    predict_run(BlobsTask, run.path, ckpt="last", out_dir=tmp_path / "last")
    assert not torch.allclose(outputs(tmp_path / "last"), trained)
    bad = blobs_config(blobs, "trainer.keep_checkpoints=2", "predict.average=3")
    with pytest.raises(UserError, match="trainer.keep_checkpoints=3"):
        train_run(BlobsTask, bad, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------- fold seeds
def test_kfold_vary_seed_gives_fold_k_the_seed_plus_k_minus_1(blobs, tmp_path):
    outs = {}
    for vary in ("true", "false"):
        config = blobs_config(blobs, "kfold.folds=2", "trainer.epochs=2", "trainer.seed=7",
                              f"kfold.vary_seed={vary}")
        kfold_run(BlobsTask, config, tmp_path / vary)
        for k in (1, 2):
            saved = load_config(BlobsTask.schema(), tmp_path / vary / f"fold-{k}" / "config.toml")
            assert saved["trainer"].seed == (7 + k - 1 if vary == "true" else 7)
            outs[vary, k] = torch.load(tmp_path / vary / f"fold-{k}" / "test_outputs.pt",
                                       weights_only=True)["outputs"]
    assert torch.equal(outs["true", 1], outs["false", 1])      # fold 1: the run's own seed
    assert not torch.allclose(outs["true", 2], outs["false", 2])  # fold 2 trained with seed 8
