"""HW7 tokenisation: a character vocabulary for offline models, the question truncated to a
token budget, evaluation windows from the tokenizer's own overflow handling (overlap
`doc_stride`), and training windows that contain the answer at a random position (or centred,
as the course sample did), seeded per (seed, epoch, question); postprocessing back to
character spans of the original paragraph."""

from __future__ import annotations

import tempfile
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from common.core.errors import UserError
from common.core.runtime import hashed_uniform
from hw.hw7_qa.data import QASet

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
NEGATIVE_SALT = 104729   # the epoch offset of the stream that picks negative windows' questions


# --------------------------------------------------------------------------- tokenizers
def char_vocab(texts, min_freq: int = 1) -> list[str]:
    """Special tokens, every character seen at least min_freq times, and its word-piece
    continuation ("##c") for characters BERT's pre-tokenizer groups into words (digits,
    Latin letters), so that every character is a token with its own offsets."""
    counts = Counter(c for t in texts for c in t if not c.isspace())
    chars = sorted(c for c, n in counts.items() if n >= min_freq)
    pieces = [f"##{c}" for c in chars if not unicodedata.name(c, "").startswith("CJK")]
    return SPECIALS + chars + pieces


def char_tokenizer(vocab: list[str]):
    """A fast BERT tokenizer over `vocab` (offsets, overflow windows), built offline."""
    import inspect

    from transformers import BertTokenizerFast

    options = dict(do_lower_case=False, tokenize_chinese_chars=True, strip_accents=False)
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:  # transformers 5
        return BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, **options)
    with tempfile.TemporaryDirectory() as tmp:  # transformers 4: from a vocab.txt
        path = Path(tmp) / "vocab.txt"
        path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
        return BertTokenizerFast(vocab_file=str(path), **options)


class Layout:
    """Where a tokenizer puts its special tokens around (question, context): the ids before,
    between and after, and the token type of each part, found with a probe pair."""

    def __init__(self, tokenizer):
        enc = tokenizer("a", "b")  # one token each, whatever the vocabulary
        ids, seq = enc["input_ids"], enc.sequence_ids(0)
        types = enc.get("token_type_ids", [0] * len(ids))
        ia, ib = seq.index(0), seq.index(1)
        if seq.count(0) != 1 or seq.count(1) != 1:
            raise UserError("this tokenizer splits a single letter; it cannot be used for hw7")
        self.before, self.between, self.after = ids[:ia], ids[ia + 1:ib], ids[ib + 1:]
        self.type_a, self.type_b = types[ia], types[ib]
        self.extra = len(ids) - 2
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def context_start(self, question_len: int) -> int:
        return len(self.before) + question_len + len(self.between)

    def build(self, question: list[int], context: list[int]) -> tuple[list[int], list[int]]:
        ids = self.before + question + self.between + context + self.after
        head = len(self.before) + len(question) + len(self.between)
        return ids, [self.type_a] * head + [self.type_b] * (len(ids) - head)


def truncate_questions(tokenizer, questions: list[str], max_tokens: int) -> list[str]:
    """Each question cut after its max_tokens-th token (by character offsets)."""
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    return [q if len(off) <= max_tokens else q[:off[max_tokens - 1][1]]
            for q, off in zip(questions, enc["offset_mapping"], strict=True)]


def token_span(offsets, start: int, end: int) -> tuple[int, int] | None:
    """The tokens (first, last) covering characters [start, end), or None."""
    first = next((t for t, (a, b) in enumerate(offsets) if b > start), None)
    last = next((t for t in range(len(offsets) - 1, -1, -1) if offsets[t][0] < end), None)
    if first is None or last is None or last < first:
        return None
    return first, last


def check_settings(max_length: int, doc_stride: int, max_question: int, extra: int) -> int:
    """The smallest context part a window can have; settings that leave none are an error."""
    room = max_length - max_question - extra
    if room < 1 or doc_stride >= room:
        raise UserError(f"data.max_length={max_length}, data.max_question_tokens={max_question}, "
                        f"data.doc_stride={doc_stride}: a window keeps {room} context tokens "
                        "after the question; raise max_length or lower the question budget "
                        "and the overlap (doc_stride must be below that)")
    return room


# --------------------------------------------------------------------------- evaluation windows
class EvalWindows:
    """Every question of `rows` cut into windows by the tokenizer's overflow handling (each
    window: question, then `max_length` minus the question of the context, consecutive
    windows sharing `doc_stride` tokens). Labelled sets carry per-window targets (the answer's
    positions when the window holds it whole, else the first token) and per question whether
    any window can represent its answer exactly (`recoverable`)."""

    batched_indexing = True
    in_order = True

    def __init__(self, qa: QASet, rows, tokenizer, *, max_length: int, doc_stride: int,
                 max_question: int):
        self.qa, self.rows = qa, np.asarray(rows, dtype=np.int64)
        layout = Layout(tokenizer)
        check_settings(max_length, doc_stride, max_question, layout.extra)
        questions = truncate_questions(tokenizer, [qa.questions[r] for r in self.rows],
                                       max_question)
        contexts = [qa.context(r) for r in self.rows]
        enc = tokenizer(questions, contexts, truncation="only_second", max_length=max_length,
                        stride=doc_stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True, padding="max_length")
        n = len(enc["input_ids"])
        self.question = np.asarray(enc["overflow_to_sample_mapping"], dtype=np.int64)
        self.input_ids = torch.tensor(enc["input_ids"], dtype=torch.long)
        self.attention = torch.tensor(enc["attention_mask"], dtype=torch.long)
        self.token_types = torch.tensor(enc["token_type_ids"], dtype=torch.long) \
            if "token_type_ids" in enc else None
        self.offsets = np.full((n, max_length, 2), -1, dtype=np.int32)
        targets = np.zeros((n, 2), dtype=np.int64)
        self.recoverable = np.zeros(len(self.rows), dtype=bool)
        for w in range(n):
            seq = enc.sequence_ids(w)
            ctx = [t for t, s in enumerate(seq) if s == 1]
            if not ctx:  # an empty paragraph
                continue
            self.offsets[w, ctx] = np.asarray(enc["offset_mapping"][w])[ctx]
            if not qa.labelled:
                continue
            k = self.question[w]
            r = self.rows[k]
            span = token_span([tuple(self.offsets[w, t]) for t in ctx], qa.starts[r], qa.ends[r])
            if span is None or not (self.offsets[w, ctx[0], 0] <= qa.starts[r]
                                    and qa.ends[r] <= self.offsets[w, ctx[-1], 1]):
                continue
            s, e = ctx[span[0]], ctx[span[1]]
            targets[w] = (s, e)
            text = contexts[k][self.offsets[w, s, 0]:self.offsets[w, e, 1]]
            self.recoverable[k] |= text == qa.answers[r]
        self.context_mask = torch.from_numpy(self.offsets[:, :, 0] >= 0)
        self.targets = torch.from_numpy(targets)
        self.lengths = self.attention.sum(1)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, idx) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(idx).reshape(-1)
        width = int(self.lengths[idx].max())
        batch = {"input_ids": self.input_ids[idx, :width],
                 "attention_mask": self.attention[idx, :width],
                 "context_mask": self.context_mask[idx, :width],
                 "start_positions": self.targets[idx, 0], "end_positions": self.targets[idx, 1]}
        if self.token_types is not None:
            batch["token_type_ids"] = self.token_types[idx, :width]
        return batch


def answers(spans: list[dict], qa: QASet, rows) -> list[str]:
    """The best span of each question (row of qa) as text: a (start, end) key is cut from the
    original paragraph by character offsets; a text key (the naive rule's) is taken as is."""
    out = []
    for row, found in zip(rows, spans, strict=True):
        key = max(found, key=found.get) if found else ""
        out.append(key if isinstance(key, str) else qa.context(row)[key[0]:key[1]])
    return out


# --------------------------------------------------------------------------- training windows
class TrainWindows:
    """One window per question per epoch that holds the whole answer: its position random
    (`centred`: the answer in the middle, the course's way) as a pure function of (seed, epoch,
    question); plus `negatives` x questions windows without the answer, targeting the first
    token. Questions whose answer cannot fit a window are left out (`skipped`)."""

    batched_indexing = True

    def __init__(self, qa: QASet, rows, tokenizer, *, max_length: int, max_question: int,
                 centred: bool = False, negatives: float = 0.0, seed: int = 0):
        self.layout = Layout(tokenizer)
        check_settings(max_length, 0, max_question, self.layout.extra)
        rows = np.asarray(rows, dtype=np.int64)
        questions = truncate_questions(tokenizer, [qa.questions[r] for r in rows], max_question)
        q_ids = tokenizer(questions, add_special_tokens=False)["input_ids"]
        pids = sorted({int(qa.paragraph_ids[r]) for r in rows})
        enc = tokenizer([qa.paragraphs[p] for p in pids], add_special_tokens=False,
                        return_offsets_mapping=True)
        para = {p: (ids, off) for p, ids, off in
                zip(pids, enc["input_ids"], enc["offset_mapping"], strict=True)}
        self.items: list[tuple[list[int], list[int], int, int]] = []
        self.skipped = 0
        for r, q in zip(rows, q_ids, strict=True):
            ids, off = para[int(qa.paragraph_ids[r])]
            span = token_span(off, qa.starts[r], qa.ends[r])
            room = max_length - len(q) - self.layout.extra
            if span is None or span[1] - span[0] + 1 > room:
                self.skipped += 1
                continue
            self.items.append((q, ids, *span))
        self.max_length, self.centred, self.seed, self.epoch = max_length, centred, seed, 0
        self.n_negative = int(round(negatives * len(self.items)))

    def __len__(self) -> int:
        return len(self.items) + self.n_negative

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _window(self, k: int, u: float, negative: bool) -> tuple[int, bool]:
        """(first context token, holds the answer) of item k's window."""
        q, ids, s, e = self.items[k]
        room = self.max_length - len(q) - self.layout.extra
        last = max(0, len(ids) - room)                 # the last possible first token
        lo, hi = max(0, e - room + 1), min(s, last)    # windows holding the whole answer
        if negative:
            outside = [x for x in (range(0, lo), range(hi + 1, last + 1)) if len(x)]
            total = sum(len(x) for x in outside)
            if total:
                pick = int(u * total)
                for x in outside:
                    if pick < len(x):
                        return x[pick], False
                    pick -= len(x)
        if self.centred:
            return int(np.clip((s + e + 1) // 2 - room // 2, lo, hi)), True
        return lo + int(u * (hi - lo + 1)), True

    def __getitem__(self, idx) -> dict[str, torch.Tensor]:
        idx = np.asarray(torch.as_tensor(idx).reshape(-1), dtype=np.int64)
        n = len(self.items)
        u = hashed_uniform(self.seed, self.epoch, idx)
        negative = idx >= n
        which = idx.copy()
        if negative.any():  # the negatives' questions change every epoch
            pick = hashed_uniform(self.seed, self.epoch + NEGATIVE_SALT, idx[negative])
            which[negative] = np.minimum((pick * n).astype(np.int64), n - 1)
        rows, types, targets = [], [], []
        for k, uk, neg in zip(which, u, negative, strict=True):
            q, ids, s, e = self.items[k]
            room = self.max_length - len(q) - self.layout.extra
            first, holds = self._window(int(k), float(uk), bool(neg))
            seq, tt = self.layout.build(q, ids[first:first + room])
            at = self.layout.context_start(len(q)) - first
            targets.append((s + at, e + at) if holds else (0, 0))
            rows.append(seq)
            types.append(tt)
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), self.layout.pad, dtype=torch.long)
        token_types = torch.zeros((len(rows), width), dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (seq, tt) in enumerate(zip(rows, types, strict=True)):
            input_ids[i, :len(seq)] = torch.tensor(seq)
            token_types[i, :len(seq)] = torch.tensor(tt)
            attention[i, :len(seq)] = 1
        target = torch.tensor(targets, dtype=torch.long)
        return {"input_ids": input_ids, "token_type_ids": token_types,
                "attention_mask": attention, "start_positions": target[:, 0],
                "end_positions": target[:, 1]}


# --------------------------------------------------------------------------- postprocessing
def top_candidates(start: torch.Tensor, end: torch.Tensor, batch: dict, n_best: int) -> dict:
    """Per window, the n_best start and end positions inside the context part by their
    log-probability in the window (-inf where a window has fewer), what the course's naive
    rule takes (argmax start and end logits over the whole window) and the first token's
    null score."""
    ctx, live = batch["context_mask"], batch["attention_mask"].bool()
    start, end = start.float(), end.float()
    # log-probabilities within the window (first token included), so that a window that
    # puts its mass on "no answer here" offers weak spans to the comparison across windows
    s_log = start.masked_fill(~live, -torch.inf).log_softmax(1)
    e_log = end.masked_fill(~live, -torch.inf).log_softmax(1)
    k = min(n_best, start.shape[1])
    s_val, s_idx = s_log.masked_fill(~ctx, -torch.inf).topk(k, dim=1)
    e_val, e_idx = e_log.masked_fill(~ctx, -torch.inf).topk(k, dim=1)
    pad = n_best - k
    if pad:
        s_val, e_val = (torch.nn.functional.pad(v, (0, pad), value=-torch.inf)
                        for v in (s_val, e_val))
        s_idx, e_idx = (torch.nn.functional.pad(v, (0, pad)) for v in (s_idx, e_idx))
    ns_val, ns_idx = start.masked_fill(~live, -torch.inf).max(1)
    ne_val, ne_idx = end.masked_fill(~live, -torch.inf).max(1)
    return {"s_val": s_val, "s_idx": s_idx, "e_val": e_val, "e_idx": e_idx,
            "naive": torch.stack([ns_idx.float(), ne_idx.float(), ns_val + ne_val], 1),
            "null": s_log[:, 0] + e_log[:, 0]}


def best_spans(pred: dict, windows: EvalWindows, *, max_answer: int, keep: int
               ) -> list[dict[tuple[int, int], float]]:
    """Per question, its `keep` best character spans over all its windows with their
    probabilities (log, normalised over the kept spans). A candidate: start and end among a
    window's top positions, both in the context, end >= start, at most max_answer tokens;
    score: log p(start) + log p(end) within the window; a span two windows propose keeps the
    better score."""
    scores = pred["s_val"][:, :, None] + pred["e_val"][:, None, :]          # (W, k, k)
    s_idx, e_idx = pred["s_idx"][:, :, None], pred["e_idx"][:, None, :]
    ok = (e_idx >= s_idx) & (e_idx - s_idx < max_answer) & torch.isfinite(scores)
    scores = scores.masked_fill(~ok, -torch.inf).flatten(1)
    top_val, top_at = scores.topk(min(keep, scores.shape[1]), dim=1)
    k = pred["s_idx"].shape[1]
    found: list[dict] = [{} for _ in range(len(windows.rows))]
    for w, (vals, ats) in enumerate(zip(top_val.tolist(), top_at.tolist(), strict=True)):
        q, off = int(windows.question[w]), windows.offsets[w]
        for v, at in zip(vals, ats, strict=True):
            if v == -np.inf:
                break
            s, e = int(pred["s_idx"][w, at // k]), int(pred["e_idx"][w, at % k])
            span = (int(off[s, 0]), int(off[e, 1]))
            if v > found[q].get(span, -np.inf):
                found[q][span] = v
    return [normalised(dict(sorted(f.items(), key=lambda kv: -kv[1])[:keep])) for f in found]


def naive_spans(pred: dict, windows: EvalWindows, tokenizer) -> list[dict[str, float]]:
    """The course sample's rule: in each window the argmax start and the argmax end, scored
    by their sum; the best window's tokens from start to end decoded, spaces removed (empty
    when end < start)."""
    best: list[tuple[float, int]] = [(-np.inf, -1)] * len(windows.rows)
    for w, score in enumerate(pred["naive"][:, 2].tolist()):
        q = int(windows.question[w])
        if score > best[q][0]:
            best[q] = (score, w)
    out = []
    for _, w in best:
        s, e = int(pred["naive"][w, 0]), int(pred["naive"][w, 1])
        text = tokenizer.decode(windows.input_ids[w, s:e + 1]).replace(" ", "") if e >= s else ""
        out.append({text: 0.0})
    return out


def normalised(spans: dict) -> dict:
    if not spans:
        return spans
    scores = torch.tensor(list(spans.values()), dtype=torch.float64).log_softmax(0).tolist()
    return dict(zip(spans, scores, strict=True))
