#!/usr/bin/env python3
"""Trainer overhead: common.Trainer against a bare PyTorch loop, same model, data and seed.

An MLP with three hidden layers of 512 units, batch 256, tensor data, on the CPU. Both loops
shuffle with a fresh permutation each epoch and index the tensors by batch. Runs alternate and
each repeat's ratio compares runs made back to back; the median ratio is reported, with its
range (target: Trainer / bare <= 1.05).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common.core.runtime import set_cpu_threads  # noqa: E402
from common.engine.models import build_mlp  # noqa: E402
from common.engine.optim import OptimConfig  # noqa: E402
from common.engine.trainer import Objective, Trainer, TrainerConfig  # noqa: E402

N, FEATURES, BATCH, SEED = 16384, 256, 256, 0


class Regression(Objective):
    def forward(self, model, batch):
        return model(batch[0]).squeeze(-1)

    def loss(self, output, batch):
        return nn.functional.mse_loss(output, batch[1])


def make_data():
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(N, FEATURES, generator=gen)
    y = x[:, :8].sum(1) + 0.1 * torch.randn(N, generator=gen)
    return x, y


def make_model():
    torch.manual_seed(SEED)
    return build_mlp(FEATURES, [512, 512, 512], 1)


def bare_loop(x, y, epochs: int) -> float:
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0,
                            fused=True)  # as the Trainer's optim.fused
    gen = torch.Generator().manual_seed(SEED)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(N, generator=gen)
        for i in range(0, N, BATCH):
            idx = order[i:i + BATCH]
            loss = nn.functional.mse_loss(model(x[idx]).squeeze(-1), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def trainer_loop(x, y, epochs: int, run_dir: Path | None, grad_norm: bool = True) -> float:
    cfg = TrainerConfig(epochs=epochs, batch_size=BATCH, seed=SEED, device="cpu",
                        print_every_evals=10**9, log_grad_norm=grad_norm)
    trainer = Trainer(make_model(), Regression(), cfg, optim=OptimConfig(name="adamw", lr=1e-3),
                      run_dir=run_dir)
    start = time.perf_counter()
    trainer.fit(TensorDataset(x, y))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0: all cores)")
    args = parser.parse_args()
    threads = set_cpu_threads(args.threads)
    x, y = make_data()
    times = {"bare": [], "trainer": [], "trainer-no-norm": [], "trainer+files": []}
    bare_loop(x, y, 1)  # warm-up
    for _ in range(args.repeats):
        times["bare"].append(bare_loop(x, y, args.epochs))
        times["trainer"].append(trainer_loop(x, y, args.epochs, None))
        times["trainer-no-norm"].append(trainer_loop(x, y, args.epochs, None, grad_norm=False))
        with tempfile.TemporaryDirectory() as tmp:
            times["trainer+files"].append(trainer_loop(x, y, args.epochs, Path(tmp)))
    steps = args.epochs * (N // BATCH)
    print(f"MLP {FEATURES}-512-512-512-1, batch {BATCH}, {steps} steps, {threads} CPU thread(s), "
          f"{args.repeats} alternating repeats")
    for name, values in times.items():
        # each repeat's ratio compares runs made back to back, under the same machine load
        ratios = [v / b for v, b in zip(values, times["bare"], strict=True)]
        med = statistics.median(values)
        print(f"{name:16s} median {med:6.3f} s  {1000 * med / steps:6.2f} ms/step  "
              f"ratio to bare: median {statistics.median(ratios):.3f}  "
              f"(range {min(ratios):.3f}-{max(ratios):.3f})")
    files = statistics.median(times["trainer+files"]) - statistics.median(times["trainer"])
    print("trainer = the Trainer without a run directory (it computes every update's "
          "gradient norm; trainer-no-norm: trainer.log_grad_norm = false); trainer+files adds "
          "the run files (last.pt with optimizer state, fsynced, every epoch; best.pt, "
          f"metrics.csv, steps.csv and curves.png): about {1000 * files / args.epochs:.0f} ms "
          "per epoch, a fixed cost that trainer.save_every_epochs spreads out")


if __name__ == "__main__":
    main()
