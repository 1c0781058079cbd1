"""Figures: learning curves from the metrics history, gradient norms from steps.csv, and a
matrix as a heat map; every PNG written atomically."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.core.errors import UserError  # noqa: E402
from common.core.io import atomic_write  # noqa: E402


def plot_curves(history: list[dict[str, float]], path: str | Path, monitor: str = "") -> None:
    """Train and valid loss against the update step, and every other valid metric beside it."""
    steps = [row["step"] for row in history]
    metrics = [k for k in history[0] if k.startswith("valid_") and k != "valid_loss"]
    panels = 1 + bool(metrics)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0][0]
    losses = [k for k in history[0]   # a GAN logs train_loss_d and train_loss_g
              if k in ("train_loss", "valid_loss") or k.startswith("train_loss_")]
    for key in losses:
        ax.plot(steps, [row.get(key, float("nan")) for row in history], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(row.get(k, 1) > 0 for row in history for k in losses):
        ax.set_yscale("log")
    if losses:
        ax.legend()
    if metrics:
        ax = axes[0][1]
        for key in metrics:
            ax.plot(steps, [row[key] for row in history], label=key)
        values = [row[k] for row in history for k in metrics]
        if min(values) > 0 and max(values) / min(values) > 20:  # e.g. MSE falling from 50 to 1
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"monitor: {monitor}" if monitor else "")
        ax.legend()
    save_figure(fig, path)


def save_figure(fig, path: str | Path, dpi: int = 100) -> None:
    fig.tight_layout()
    with atomic_write(Path(path), "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi)
    plt.close(fig)


def read_steps(path: str | Path) -> dict[str, np.ndarray]:
    """steps.csv as one float array per column (empty cells NaN)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: missing; it is written while a run trains (with "
                        "trainer.log_grad_norm for the gradient norms)")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise UserError(f"{path}: no updates logged yet")
    return {k: np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows])
            for k in rows[0]}


def plot_grad_norms(steps_csv: str | Path, path: str | Path, *, clip: float = 0.0) -> dict:
    """The gradient norm (before clipping) of every update, log scale, the clip threshold as a
    line and the explosions circled: updates above the threshold (clip, or 5 x the median norm
    without clipping). Returns the counts and the threshold used."""
    steps = read_steps(steps_csv)
    columns = [k for k in steps if k.startswith("grad_norm")]
    if not columns:
        raise UserError(f"{steps_csv}: no gradient norms; train with "
                        "trainer.log_grad_norm = true")
    fig, ax = plt.subplots(figsize=(10, 4))
    explosions, threshold = 0, clip
    for key in columns:
        norms = steps[key]
        threshold = clip if clip > 0 else 5 * float(np.nanmedian(norms))
        high = norms > threshold
        explosions += int(high.sum())
        ax.plot(steps["step"], norms, lw=0.8, label=key)
        ax.scatter(steps["step"][high], norms[high], s=60, facecolors="none",
                   edgecolors="red", label=f"{key} > {threshold:.3g}")
    ax.axhline(threshold, color="gray", ls="--",
               label=f"clip {clip:g}" if clip > 0 else "5 x median")
    ax.set_yscale("log")
    ax.set_xlabel("update")
    ax.set_ylabel("gradient norm")
    ax.legend()
    save_figure(fig, path)
    return {"updates": len(steps["step"]), "explosions": explosions, "threshold": threshold}


def plot_matrix(matrix: np.ndarray, path: str | Path, *, title: str = "", xlabel: str = "",
                ylabel: str = "") -> None:
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(matrix, cmap="viridis", origin="upper")
    fig.colorbar(image, ax=ax)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    save_figure(fig, path)
