"""HW7 task: extractive question answering with a Hugging Face model (any name or local path)
or, offline, a small BERT built from the config over a character vocabulary made from the
training file. Training windows hold the answer at a random position; evaluation windows
overlap; predictions are per-question character spans with probabilities (output kind
"spans"), so runs with different tokenizers fuse in ensembles."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from common.core.config import option
from common.core.errors import UserError
from common.engine.sections import DataConfig
from common.engine.task import Task
from common.experiments.submission import write_submission
from hw.hw7_qa import data as qadata
from hw.hw7_qa import windows as win
from hw.hw7_qa.model import hf_load, pretrained_qa_model, small_bert


@dataclass
class QADataConfig(DataConfig):
    max_length: int = option(193, min=8)          # tokens per window, specials included
    doc_stride: int = option(0, min=0)            # tokens consecutive windows share
    max_question_tokens: int = option(40, min=1)
    train_window: str = option("centred", choices=("random", "centred"))
    negatives: float = option(0.0, min=0.0, max=1.0)  # answerless windows per question
    dev: str = option("valid", choices=("valid", "train"))  # train: dev joins training
    min_char_freq: int = option(1, min=1)         # character vocabulary (model.name = "")


@dataclass
class QAModelConfig:
    name: str = "bert-base-chinese"   # Hugging Face name or local folder; "": small BERT below
    hidden: int = option(256, min=8)
    layers: int = option(4, min=1)
    heads: int = option(4, min=1)
    ff_dim: int = option(1024, min=1)
    dropout: float = option(0.1, min=0.0, below=1.0)
    postprocess: str = option("naive", choices=("best", "naive"))
    n_best: int = option(20, min=1)               # start and end candidates per window
    max_answer_tokens: int = option(30, min=1)
    keep_spans: int = option(10, min=1)           # spans kept per question (for ensembles)


class QATask(Task):
    name = "hw7"
    data_config = QADataConfig
    model_config = QAModelConfig
    submission_name = "result.csv"
    output_kind = "spans"
    higher_is_better = ("em", "coverage")
    demo_answers = qadata.DEMO_ANSWERS

    def __init__(self, config):
        super().__init__(config)
        # fitted state (`fit`)
        self.vocab: list[str] = []   # the characters of the small model (no model.name)
        self.n_train = 0             # questions from hw7_train.json; dev's follow them
        self._tokenizer = None

    # --- tokenizer ----------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            name = self.config["model"].name
            if not name:
                if not self.vocab:
                    raise UserError("hw7: the character vocabulary is unknown; use a "
                                    "task fitted on the training data (Task.fitted)")
                self._tokenizer = win.char_tokenizer(self.vocab)
            else:
                from transformers import AutoTokenizer

                tok = hf_load(AutoTokenizer.from_pretrained, name)
                if not tok.is_fast:
                    raise UserError(f"model.name={name!r}: its tokenizer has no fast version "
                                    "(offsets are needed); choose another model")
                self._tokenizer = tok
        return self._tokenizer

    def _window_args(self) -> dict:
        cfg = self.config["data"]
        return {"max_length": cfg.max_length, "max_question": cfg.max_question_tokens}

    # --- data ---------------------------------------------------------------------------
    def load_train(self, data_dir: Path) -> qadata.QASet:
        train, dev = qadata.load(data_dir, "train"), qadata.load(data_dir, "dev")
        return join_sets(train, dev)

    def fit(self, data: qadata.QASet, train_idx) -> dict:
        """The small model's characters (those of hw7_train.json's paragraphs and questions
        seen data.min_char_freq times), and where dev's questions start."""
        vocab = [] if self.config["model"].name else win.char_vocab(
            data.paragraphs[:data.n_train_paragraphs] + data.questions[:data.n_train],
            self.config["data"].min_char_freq)
        return {"vocab": vocab, "n_train": data.n_train}

    def load_test(self, data_dir: Path) -> qadata.QASet:
        return qadata.load(data_dir, "test")

    def split(self, data: qadata.QASet):
        rows = np.arange(len(data))
        if self.config["data"].dev == "train":
            return rows, rows[:0]
        return rows[:data.n_train], rows[data.n_train:]

    def labelled_dataset(self, data, idx):
        return win.EvalWindows(data, idx, self.tokenizer, doc_stride=self.config["data"]
                               .doc_stride, **self._window_args())

    def make_datasets(self, data, train_idx, valid_idx):
        cfg = self.config["data"]
        train = win.TrainWindows(data, train_idx, self.tokenizer, centred=cfg.train_window ==
                                 "centred", negatives=cfg.negatives,
                                 seed=self.config["trainer"].seed, **self._window_args())
        valid = self.labelled_dataset(data, valid_idx) if len(valid_idx) else None
        return train, valid

    def make_test_dataset(self, data):
        return self.labelled_dataset(data, np.arange(len(data)))

    # --- model --------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        cfg = self.config["model"]
        if cfg.name:
            return pretrained_qa_model(cfg.name)
        return small_bert(cfg, vocab_size=len(self.tokenizer),
                          max_length=self.config["data"].max_length)

    def layer_count(self, model: nn.Module) -> int:
        """The span head's layer: above the embeddings (0) and every encoder layer."""
        return getattr(model.config, "num_hidden_layers", 0) + 1

    def layer_id(self, name: str) -> int | None:
        """Embeddings 0, encoder layer i: i + 1, the span head: None (the top)."""
        if ".embeddings." in name or name.startswith("embeddings."):
            return 0
        found = re.search(r"\.layer\.(\d+)\.", name)
        return int(found.group(1)) + 1 if found else None

    def forward(self, model, batch):
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")
                  if k in batch}
        out = model(**inputs)
        return out.start_logits, out.end_logits

    def loss(self, output, batch):
        start, end = output
        return (nn.functional.cross_entropy(start.float(), batch["start_positions"])
                + nn.functional.cross_entropy(end.float(), batch["end_positions"])) / 2

    def count(self, batch):
        return len(batch["input_ids"])

    def target(self, batch):
        return None  # answers are per question, in the dataset

    def predict_output(self, output, batch):
        return win.top_candidates(*output, batch, self.config["model"].n_best)

    def finalize(self, predictions, dataset: win.EvalWindows):
        cfg = self.config["model"]
        if cfg.postprocess == "naive":
            return win.naive_spans(predictions, dataset, self.tokenizer)
        return win.best_spans(predictions, dataset, max_answer=cfg.max_answer_tokens,
                              keep=cfg.keep_spans)

    def metrics(self, spans, targets, dataset: win.EvalWindows = None):
        got = win.answers(spans, dataset.qa, dataset.rows)
        truth = [dataset.qa.answers[r] for r in dataset.rows]
        return {"em": float(np.mean([g == t for g, t in zip(got, truth, strict=True)])),
                "coverage": float(dataset.recoverable.mean())}

    def write_submission(self, data: qadata.QASet, spans, path: Path) -> Path:
        texts = [qadata.clean_answer(t) for t in win.answers(spans, data, range(len(data)))]
        return write_submission(path, qadata.HEADER, data.ids, np.asarray(texts, dtype=object))

    # --- fitted state ---------------------------------------------------------------------
    def state_dict(self):
        return {"vocab": list(self.vocab), "n_train": self.n_train}

    def load_state_dict(self, state):
        self.vocab = list(state.get("vocab", self.vocab))
        self.n_train = int(state.get("n_train", self.n_train))
        self._tokenizer = None

    @classmethod
    def write_demo_data(cls, dest: Path) -> Path:
        return qadata.write_demo_data(Path(dest))


def join_sets(a: qadata.QASet, b: qadata.QASet) -> qadata.QASet:
    """Two labelled sets as one (b's paragraph ids shifted past a's)."""
    return qadata.QASet(a.path, a.paragraphs + b.paragraphs, a.ids + b.ids,
                        np.concatenate([a.paragraph_ids, b.paragraph_ids + len(a.paragraphs)]),
                        a.questions + b.questions, a.answers + b.answers,
                        np.concatenate([a.starts, b.starts]), np.concatenate([a.ends, b.ends]),
                        n_train=len(a), n_train_paragraphs=len(a.paragraphs))
