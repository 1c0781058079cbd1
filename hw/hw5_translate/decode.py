"""HW5 decoding: greedy, sampled (for back-translation) and batched beam search over a
Seq2SeqTransformer or Seq2SeqRNN (anything with encode / decode / new_cache), incremental (the
decoder's keys and values and the encoder projections cached, or the GRU state) or, for
checking and benchmarking, recomputing the whole prefix every step. Output length at most
a x source length + b (the course: 1.2 x + 10); hypotheses ranked by log-probability divided
by length ** length_penalty."""

from __future__ import annotations

import torch
from torch import nn

from hw.hw5_translate.model import reorder_cache


def max_lengths(src: torch.Tensor, pad: int, a: float, b: int) -> torch.Tensor:
    return ((src != pad).sum(1).float() * a + b).long().clamp_min(1)


class Stepper:
    """Next-token log-probabilities for a growing prefix, with or without the cache."""

    def __init__(self, model: nn.Module, memory, mask, cached: bool):
        self.model, self.memory, self.mask = model, memory, mask
        self.cache = model.new_cache() if cached else None

    def __call__(self, prefix: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            logits = self.model.decode(prefix[:, -1:], self.memory, self.mask, cache=self.cache,
                                       start=prefix.shape[1] - 1)
        else:
            logits = self.model.decode(prefix, self.memory, self.mask)
        return logits[:, -1].float().log_softmax(-1)

    def keep(self, index: torch.Tensor) -> None:
        self.memory = self.memory.index_select(0, index)
        self.mask = self.mask.index_select(0, index)
        if self.cache is not None:
            reorder_cache(self.cache, index)


def _forbid(lp: torch.Tensor, pad: int, bos: int, eos: int, must_end: torch.Tensor):
    lp[:, pad] = -torch.inf
    lp[:, bos] = -torch.inf
    lp[must_end] = torch.where(torch.arange(lp.shape[1], device=lp.device) == eos, 0.0,
                               -torch.inf)
    return lp


def _one_by_one(model: nn.Module, src: torch.Tensor, pick, *, bos: int, eos: int, pad: int,
                a: float, b: int, cached: bool) -> list[list[int]]:
    """One token per sentence and step, `pick(log_probs) -> tokens`, until eos or the limit."""
    memory, mask = model.encode(src)
    step = Stepper(model, memory, mask, cached)
    limit = max_lengths(src, pad, a, b)
    prefix = torch.full((len(src), 1), bos, dtype=torch.long, device=src.device)
    done = torch.zeros(len(src), dtype=torch.bool, device=src.device)
    for t in range(int(limit.max())):
        lp = _forbid(step(prefix), pad, bos, eos, limit <= t + 1)
        token = torch.where(done, torch.full_like(done, pad, dtype=torch.long), pick(lp))
        prefix = torch.cat([prefix, token[:, None]], 1)
        done |= token == eos
        if done.all():
            break
    return [[int(x) for x in row[1:] if x not in (eos, pad)] for row in prefix]


@torch.no_grad()
def greedy(model: nn.Module, src: torch.Tensor, *, bos: int, eos: int, pad: int = 0,
           a: float = 1.2, b: int = 10, cached: bool = True) -> list[list[int]]:
    """The argmax token each step until eos or the length limit; tokens without bos/eos."""
    return _one_by_one(model, src, lambda lp: lp.argmax(-1), bos=bos, eos=eos, pad=pad, a=a,
                       b=b, cached=cached)


@torch.no_grad()
def sample(model: nn.Module, src: torch.Tensor, *, bos: int, eos: int, pad: int = 0,
           a: float = 1.2, b: int = 10, temperature: float = 1.0, topk: int = 0,
           generator: torch.Generator | None = None) -> list[list[int]]:
    """Each token drawn from the model's distribution (sharpened by `temperature`, cut to the
    `topk` most likely when > 0) with `generator`: the varied outputs back-translation likes."""
    def pick(lp: torch.Tensor) -> torch.Tensor:
        lp = lp / max(temperature, 1e-6)
        if 0 < topk < lp.shape[1]:
            cut = lp.topk(topk, dim=-1).values[:, -1:]
            lp = lp.masked_fill(lp < cut, -torch.inf)
        probs = lp.softmax(-1)
        return torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(lp.device)

    return _one_by_one(model, src, pick, bos=bos, eos=eos, pad=pad, a=a, b=b, cached=True)


@torch.no_grad()
def beam_search(model: nn.Module, src: torch.Tensor, *, beam: int, bos: int, eos: int,
                pad: int = 0, a: float = 1.2, b: int = 10, length_penalty: float = 1.0,
                cached: bool = True) -> list[list[int]]:
    """Batched beam search: every sentence keeps `beam` live hypotheses; a hypothesis that
    ends (eos, or the length limit) is scored log p / length ** length_penalty (length counts
    eos) and kept; a sentence stops once it holds `beam` ended hypotheses. Tokens without
    bos/eos, the best per sentence."""
    n, device = len(src), src.device
    memory, mask = model.encode(src)
    rows = torch.arange(n, device=device).repeat_interleave(beam)
    step = Stepper(model, memory.index_select(0, rows), mask.index_select(0, rows), cached)
    limit = max_lengths(src, pad, a, b).repeat_interleave(beam)
    prefix = torch.full((n * beam, 1), bos, dtype=torch.long, device=device)
    scores = torch.full((n, beam), -torch.inf, device=device)
    scores[:, 0] = 0.0                               # one live hypothesis at the start
    ended: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    for t in range(int(limit.max())):
        lp = _forbid(step(prefix), pad, bos, eos, limit <= t + 1)
        vocab = lp.shape[1]
        total = (scores.view(-1, 1) + lp).view(n, beam * vocab)
        top, at = total.topk(2 * beam, dim=1)        # enough to keep `beam` that go on
        src_beam, token = at // vocab, at % vocab
        keep_beam = torch.zeros((n, beam), dtype=torch.long, device=device)
        keep_token = torch.full((n, beam), pad, dtype=torch.long, device=device)
        new_scores = torch.full((n, beam), -torch.inf, device=device)
        for i in range(n):
            if finished[i]:
                continue
            slot = 0
            for c in range(2 * beam):
                value = float(top[i, c])
                if value == -torch.inf:
                    break
                parent = i * beam + int(src_beam[i, c])
                if int(token[i, c]) == eos:  # ends only among the best `beam`, as greedy
                    if c < beam and len(ended[i]) < beam:
                        words = prefix[parent, 1:].tolist()
                        ended[i].append((value / (len(words) + 1) ** length_penalty, words))
                    continue
                if slot < beam:
                    keep_beam[i, slot], keep_token[i, slot] = int(src_beam[i, c]), token[i, c]
                    new_scores[i, slot] = value
                    slot += 1
            if len(ended[i]) >= beam or slot == 0:
                finished[i] = True
        if finished.all():
            break
        index = (torch.arange(n, device=device)[:, None] * beam + keep_beam).view(-1)
        prefix = torch.cat([prefix.index_select(0, index), keep_token.view(-1, 1)], 1)
        scores = torch.where(finished[:, None], torch.full_like(new_scores, -torch.inf),
                             new_scores)
        step.keep(index)
    return [max(e, key=lambda h: h[0])[1] if e else [] for e in ended]
