"""HW5 decoding: incremental decoding (cached keys and values, cached encoder projections; the
RNN's cached GRU state) gives exactly the tokens of recomputing the prefix, for greedy and beam
search; beam 1 is greedy; the cache's logits equal the full decoder's; the length limit holds;
sampling is seeded and follows the model."""

from __future__ import annotations

import pytest
import torch

from hw.hw5_translate.decode import beam_search, greedy, max_lengths, sample
from hw.hw5_translate.model import Seq2SeqRNN, Seq2SeqTransformer, reorder_cache

PAD, UNK, BOS, EOS = 0, 1, 2, 3


@pytest.fixture(scope="module", params=["sinusoidal", "learned", "rnn"])
def model(request):
    torch.manual_seed(0)
    if request.param == "rnn":
        net = Seq2SeqRNN(40, embed=16, hidden=24, enc_layers=2, dec_layers=2, dropout=0.1)
        scale = 30.0  # the course's init is tiny
    else:
        net = Seq2SeqTransformer(40, d_model=32, heads=4, enc_layers=2, dec_layers=2, ff=64,
                                 dropout=0.1, positions=request.param)
        scale = 4.0
    with torch.no_grad():  # a peaked output, so that decoding is far from ties
        net.embed.weight.mul_(scale)
    return net.eval()


@pytest.fixture(scope="module")
def flat():
    torch.manual_seed(5)
    return Seq2SeqTransformer(40, d_model=32, heads=4, enc_layers=1, dec_layers=1, ff=64,
                              dropout=0.0).eval()   # flat outputs: beams cross, near-ties


def sources(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 40, (n, 9), generator=g)
    for i in range(n):
        src[i, 3 + i % 6:] = PAD               # different lengths, padded
    return src


def test_cached_step_logits_equal_the_full_decoder(model):
    src = sources()
    memory, mask = model.encode(src)
    tgt = torch.randint(4, 40, (len(src), 7), generator=torch.Generator().manual_seed(2))
    full = model.decode(tgt, memory, mask)
    cache = model.new_cache()
    steps = [model.decode(tgt[:, t:t + 1], memory, mask, cache=cache, start=t)
             for t in range(tgt.shape[1])]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_incremental_decoding_gives_the_same_tokens(model, flat):
    src = sources()
    kw = dict(bos=BOS, eos=EOS, pad=PAD)
    for net in (model, flat):
        assert greedy(net, src, cached=True, **kw) == greedy(net, src, cached=False, **kw)
        assert beam_search(net, src, beam=4, cached=True, **kw) == \
            beam_search(net, src, beam=4, cached=False, **kw)


def test_beam_one_is_greedy_and_lengths_stay_within_the_rule(model, flat):
    src = sources(8, seed=3)
    kw = dict(bos=BOS, eos=EOS, pad=PAD, a=1.2, b=2)
    for net in (model, flat):
        assert beam_search(net, src, beam=1, **kw) == greedy(net, src, **kw)
    limit = max_lengths(src, PAD, 1.2, 2)
    for hyp, cap in zip(beam_search(model, src, beam=5, **kw), limit.tolist(), strict=True):
        assert len(hyp) <= cap - 1 and all(t not in (PAD, BOS, EOS) for t in hyp)


def test_beam_finds_more_likely_sequences_than_greedy(flat):
    model = flat
    src = sources(8, seed=4)
    kw = dict(bos=BOS, eos=EOS, pad=PAD)

    def logprob(i, hyp):
        memory, mask = model.encode(src[i:i + 1])
        tgt = torch.tensor([[BOS, *hyp]])
        lp = model.decode(tgt, memory, mask)[0].log_softmax(-1)
        return float(lp[torch.arange(len(hyp) + 1), torch.tensor([*hyp, EOS])].sum())

    with torch.no_grad():
        g, bm = greedy(model, src, **kw), beam_search(model, src, beam=5, length_penalty=0.0,
                                                      **kw)
        gain = [logprob(i, bm[i]) - logprob(i, g[i]) for i in range(len(src))]
    # not guaranteed sentence by sentence (beam search may drop greedy's prefix), on average
    assert sum(gain) / len(gain) > 0 and sum(x > 1e-6 for x in gain) >= 1


def test_reordered_cache_continues_the_chosen_prefixes(model):
    src = sources(4)
    memory, mask = model.encode(src)
    tgt = torch.randint(4, 40, (4, 6), generator=torch.Generator().manual_seed(7))
    cache = model.new_cache()
    for t in range(5):
        model.decode(tgt[:, t:t + 1], memory, mask, cache=cache, start=t)
    index = torch.tensor([2, 2, 0, 3])               # beams continued from other rows
    reorder_cache(cache, index)
    step = model.decode(tgt[index, 5:6], memory[index], mask[index], cache=cache, start=5)
    full = model.decode(tgt[index], memory[index], mask[index])
    assert torch.allclose(step[:, 0], full[:, -1], atol=1e-5)


class Scripted:
    """A stand-in model whose next-token scores depend only on the position: step 0 prefers
    token 5 over eos, step 1 prefers eos. Greedy says [5]."""

    def encode(self, src):
        return torch.zeros(len(src), 1, 1), torch.ones(len(src), 1, 1, 1, dtype=torch.bool)

    def new_cache(self):
        return [{"self": {}, "cross": {}}]

    def decode(self, tgt, memory, mask, cache=None, start=0):
        logits = torch.full((len(tgt), tgt.shape[1], 8), -10.0)
        for j in range(tgt.shape[1]):
            if start + j == 0:
                logits[:, j, 5], logits[:, j, EOS] = 1.0, 0.5
            else:
                logits[:, j, EOS] = 1.0
        return logits


def test_only_the_best_beam_candidates_may_end():
    src = torch.tensor([[4, 4, 4]])
    kw = dict(bos=BOS, eos=EOS, pad=PAD)
    assert greedy(Scripted(), src, **kw) == [[5]]
    assert beam_search(Scripted(), src, beam=1, **kw) == [[5]]


def test_sampling_is_seeded_and_follows_the_model(model):
    src = sources(6, seed=2)
    kw = dict(bos=BOS, eos=EOS, pad=PAD)

    def draw(seed, **extra):
        return sample(model, src, generator=torch.Generator().manual_seed(seed), **kw, **extra)

    assert draw(1) == draw(1)
    assert draw(1) != draw(2) or draw(1) != draw(3)
    # temperature -> 0 or top-1 is greedy
    assert draw(4, topk=1) == greedy(model, src, **kw)
    assert draw(5, temperature=1e-4) == greedy(model, src, **kw)
