#!/usr/bin/env python3
"""common.data.ranking (average ranks, ROC AUC) against scipy.stats.rankdata and
sklearn.metrics.roc_auc_score at the sizes the homeworks use (HW8: 19,636 test faces; a
k-fold's out-of-fold scores up to 100,000), with ties. Prints the median time of each and the
ratio ours / library's, and checks the values agree.

    python scripts/bench/ranking.py [--repeats 15]"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from common.data.ranking import average_ranks, roc_auc  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"{'n':>8} {'what':>10} {'ours ms':>9} {'library ms':>11} {'ours/lib':>9}")
    for n in (2_000, 19_636, 100_000):
        scores = np.round(rng.normal(size=n), 3)          # rounded: ties, as real scores have
        labels = (rng.random(n) < 0.3).astype(np.int64)
        t = torch.from_numpy(scores)
        assert np.allclose(average_ranks(t).numpy(), rankdata(scores))
        assert abs(roc_auc(scores, labels) - roc_auc_score(labels, scores)) < 1e-12
        for what, ours, lib in (
                ("ranks", partial(average_ranks, t), partial(rankdata, scores)),
                ("roc_auc", partial(roc_auc, scores, labels),
                 partial(roc_auc_score, labels, scores))):
            a, b = median_seconds(ours, args.repeats), median_seconds(lib, args.repeats)
            print(f"{n:>8} {what:>10} {1e3 * a:>9.3f} {1e3 * b:>11.3f} {a / b:>9.2f}")


if __name__ == "__main__":
    main()
