#!/usr/bin/env python3
"""HW5 decoding: sentences per second of beam-5 search with the incremental cache (decoder keys
and values, encoder projections) against recomputing the whole prefix every step, same model,
same outputs (checked).

The model is the course's strong-baseline shape (d 256, 4 heads, ff 1024) with random weights
whose output is sharpened, so hypotheses end at realistic lengths rather than at the limit;
source lengths follow a log-normal at the TED test scale (median 25 pieces; the real test file
is not on this machine), in batches of `--batch` sentences sorted by length. CPU here; pass
--device cuda on a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hw.hw5_translate.decode import beam_search  # noqa: E402
from hw.hw5_translate.model import Seq2SeqTransformer  # noqa: E402

PAD, BOS, EOS = 0, 2, 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    vocab = 8000
    model = Seq2SeqTransformer(vocab, d_model=256, heads=4, enc_layers=args.layers,
                               dec_layers=args.layers, ff=1024, dropout=0.0)
    with torch.no_grad():
        model.embed.weight.mul_(3.0)   # sharper outputs
        model.embed.weight[EOS].mul_(1.6)
    model = model.to(args.device).eval()
    rng = np.random.default_rng(0)
    lengths = np.sort(np.clip(rng.lognormal(np.log(25), 0.6, args.sentences), 3, 200).astype(int))
    batches = []
    for start in range(0, args.sentences, args.batch):
        part = lengths[start:start + args.batch]
        src = torch.full((len(part), int(part.max())), PAD, dtype=torch.long)
        for i, n in enumerate(part):
            src[i, :n] = torch.from_numpy(rng.integers(4, vocab, n))
        batches.append(src.to(args.device))
    results, times = {}, {}
    for cached in (True, False):
        start = time.perf_counter()
        results[cached] = [h for src in batches
                           for h in beam_search(model, src, beam=5, bos=BOS, eos=EOS, pad=PAD,
                                                cached=cached)]
        times[cached] = time.perf_counter() - start
    same = results[True] == results[False]
    mean_out = np.mean([len(h) for h in results[True]])
    print(f"{args.sentences} sentences (source median {int(np.median(lengths))} pieces, output "
          f"mean {mean_out:.1f}), beam 5, batch {args.batch}, {args.layers}+{args.layers} "
          f"layers, {args.device}")
    print(f"cached: {args.sentences / times[True]:.2f} sentences/s; recomputed prefix: "
          f"{args.sentences / times[False]:.2f}; ratio {times[False] / times[True]:.2f}x "
          f"(target >= 3x); same outputs: {same}")


if __name__ == "__main__":
    main()
