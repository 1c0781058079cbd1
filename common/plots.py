"""Learning curves from the metrics history."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.io import atomic_write  # noqa: E402


def plot_curves(history: list[dict[str, float]], path: str | Path, monitor: str = "") -> None:
    """Train and valid loss against the update step, and every other valid metric beside it."""
    steps = [row["step"] for row in history]
    metrics = [k for k in history[0] if k.startswith("valid_") and k != "valid_loss"]
    panels = 1 + bool(metrics)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0][0]
    for key in ("train_loss", "valid_loss"):
        if key in history[0]:
            ax.plot(steps, [row[key] for row in history], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(row.get("valid_loss", 1) > 0 for row in history):
        ax.set_yscale("log")
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
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
