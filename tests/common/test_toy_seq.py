"""A toy sequence-to-sequence task on the engine, the shape HW5 takes: reverse digit strings of
varying length with a small Transformer. Dict batches, batches built by a token budget over
length-sorted buckets (LengthBatchSampler), a per-token loss so accumulation weighs
micro-batches by their tokens, and greedy decoding whose exact-match rate is the monitored
metric; predictions are variable-length token lists, put back into dataset order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common.core.config import load_config
from common.core.io import write_text_atomic
from common.data.loading import LengthBatchSampler
from common.engine.optim import OptimConfig
from common.engine.sections import DataConfig
from common.engine.task import Task
from common.engine.trainer import Trainer, TrainerConfig
from common.experiments.pipeline import fit_split

PAD, BOS, EOS, DIGIT0 = 0, 1, 2, 3
VOCAB = DIGIT0 + 10


def write_digits(dest: Path, n_train: int = 3000, n_test: int = 200, longest: int = 6) -> Path:
    rng = np.random.default_rng(0)
    dest.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.txt", n_train), ("test.txt", n_test)):
        lines = ["".join(map(str, rng.integers(0, 10, rng.integers(1, longest + 1))))
                 for _ in range(n)]
        write_text_atomic(dest / name, "\n".join(lines) + "\n")
    return dest


class DigitPairs:
    """Source strings and their reversals, indexed a whole batch at a time into a dict of
    padded tensors; `lengths` feeds the length-bucketed sampler."""

    batched_indexing = True

    def __init__(self, lines: list[str]):
        self.src = [torch.tensor([DIGIT0 + int(c) for c in line]) for line in lines]
        self.lengths = np.array([len(s) + 1 for s in self.src])

    def __len__(self):
        return len(self.src)

    def reference(self, i: int) -> list[int]:
        return self.src[i].flip(0).tolist()

    def __getitem__(self, idx):
        src = [self.src[i] for i in torch.as_tensor(idx).tolist()]
        rev = [s.flip(0) for s in src]
        pad = nn.utils.rnn.pad_sequence
        return {"src": pad(src, batch_first=True, padding_value=PAD),
                "tgt_in": pad([torch.cat([torch.tensor([BOS]), r]) for r in rev],
                              batch_first=True, padding_value=PAD),
                "tgt_out": pad([torch.cat([r, torch.tensor([EOS])]) for r in rev],
                               batch_first=True, padding_value=PAD)}


class Reverser(nn.Module):
    def __init__(self, width: int = 64, layers: int = 2, longest: int = 16):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width, padding_idx=PAD)
        self.pos = nn.Embedding(longest, width)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True),
            layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True),
            layers)
        self.head = nn.Linear(width, VOCAB)

    def _embed(self, tokens):
        return self.embed(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))

    def encode(self, src):
        return self.encoder(self._embed(src), src_key_padding_mask=src == PAD)

    def decode(self, memory, src, tgt_in):
        size = tgt_in.shape[1]
        causal = torch.ones(size, size, dtype=torch.bool, device=tgt_in.device).triu(1)
        out = self.decoder(self._embed(tgt_in), memory, tgt_mask=causal, tgt_is_causal=True,
                                tgt_key_padding_mask=tgt_in == PAD,
                                memory_key_padding_mask=src == PAD)
        return self.head(out)

    def forward(self, src, tgt_in):
        return self.decode(self.encode(src), src, tgt_in)

    @torch.no_grad()
    def greedy(self, src) -> list[list[int]]:
        memory = self.encode(src)
        out = torch.full((len(src), 1), BOS, device=src.device)
        done = torch.zeros(len(src), dtype=torch.bool, device=src.device)
        for _ in range(src.shape[1] + 1):
            nxt = self.decode(memory, src, out)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
            out = torch.cat([out, nxt[:, None]], 1)
            done |= nxt == EOS
            if done.all():
                break
        seqs = []
        for row in out[:, 1:].tolist():
            seqs.append(row[:row.index(EOS)] if EOS in row else row)
        return seqs


@dataclass
class SeqDataConfig(DataConfig):
    max_tokens: int = 256       # padded target tokens per batch


@dataclass
class SeqModelConfig:
    width: int = 64
    layers: int = 2


class ToySeqTask(Task):
    name = "toyseq"
    data_config = SeqDataConfig
    model_config = SeqModelConfig
    output_kind = "tokens"     # variable-length token ids: not fusable

    def load_train(self, data_dir):
        return (Path(data_dir) / "train.txt").read_text().split()

    def load_test(self, data_dir):
        return (Path(data_dir) / "test.txt").read_text().split()

    def labelled_dataset(self, lines, idx):
        return DigitPairs([lines[i] for i in idx])

    def make_datasets(self, lines, train_idx, valid_idx):
        return DigitPairs([lines[i] for i in train_idx]), DigitPairs([lines[i] for i in valid_idx])

    def make_test_dataset(self, lines):
        return DigitPairs(lines)

    def build_model(self):
        cfg = self.config["model"]
        return Reverser(cfg.width, cfg.layers)

    # --- the engine's hooks ------------------------------------------------------------------
    def batch_sampler(self, dataset, *, train, batch_size, seed, drop_last, as_tensor, rank,
                      world):
        return LengthBatchSampler(dataset.lengths, max_tokens=self.config["data"].max_tokens,
                                  shuffle=train, seed=seed, as_tensor=as_tensor, rank=rank,
                                  world=world, even=train)

    def forward(self, model, batch):
        return model(batch["src"], batch["tgt_in"])

    def loss(self, logits, batch):   # the mean over target tokens
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(),
                                           batch["tgt_out"].flatten(), ignore_index=PAD)

    def count(self, batch):
        return (batch["tgt_out"] != PAD).sum()

    def predict_step(self, model, batch):
        return model.greedy(batch["src"])

    def validation_step(self, model, batch):
        references = [[t for t in row if t not in (PAD, EOS)]
                      for row in batch["tgt_out"].tolist()]
        return model.greedy(batch["src"]), references, self.loss(self.forward(model, batch),
                                                                 batch)

    def metrics(self, predictions, references, dataset=None):
        hits = sum(p == r for p, r in zip(predictions, references, strict=True))
        return {"exact": hits / len(references)}

    def write_submission(self, lines, predictions, path):
        text = "".join("".join(str(t - DIGIT0) for t in p) + "\n" for p in predictions)
        write_text_atomic(path, text)
        return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("digits"))


SETTINGS = ["trainer.device=\"cpu\"", "trainer.print_every_evals=1000", "trainer.threads=2",
            "optim.lr=3e-3", "trainer.monitor=\"valid_exact\"", "trainer.mode=\"max\"",
            "data.valid_ratio=0.1"]


def test_reversal_learns_with_token_budgets_and_greedy_exact_match(digits):
    config = load_config(ToySeqTask.schema(), None, [
        *SETTINGS, f'data.dir="{digits}"', "trainer.epochs=6", "trainer.accum_steps=2",
        "sched.name=\"linear\"", "sched.warmup_steps=20"])
    task = ToySeqTask(config)
    lines = task.load_train(digits)
    train_idx, valid_idx = task.split(lines)
    trainer = fit_split(task, lines, train_idx, valid_idx)
    history = trainer.state.history
    assert history[-1]["valid_exact"] > 0.8, history
    assert history[0]["valid_exact"] < history[-1]["valid_exact"]
    assert trainer.state.best == max(row["valid_exact"] for row in history)
    # token budgets: no batch pads past 256 target tokens, and the batch count is fixed
    train, _ = task.make_datasets(lines, train_idx, valid_idx)
    sampler = trainer.sampler(train, train=True)
    for epoch in (0, 5):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == sampler.num_batches()
        assert max(len(b) * train.lengths[b].max() for b in batches) <= 256
        assert sorted(i for b in batches for i in b) == list(range(len(train)))
    # predictions come back in dataset order although batches are length-sorted
    test = task.make_test_dataset(task.load_test(digits))
    predicted = trainer.predict(test)
    model = trainer.eval_model.eval()
    assert predicted[:40] == [model.greedy(test[[i]]["src"])[0] for i in range(40)]
    exact = np.mean([p == test.reference(i) for i, p in enumerate(predicted)])
    assert exact > 0.8


class FixedBatches:
    """Batches given as index lists, the same each epoch."""

    in_order = False

    def __init__(self, batches):
        self.batches, self.start = batches, 0

    def set_epoch(self, epoch, start_batch=0):
        self.start = start_batch

    def num_batches(self):
        return len(self.batches)

    def __len__(self):
        return len(self.batches) - self.start

    def __iter__(self):
        return iter(torch.tensor(b) for b in self.batches[self.start:])


def test_accumulating_two_micro_batches_equals_one_big_batch_by_tokens():
    lines = ["1", "23", "4567", "891", "2345678", "9", "123456", "78"]
    data = DigitPairs(lines)
    short, long = [0, 1, 5, 7], [2, 3, 4, 6]    # 11 vs 25 target tokens, 4 items each

    class Fixed(ToySeqTask):
        def __init__(self, batches):
            self.batches = batches

        def batch_sampler(self, dataset, **kw):
            return FixedBatches(self.batches)

    runs = []
    for batches, accum in (([short + long], 1), ([short, long], 2)):
        torch.manual_seed(0)
        trainer = Trainer(Reverser(32, 1), Fixed(batches), TrainerConfig(
            epochs=1, accum_steps=accum, device="cpu", print_every_evals=10**6),
            optim=OptimConfig(name="sgd", lr=0.5, momentum=0.0))
        trainer.fit(data)
        assert trainer.state.step == 1
        runs.append(trainer.model.state_dict())
    for key, value in runs[0].items():
        assert torch.allclose(value, runs[1][key], atol=1e-6), key


def test_ensemble_and_tta_refuse_token_predictions(digits, tmp_path, capsys):
    from common.cli import main
    from common.experiments.pipeline import dry_run_config, train_run

    config = dry_run_config(load_config(ToySeqTask.schema(), None,
                                        [*SETTINGS, f'data.dir="{digits}"']))
    train_run(ToySeqTask, config, tmp_path / "run")
    saved = torch.load(tmp_path / "run" / "test_outputs.pt", weights_only=True)
    assert saved["kind"] == "tokens" and len(saved["outputs"]) == 200
    capsys.readouterr()
    registry = {"toyseq": lambda: ToySeqTask}
    code = main(registry, ["toyseq", "ensemble", str(tmp_path / "run"), str(tmp_path / "run"),
                           "--out", str(tmp_path / "fused")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "tokens, which cannot be fused" in err[0], err
    assert not (tmp_path / "fused").exists()
    code = main(registry, ["toyseq", "predict", "--run", str(tmp_path / "run"), "--tta", "2",
                           "--force"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot be fused" in err[0], err
