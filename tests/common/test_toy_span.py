"""A toy extractive span task on the engine, the shape HW7 takes: each item is longer than the
model's window, so it is cut into overlapping windows; batches are dicts; the model scores
start and end positions per window; the task fuses the windows of each item into span scores
(output kind "spans", keyed by item) and scores exact match per item. k-fold fuses the folds'
span scores like any other fusable kind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common.core.config import load_config
from common.core.io import write_text_atomic
from common.engine.fusion import fuse
from common.engine.task import Task
from common.experiments.kfold import kfold_run
from common.experiments.pipeline import fit_split

PAD, CLS, OPEN, CLOSE = 0, 1, 2, 3        # the answer lies between OPEN and CLOSE
VOCAB = 32


def write_items(dest: Path, n_train: int = 600, n_test: int = 100) -> Path:
    rng = np.random.default_rng(0)
    dest.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.txt", n_train), ("test.txt", n_test)):
        rows = []
        for _ in range(n):
            length, size = int(rng.integers(20, 41)), int(rng.integers(1, 5))
            tokens = rng.integers(4, VOCAB, length)
            start = int(rng.integers(1, length - size - 1))
            tokens[start - 1], tokens[start + size] = OPEN, CLOSE
            rows.append(f"{start} {start + size - 1} " + " ".join(map(str, tokens)))
        write_text_atomic(dest / name, "\n".join(rows) + "\n")
    return dest


class Windows:
    """Every item cut into windows of `width` tokens every `stride`, each behind a CLS token;
    a window's labels are the answer's positions in it, or (0, 0) when it does not hold the
    whole answer. `item` and `offset` say where each window comes from."""

    batched_indexing = True

    def __init__(self, items: list[tuple[int, int, np.ndarray]], width: int, stride: int):
        self.answers = [(s, e) for s, e, _ in items]
        windows, item, offset, labels = [], [], [], []
        for k, (s, e, tokens) in enumerate(items):
            for at in range(0, max(1, len(tokens) - width + stride), stride):
                piece = tokens[at:at + width]
                windows.append(np.concatenate([[CLS], piece, [PAD] * (width - len(piece))]))
                inside = at <= s and e < at + width
                labels.append((s - at + 1, e - at + 1) if inside else (0, 0))
                item.append(k)
                offset.append(at)
        self.tokens = torch.tensor(np.array(windows), dtype=torch.long)
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.item, self.offset = np.array(item), np.array(offset)

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, idx):
        return {"tokens": self.tokens[idx], "start": self.labels[idx, 0],
                "end": self.labels[idx, 1]}


class Spotter(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width, padding_idx=PAD)
        self.conv = nn.Sequential(nn.Conv1d(width, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv1d(width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(width, 2)

    def forward(self, tokens):
        h = self.conv(self.embed(tokens).transpose(1, 2)).transpose(1, 2)
        start, end = self.head(h).unbind(-1)
        return start, end


@dataclass
class SpanModelConfig:
    width: int = 16            # tokens per window (the CLS token comes on top)
    stride: int = 8
    max_answer: int = 6
    top_k: int = 5


class ToySpanTask(Task):
    name = "toyspan"
    model_config = SpanModelConfig
    output_kind = "spans"

    def _read(self, path: Path):
        items = []
        for line in path.read_text().splitlines():
            s, e, *tokens = map(int, line.split())
            items.append((s, e, np.array(tokens)))
        return items

    def load_train(self, data_dir):
        return self._read(Path(data_dir) / "train.txt")

    def load_test(self, data_dir):
        return self._read(Path(data_dir) / "test.txt")

    def labelled_dataset(self, items, idx):
        cfg = self.config["model"]
        return Windows([items[i] for i in idx], cfg.width, cfg.stride)

    def make_datasets(self, items, train_idx, valid_idx):
        return self.labelled_dataset(items, train_idx), self.labelled_dataset(items, valid_idx)

    def make_test_dataset(self, items):
        return self.labelled_dataset(items, range(len(items)))

    def build_model(self):
        return Spotter()

    # --- the engine's hooks ------------------------------------------------------------------
    def forward(self, model, batch):
        return model(batch["tokens"])

    def loss(self, output, batch):
        start, end = output
        return (nn.functional.cross_entropy(start.float(), batch["start"])
                + nn.functional.cross_entropy(end.float(), batch["end"])) / 2

    def count(self, batch):
        return len(batch["tokens"])

    def predict_output(self, output, batch):
        start, end = output
        return start.log_softmax(-1), end.log_softmax(-1)

    def target(self, batch):
        return None            # answers are per item, in the dataset

    def finalize(self, predictions, dataset):
        """Per item, {(start, end): score} of its best spans over all its windows (a span
        seen by two windows keeps its better score), in item coordinates."""
        cfg = self.config["model"]
        start, end = predictions
        spans: list[dict] = [{} for _ in range(len(dataset.answers))]
        scores = start[:, 1:, None] + end[:, None, 1:]          # (windows, s, e), CLS dropped
        s_idx, e_idx = torch.meshgrid(torch.arange(cfg.width), torch.arange(cfg.width),
                                      indexing="ij")
        valid = (e_idx >= s_idx) & (e_idx - s_idx < cfg.max_answer)
        scores = scores.masked_fill(~valid, -torch.inf).flatten(1)
        best, where = scores.topk(cfg.top_k, dim=1)
        for w in range(len(scores)):
            item, at = int(dataset.item[w]), int(dataset.offset[w])
            for score, flat in zip(best[w].tolist(), where[w].tolist(), strict=True):
                span = (at + flat // cfg.width, at + flat % cfg.width)
                if score > spans[item].get(span, -np.inf):
                    spans[item][span] = score
        return spans

    def metrics(self, spans, targets, dataset=None):
        hits = [max(item, key=item.get) == answer
                for item, answer in zip(spans, dataset.answers, strict=True)]
        return {"exact": float(np.mean(hits))}

    def write_submission(self, items, spans, path):
        best = [max(item, key=item.get) for item in spans]
        write_text_atomic(path, "".join(f"{k},{s},{e}\n" for k, (s, e) in enumerate(best)))
        return path


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    return write_items(tmp_path_factory.mktemp("spans"))


SETTINGS = ["trainer.device=\"cpu\"", "trainer.print_every_evals=1000", "trainer.threads=2",
            "optim.lr=1e-2", "trainer.monitor=\"valid_exact\"", "trainer.mode=\"max\"",
            "trainer.batch_size=64", "trainer.epochs=8"]


def test_windows_are_fused_per_item_and_scored_per_item(items):
    config = load_config(ToySpanTask.schema(), None, [*SETTINGS, f'data.dir="{items}"'])
    task = ToySpanTask(config)
    data = task.load_train(items)
    train_idx, valid_idx = task.split(data)
    valid = task.labelled_dataset(data, valid_idx)
    assert len(valid) > 2 * len(valid_idx)         # several windows per item
    trainer = fit_split(task, data, train_idx, valid_idx)
    history = trainer.state.history
    assert history[-1]["valid_exact"] > 0.9, history
    spans = trainer.predict(valid)
    assert len(spans) == len(valid_idx) and all(isinstance(s, dict) for s in spans)
    # the best weights are what the trainer holds now, scored per item from its windows
    assert trainer.evaluate(valid)["exact"] == trainer.state.best == \
        max(r["valid_exact"] for r in history)


def test_kfold_fuses_span_scores_of_the_folds(items, tmp_path):
    config = load_config(ToySpanTask.schema(), None, [
        *SETTINGS, f'data.dir="{items}"', "kfold.folds=2", "trainer.epochs=4"])
    result = kfold_run(ToySpanTask, config, tmp_path / "kf")
    assert result["oof"]["exact"] > 0.8
    folds = [torch.load(tmp_path / "kf" / f"fold-{k}" / "test_outputs.pt",
                        weights_only=True)["outputs"] for k in (1, 2)]
    fused = torch.load(tmp_path / "kf" / "test_outputs.pt", weights_only=True)
    assert fused["kind"] == "spans" and fused["outputs"] == fuse(folds, kind="spans")
    item = fused["outputs"][0]
    span = next(iter(folds[0][0]))
    other = np.exp(folds[1][0][span]) if span in folds[1][0] else 0.0  # not proposed: 0
    expected = np.log((np.exp(folds[0][0][span]) + other) / 2)  # the mean probability
    assert item[span] == pytest.approx(expected)
    answers = [(s, e) for s, e, _ in ToySpanTask(config).load_test(items)]
    best = [max(spans, key=spans.get) for spans in fused["outputs"]]
    assert np.mean([b == a for b, a in zip(best, answers, strict=True)]) > 0.8
