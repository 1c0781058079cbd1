"""HW2's tagger: whole utterances in frame-budget batches, every real frame labelled, padding
never counted; checked against plain references (a literal frame gather, torch's packed
bidirectional RNN, each utterance alone) and on the long-context demo."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from common.core.config import load_config
from common.core.errors import UserError
from common.data.loading import LengthBatchSampler
from common.engine.trainer import Trainer
from hw.hw2_phoneme import data as phone
from hw.hw2_phoneme.model import BiRNN, Tagger
from hw.hw2_phoneme.task import PhonemeTask
from tests.helpers import ROOT, run_cli
from tests.hw.hw2.test_hw2 import naive_window, tiny_frames

CPU = str(ROOT / "configs" / "hw2_cpu.toml")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return phone.write_demo_data(tmp_path_factory.mktemp("hw2tag"), n_train=40, n_test=6)


def tagger_config(*overrides, config=CPU):
    return load_config(PhonemeTask.schema(), config, ["model.rnn_hidden=8", *overrides])


@pytest.mark.parametrize("n", [1, 3])
def test_utterance_batches_hold_each_frames_context_and_only_real_labels(n):
    frames = tiny_frames((3, 5, 1, 4))
    idx = frames.frames_of(np.array([1, 2, 3]))     # whole utterances 1..3
    ds = phone.Utterances(frames, idx, n)
    assert ds.lengths.tolist() == [5, 1, 4] and ds.num_frames == 10
    x, lengths, labels = ds[torch.tensor([2, 0])]   # any order of utterances
    assert x.shape == (2, 5, 39 * n) and lengths.tolist() == [4, 5]
    rows = [idx[5 + 1 + t] for t in range(4)] + [idx[t] for t in range(5)]
    assert torch.equal(labels, frames.labels[rows])            # real frames, utterance order
    for b, start in ((0, 5 + 1), (1, 0)):
        for t in range(int(lengths[b])):
            assert torch.equal(x[b, t], naive_window(frames, int(idx[start + t]), n))
    assert not x[0, 4].any()                                   # padding is zeros
    with pytest.raises(UserError, match="whole utterances"):
        phone.Utterances(frames, idx[1:], n)                   # a cut utterance
    with pytest.raises(UserError, match="whole utterances"):
        phone.Utterances(frames, idx[::-1].copy(), n)          # frames out of time order


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_birnn_equals_torchs_packed_bidirectional_rnn(cell):
    """An independent reference: nn.LSTM/GRU(bidirectional) over packed sequences, given the
    same weights, at every real frame of a padded batch."""
    torch.manual_seed(0)
    ours = BiRNN(cell, 6, 5, 2, 0.0).eval()
    ref = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](6, 5, num_layers=2, batch_first=True,
                                                 bidirectional=True)
    with torch.no_grad():
        for layer in range(2):
            for suffix, rnn in (("", ours.forward_rnns[layer]),
                                ("_reverse", ours.backward_rnns[layer])):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(ref, f"{name}_l{layer}{suffix}").copy_(getattr(rnn, f"{name}_l0"))
    lengths = torch.tensor([7, 3, 5])
    x = torch.randn(3, 7, 6) * (torch.arange(7)[None, :, None] < lengths[:, None, None])
    expected, _ = pad_packed_sequence(ref(pack_padded_sequence(
        x, lengths, batch_first=True, enforce_sorted=False))[0], batch_first=True)
    got = ours(x, lengths)
    real = torch.arange(7)[None] < lengths[:, None]
    torch.testing.assert_close(got[real], expected[real], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "conformer"])
def test_padding_never_counts_a_long_and_a_short_utterance_batched_equal_each_alone(cell):
    torch.manual_seed(0)
    cfg = tagger_config(f'model.cell="{cell}"', "model.rnn_layers=2", "model.heads=2",
                        "model.kernel=3", "model.hidden=[16]")
    model = Tagger(cfg["model"], 39).eval()
    long, short = torch.randn(1, 50, 39), torch.randn(1, 9, 39)
    batch = torch.zeros(2, 50, 39)
    batch[0], batch[1, :9] = long[0], short[0]
    with torch.no_grad():
        together = model(batch, torch.tensor([50, 9]))
        alone = torch.cat([model(long, torch.tensor([50])), model(short, torch.tensor([9]))])
    assert together.shape == (59, 41)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_frame_budget_batches_cover_each_utterance_once_in_a_seeded_order(demo):
    frames = phone.load_split(demo, "train")
    ds = phone.Utterances(frames, np.arange(frames.num_frames))
    lengths = ds.lengths.numpy()
    train = LengthBatchSampler(lengths, max_tokens=3000, batch_size=8, shuffle=True, seed=5)
    train.set_epoch(2)
    batches = list(train)
    assert sorted(i for b in batches for i in b) == list(range(len(ds)))
    assert all(len(b) <= 8 and (len(b) == 1 or len(b) * lengths[b].max() <= 3000)
               for b in batches)
    again = LengthBatchSampler(lengths, max_tokens=3000, batch_size=8, shuffle=True, seed=5)
    again.set_epoch(2)
    assert list(again) == batches                       # a pure function of (seed, epoch)
    again.set_epoch(3)
    assert list(again) != batches
    # evaluation: packed in dataset order, so predictions join in the split's frame order
    evaluation = LengthBatchSampler(lengths, max_tokens=3000, batch_size=8, shuffle=False,
                                    sort=False)
    assert evaluation.in_order and [i for b in evaluation for i in b] == list(range(len(ds)))
    assert not LengthBatchSampler(lengths, max_tokens=3000, shuffle=False).in_order


def test_predictions_are_each_utterance_alone_in_the_splits_frame_order(demo):
    """The engine's batched prediction (several utterances a batch) against the model run on
    each utterance alone, joined in test_split.txt order: masking and order together."""
    task = PhonemeTask(tagger_config(f'data.dir="{demo}"', "data.max_frames=2500",
                                     'trainer.device="cpu"'))
    frames = task.load_test(demo)
    ds = task.make_test_dataset(frames)
    torch.manual_seed(0)
    model = task.build_model()
    trainer = Trainer(model, task, task.config["trainer"])
    sampler = trainer.sampler(ds, train=False)
    assert max(len(b) for b in sampler) > 1                      # batches of several
    got = trainer.predict(ds)
    assert got.shape == (frames.num_frames, 41)
    with torch.no_grad():
        model.eval()
        alone = torch.cat([model(*ds[torch.tensor([u])][:2]) for u in range(len(ds))])
    torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-4)
    # accumulation and DDP weigh a batch by its real frames, not its utterances
    train = task.load_train(demo)
    batch = task.labelled_dataset(train, train.frames_of(np.arange(2)))[torch.tensor([0, 1])]
    assert int(task.count(batch)) == len(batch[-1]) == int(batch[1].sum()) > 2 * len(batch[0])
    # loss and accuracy count real frames only: the same as each frame counted by hand
    valid = task.labelled_dataset(train, train.frames_of(np.arange(len(train.ids))))
    metrics = trainer.evaluate(valid)
    logits = torch.cat([model(*valid[torch.tensor([u])][:2]) for u in range(len(valid))])
    assert metrics["acc"] == pytest.approx(
        (logits.argmax(-1) == train.labels).float().mean().item(), abs=1e-6)
    assert metrics["loss"] == pytest.approx(nn.functional.cross_entropy(
        logits, train.labels, label_smoothing=0.1).item(), rel=1e-4)


def test_a_killed_tagger_run_resumes_exactly(demo, tmp_path):
    from tests.common.test_resume import kill_and_resume

    overrides = [f'data.dir="{demo}"', "model.rnn_hidden=8", "data.max_frames=1500",
                 "trainer.epochs=2", "trainer.accum_steps=2", "trainer.ckpt_every_steps=3",
                 "model.time_mask=10", "model.freq_mask=4", "model.dropout=0.2",
                 'trainer.device="cpu"']
    a, b = kill_and_resume("hw.hw2_phoneme.task:PhonemeTask", CPU, overrides, tmp_path, 7, 6)
    assert a["trainer"]["step"] == b["trainer"]["step"] > 7
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_train_and_kfold_with_the_tagger_write_valid_submissions(demo, tmp_path):
    test = phone.load_split(demo, "test")
    for command, extra in (("train", []), ("kfold", ["--folds", "2"])):
        out = tmp_path / command
        done = run_cli("hw2", command, "--data", str(demo), "--config", CPU, "--out", str(out),
                       "--dry-run", *extra, "--set", "model.rnn_hidden=8")
        assert done.returncode == 0, done.stderr
        lines = (out / "prediction.csv").read_text().splitlines()
        assert lines[0] == "Id,Class" and len(lines) == test.num_frames + 1
        assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(test.num_frames))
    oof = torch.load(tmp_path / "kfold" / "oof.pt", weights_only=True)
    train = phone.load_split(demo, "train")
    assert torch.equal(oof["targets"], train.labels)     # out-of-fold frames back in order
    mixed = run_cli("hw2", "train", "--data", str(demo), "--config", CPU, "--out",
                    str(tmp_path / "mix"), "--dry-run", "--set", "mix.mixup_alpha=0.2")
    assert mixed.returncode == 2 and "whole utterances" in mixed.stderr
    assert not (tmp_path / "mix").exists()


def test_demo_data_of_an_older_generator_is_written_again(tmp_path):
    dest = tmp_path / "demo"
    assert run_cli("hw2", "demo-data", "--dest", str(dest)).returncode == 0
    labels = dest / "libriphone" / "train_labels.txt"
    fresh = labels.read_text()
    labels.write_text("stale\n")
    (dest / ".complete").write_text("demo data complete\n")   # version 1's marker
    done = run_cli("hw2", "demo-data", "--dest", str(dest))
    assert done.returncode == 0 and "older generator" in done.stderr + done.stdout
    assert labels.read_text() == fresh


def test_the_benchs_multiply_adds_per_frame_match_a_hand_count():
    """scripts/bench/hw2_tagger.py's counts against the layer shapes written out by hand (the
    issue's 'about 344 M' and 'about 8.4 M for the same LSTM once over the utterance')."""
    from tests.common.test_bench_gpu import load_bench

    bench = load_bench("hw2_tagger")
    lstm = 2 * 4 * 384 * (39 + 384) + 2 * (2 * 4 * 384 * (768 + 384))   # 3 layers, 2 ways
    head = 768 * 512 + 512 * 41
    assert bench.macs_per_frame(bench.config("hw2")) == lstm + head
    assert bench.macs_per_frame(bench.config("hw2_window")) == 41 * lstm + head
    assert bench.macs_per_frame(bench.config("hw2_sample")) == 39 * 256 + 256 * 256 + 256 * 41
    gru = bench.config("hw2_cpu", 'model.cell="gru"')
    assert bench.macs_per_frame(gru) == 2 * 3 * 64 * (39 + 64) + 2 * 3 * 64 * (128 + 64) + 128 * 41
    # the FLOP counter agrees where it can count (no RNNs): the MLP recipes
    assert bench.counted_macs(bench.config("hw2_strong")) == pytest.approx(
        bench.macs_per_frame(bench.config("hw2_strong")), rel=1e-6)


@pytest.mark.parametrize("bad, says", [("model.heads=3", "model.heads=3: attention's width 128"),
                                       ("model.kernel=4", "model.kernel=4 must be odd")])
def test_a_conformer_that_cannot_be_built_is_one_line(demo, tmp_path, bad, says):
    done = run_cli("hw2", "train", "--data", str(demo), "--config", CPU, "--out",
                   str(tmp_path / "run"), "--dry-run", "--set", 'model.cell="conformer"',
                   "--set", bad)
    lines = [line for line in done.stderr.splitlines() if line.strip()
             and not line.startswith("loading")]
    assert done.returncode == 2 and len(lines) == 1 and says in lines[0], done.stderr
    assert not (tmp_path / "run").exists()
