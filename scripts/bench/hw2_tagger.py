#!/usr/bin/env python3
"""HW2's tagger against the window recipe, in one run on this machine:

  1. multiply-adds per frame of every HW2 recipe (counted from the layer shapes: an LSTM layer
     is 4 h (in + h) per direction and step, a GRU 3 h (in + h); a window model runs its RNN
     over all n frames of every frame's window; torch's FLOP counter for the Conformer and,
     as a check of the count, for the MLP recipes);
  2. training frames per second (forward, backward, AdamW step) of the tagger and the window
     model at equal width (a bidirectional LSTM of --width units per direction, 2 layers) on
     demo-shaped batches, and of our BiRNN against torch's packed bidirectional LSTM (the
     plain reference for padded batches);
  3. validation accuracy against CPU seconds (evaluation included) on the full demo data for
     the tagger (configs/hw2_cpu.toml), the old CPU window recipe (a 1-layer BiLSTM 64 over
     21 frames) and the window recipe (configs/hw2_window.toml) at the tagger's width; the
     curve goes to docs/img/hw2_tagger.png (--plot).

Usage: python scripts/bench/hw2_tagger.py [--width 64] [--skip-curves] [--plot]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from common.core.config import load_config  # noqa: E402
from common.engine.objective import Callback  # noqa: E402
from common.experiments.pipeline import fit_split, prepare  # noqa: E402
from hw.hw2_phoneme import data as phone  # noqa: E402
from hw.hw2_phoneme.model import BiRNN  # noqa: E402
from hw.hw2_phoneme.task import PhonemeTask  # noqa: E402

RECIPES = ["hw2_sample", "hw2_strong", "hw2_window", "hw2", "hw2_cpu"]
TRAIN_FRAMES, VALID_FRAMES = 2_116_368, 527_790     # the real split (HOMEWORKS.md)
GPU_TFLOPS = 10   # an assumed sustained rate: a T4-class GPU with AMP on RNN-sized matrices
WINDOW_CPU = ['model.arch="lstm"', "data.concat_nframes=21", "model.rnn_hidden=64",
              "model.rnn_layers=1", "model.hidden=[128]", "model.dropout=0.0",
              "model.label_smoothing=0.0", "trainer.batch_size=512", "trainer.epochs=4",
              "optim.lr=2e-3", "trainer.clip_grad_norm=0.0"]


def config(recipe: str, *overrides: str):
    return load_config(PhonemeTask.schema(), ROOT / "configs" / f"{recipe}.toml",
                       list(overrides))


def rnn_macs(cell: str, n_in: int, hidden: int, layers: int) -> int:
    """Multiply-adds of a bidirectional RNN per step."""
    gates = 4 if cell == "lstm" else 3
    widths = [n_in, *[2 * hidden] * (layers - 1)]
    return sum(2 * gates * hidden * (w + hidden) for w in widths)


def mlp_macs(widths: list[int]) -> int:
    return sum(a * b for a, b in zip(widths, widths[1:], strict=False))


def counted_macs(cfg, frames: int = 600) -> float:
    """torch's FLOP counter over one utterance of `frames` frames, per frame (FLOPs / 2)."""
    task = PhonemeTask(cfg)
    model = task.build_model().eval()
    n = cfg["data"].concat_nframes
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        if task.tagger:
            model(torch.randn(1, frames, 39 * n), torch.tensor([frames]))
        else:
            model(torch.randn(frames, 39 * n))
    return counter.get_total_flops() / 2 / frames


def macs_per_frame(cfg) -> int:
    m, n = cfg["model"], cfg["data"].concat_nframes
    if m.arch == "mlp":
        return mlp_macs([39 * n, *m.hidden, 41])
    width = 2 * m.rnn_hidden
    head = mlp_macs([width, *m.hidden, 41])
    if m.arch == "tagger" and m.cell == "conformer":
        return round(counted_macs(cfg))
    cell = m.cell if m.arch == "tagger" else m.arch
    steps = 1 if m.arch == "tagger" else n        # a window runs the RNN over all n frames
    return steps * rnn_macs(cell, 39 * (n if m.arch == "tagger" else 1), m.rnn_hidden,
                            m.rnn_layers) + head


def frames_per_second(step, frames: int, repeats: int = 5) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return frames * repeats / (time.perf_counter() - start)


def training_step(modules, forward, inputs, loss_of):
    """One update of `modules`' parameters: forward(*inputs), loss, backward, AdamW."""
    opt = torch.optim.AdamW(modules.parameters(), lr=1e-3)

    def step():
        loss_of(forward(*inputs)).backward()
        opt.step()
        opt.zero_grad()
    return step


def throughput(width: int, demo: Path) -> None:
    torch.manual_seed(0)
    frames = phone.load_split(demo, "train")
    lengths = frames.lengths()[:64]
    pick = torch.argsort(lengths)[-7:]            # the 7 longest of 64 demo utterances
    lens = lengths[pick]
    x = torch.randn(len(pick), int(lens.max()), 39)
    real = int(lens.sum())
    target = torch.randint(0, 41, (real,))
    pad = torch.arange(x.shape[1])[None] >= lens[:, None]
    head = nn.Linear(2 * width, 41)

    ours = nn.ModuleDict({"rnn": BiRNN("lstm", 39, width, 2, 0.0), "head": head})
    packed = nn.ModuleDict({"rnn": nn.LSTM(39, width, 2, batch_first=True,
                                           bidirectional=True), "head": nn.Linear(2 * width, 41)})

    def ours_fwd(inp, n):
        return ours["head"](ours["rnn"](inp, n)[~pad])

    def packed_fwd(inp, n):
        seq = pack_padded_sequence(inp, n, batch_first=True, enforce_sorted=False)
        h, _ = pad_packed_sequence(packed["rnn"](seq)[0], batch_first=True,
                                   total_length=inp.shape[1])
        return packed["head"](h[~pad])

    def loss(out):
        return nn.functional.cross_entropy(out, target)

    tagger = frames_per_second(training_step(ours, ours_fwd, (x, lens), loss), real)
    reference = frames_per_second(training_step(packed, packed_fwd, (x, lens), loss), real, 2)
    window_model = config("hw2_window", f"model.rnn_hidden={width}", "model.rnn_layers=2",
                          "model.hidden=[]", "model.batchnorm=false")
    wx = torch.randn(512, 41, 39)
    wt = torch.randint(0, 41, (512,))
    wmodel = PhonemeTask(window_model).build_model()
    window = frames_per_second(training_step(wmodel, wmodel, (wx,), lambda out: nn.functional
                                             .cross_entropy(out, wt)), 512)
    print(f"\ntraining frames per second, bidirectional LSTM {width} x 2 layers, 2 CPU cores "
          f"(batch: {len(pick)} utterances, {real} frames | 512 windows of 41 frames)")
    print(f"  tagger (ours, BiRNN)                {tagger:10.0f}")
    print(f"  tagger, torch packed sequences       {reference:10.0f}   "
          f"ours x{tagger / reference:.1f}")
    print(f"  window recipe, 41 frames             {window:10.0f}   tagger x{tagger / window:.1f}")


class Clock(Callback):
    """(CPU seconds since fit start, valid accuracy) at each evaluation."""

    def __init__(self):
        self.points, self.start = [], 0.0

    def on_fit_start(self, trainer):
        self.start = time.perf_counter()

    def on_evaluate(self, trainer, metrics, outputs):
        self.points.append((time.perf_counter() - self.start, metrics["valid_acc"]))


def curve(demo: Path, recipe: str, overrides: list[str]) -> list[tuple[float, float]]:
    cfg = config(recipe, f'data.dir="{demo}"', "trainer.print_every_evals=1000000",
                 'trainer.device="cpu"', *overrides)
    task, train_data, split = prepare(PhonemeTask, cfg, demo)
    clock = Clock()
    fit_split(task, train_data, *split, callbacks=[clock])
    return clock.points


def curves(demo: Path, plot: bool) -> None:
    runs = {
        "tagger, hw2_cpu.toml (BiLSTM 64 x 2, whole utterances)": ("hw2_cpu", []),
        "window, the old hw2_cpu (BiLSTM 64, 21 frames)": ("hw2_window", WINDOW_CPU),
        "window, hw2_window.toml at width 64 (BiLSTM 64 x 2, 41 frames)": (
            "hw2_window", ["model.rnn_hidden=64", "model.rnn_layers=2", "model.hidden=[128]",
                           "trainer.epochs=3", "sched.warmup_steps=100"]),
    }
    results = {}
    print("\nvalidation accuracy against CPU seconds on the demo (evaluation included)")
    for name, (recipe, overrides) in runs.items():
        points = curve(demo, recipe, overrides)
        results[name] = points
        best = max(a for _, a in points)
        print(f"  {name}: best {best:.3f} after {points[-1][0]:.0f} s; "
              + ", ".join(f"{s:.0f}s {a:.3f}" for s, a in points))
    tagger, *windows = results.values()
    for name, points in zip(list(results)[1:], windows, strict=True):
        best = max(a for _, a in points)
        reach = next((s for s, a in tagger if a >= best), None)
        spent = next(s for s, a in points if a == best)
        if reach is not None:
            print(f"  the tagger reaches the best of {name} ({best:.3f}, at "
                  f"{spent:.0f} s) after {reach:.0f} s: {reach / spent:.2f} of its CPU time")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, points in results.items():
            ax.plot([s for s, _ in points], [a for _, a in points], marker="o", label=name)
        ax.set_xlabel("CPU seconds (2 cores, evaluation included)")
        ax.set_ylabel("validation frame accuracy (demo)")
        ax.set_title("HW2 demo: tagger vs window recipes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        out = ROOT / "docs" / "img" / "hw2_tagger.png"
        fig.savefig(out, dpi=110)
        print(f"  curve: {out.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--skip-curves", action="store_true")
    parser.add_argument("--plot", action="store_true")
    args = parser.parse_args()
    print("multiply-adds per frame (forward); a real epoch's FLOPs (training 3 x forward over "
          f"{TRAIN_FRAMES:,} frames, 2 FLOPs a multiply-add, plus validation's forward over "
          f"{VALID_FRAMES:,}) and its time at {GPU_TFLOPS} TFLOP/s sustained (projected, not "
          "measured)")
    for recipe in RECIPES:
        cfg = config(recipe)
        macs = macs_per_frame(cfg)
        check = f"  (FLOP counter: {counted_macs(cfg) / 1e6:.2f} M)" \
            if cfg["model"].arch == "mlp" else ""
        flops = 2 * macs * (3 * TRAIN_FRAMES + VALID_FRAMES)
        minutes = flops / (GPU_TFLOPS * 1e12) / 60
        print(f"  {recipe:11s} {cfg['model'].arch:7s} {macs / 1e6:9.2f} M  training FLOPs a "
              f"frame {6 * macs / 1e6:9.2f} M  epoch "
              f"{flops / 1e15:7.3f} PFLOP  {minutes:7.2f} min  x {cfg['trainer'].epochs} "
              f"epochs {minutes * cfg['trainer'].epochs:7.1f} min{check}")
    window, tagger = macs_per_frame(config("hw2_window")), macs_per_frame(config("hw2"))
    print(f"  hw2_window / hw2 (equal width): {window / tagger:.1f}")
    conformer = config("hw2", 'model.cell="conformer"', "model.rnn_hidden=128",
                       "model.rnn_layers=4")
    print(f"  hw2 with cell = conformer (width 256, 4 blocks, 600-frame utterance): "
          f"{macs_per_frame(conformer) / 1e6:.2f} M")
    with tempfile.TemporaryDirectory(prefix="mlhw-hw2tag-") as scratch:
        demo = phone.write_demo_data(Path(scratch))
        throughput(args.width, demo)
        if not args.skip_curves:
            curves(demo, args.plot)


if __name__ == "__main__":
    main()
