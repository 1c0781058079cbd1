#!/usr/bin/env python3
"""HW5 batching: the share of padding in token-budget batches over length-sorted buckets
(common.data.loading.LengthBatchSampler over the longer side of each pair) against fixed-size
shuffled batches of the same mean size (what a plain DataLoader gives), over source and target
together.

Lengths (SentencePiece pieces per sentence) come from the demo corpus (its shared model) and
from a log-normal at TED scale (median 25 pieces, the target about 1.1 x the source; the real
TED2020 files are not on this machine). Target: at most 1/4 of the fixed-size padding.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common.data.loading import EpochBatchSampler, LengthBatchSampler  # noqa: E402
from hw.hw5_translate import data as mt  # noqa: E402


def padding_share(batches, src: np.ndarray, tgt: np.ndarray) -> float:
    real = padded = 0
    for b in batches:
        b = np.asarray(b)
        real += src[b].sum() + tgt[b].sum()
        padded += len(b) * (src[b].max() + tgt[b].max())
    return 1 - real / padded


def compare(name: str, src: np.ndarray, tgt: np.ndarray, max_tokens: int) -> float:
    # sorted, and the budget counted, on the longer side of each pair
    bucketed = list(LengthBatchSampler(np.maximum(src, tgt), max_tokens=max_tokens,
                                       shuffle=True, seed=0))
    size = max(1, round(len(src) / len(bucketed)))
    fixed = EpochBatchSampler(len(src), size, shuffle=True, seed=0)
    fixed.set_epoch(0, 0)
    ours, plain = padding_share(bucketed, src, tgt), padding_share(list(fixed), src, tgt)
    print(f"{name}: {len(src)} pairs, max_tokens {max_tokens} ({len(bucketed)} batches, "
          f"{size} pairs on average); padding: token budget {ours:.2%}, fixed-size shuffled "
          f"{plain:.2%}; ratio {ours / plain:.3f} (target <= 0.25)")
    return ours / plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--pairs", type=int, default=393_980, help="log-normal corpus size")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        demo = mt.write_demo_data(Path(tmp) / "demo")
        corpus = mt.load_corpus(demo)
        sp = mt.train_spm(corpus.en + corpus.zh, vocab_size=400, cache_dir=None)
        src, tgt = mt.pack(sp, corpus.en).lengths + 1, mt.pack(sp, corpus.zh).lengths + 1
    compare("demo corpus", src, tgt, args.max_tokens)
    rng = np.random.default_rng(0)
    src = np.clip(rng.lognormal(np.log(25), 0.6, args.pairs), 2, 1000).astype(np.int64)
    tgt = np.clip(src * rng.lognormal(np.log(1.1), 0.25, args.pairs), 2, 1000).astype(np.int64)
    compare("TED-scale log-normal", src, tgt, args.max_tokens)


if __name__ == "__main__":
    main()
