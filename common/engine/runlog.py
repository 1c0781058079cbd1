"""What a run reports: log lines (console and log.txt), metrics.csv (one row per evaluation),
steps.csv (loss, learning rate and gradient norm of every update) and curves.png."""

from __future__ import annotations

import csv
import logging
import sys
from typing import Any

import torch
from tqdm import tqdm

from common.core import distributed
from common.core.io import write_csv_atomic, write_text_atomic

log = logging.getLogger("mlhw")


def say(message: str, *, err: bool = False) -> None:
    """Print on rank 0 only (every process under torchrun runs the same command); the run's
    log.txt gets it too."""
    if distributed.is_main():
        log.info(message)
        print(message, file=sys.stderr if err else sys.stdout, flush=True)


def as_number(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) else value


class RunLog:
    """Writes only when `writes` (rank 0 with a run directory); prints on rank 0. With
    `tensorboard`, every steps.csv and metrics.csv value also goes to TensorBoard event files
    in <run>/tensorboard/ (train/<key> per update, eval/<key> per evaluation)."""

    def __init__(self, run, *, writes: bool, main: bool, tensorboard: bool = False):
        self.run, self.writes, self.main = run, writes, main
        self.pending_steps: list[dict[str, Any]] = []  # rows not yet in steps.csv
        self.tensorboard, self._board = tensorboard and writes, None

    def board(self, purge_step: int | None = None):
        """The SummaryWriter (opened on first use; purge_step drops events logged after a
        checkpoint that a resume goes back to)."""
        if self._board is None and self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                from common.core.errors import UserError

                raise UserError("trainer.tensorboard needs TensorBoard: pip install tensorboard "
                                "(or pip install -e '.[tensorboard]')") from None
            self._board = SummaryWriter(str(self.run.path / "tensorboard"),
                                        purge_step=purge_step)
        return self._board

    def _scalars(self, prefix: str, row: dict[str, Any]) -> None:
        board = self.board()
        if board is None:
            return
        step = int(as_number(row.get("step", 0)))
        for key, value in row.items():
            value = as_number(value)
            if key not in ("step", "epoch") and isinstance(value, int | float):
                board.add_scalar(f"{prefix}/{key}", value, step)
        board.flush()

    def close(self) -> None:
        if self._board is not None:
            self._board.close()
            self._board = None

    def say(self, message: str, console: bool = True) -> None:
        if not self.main:
            return
        log.info(message)
        if console:
            tqdm.write(message, file=sys.stderr)

    # ---------------------------------------------------------------- metrics.csv
    def rewrite_metrics(self, history: list[dict[str, float]]) -> None:
        if not self.writes:
            return
        if not history:
            write_text_atomic(self.run.metrics, "")
            return
        fields = list(dict.fromkeys(k for row in history for k in row))
        write_csv_atomic(self.run.metrics, fields,
                         ([row.get(k, "") for k in fields] for row in history))

    def append_metrics(self, history: list[dict[str, float]]) -> None:
        """Add the newest row of `history` (the whole file for the first one)."""
        if not self.writes:
            return
        self._scalars("eval", history[-1])
        fields = list(dict.fromkeys(k for row in history[:-1] for k in row))
        if len(history) == 1 or not self.run.metrics.exists() or set(history[-1]) - set(fields):
            self.rewrite_metrics(history)  # first row, or a new column
            return
        with open(self.run.metrics, "a", newline="", encoding="utf-8") as fh:
            csv.DictWriter(fh, fieldnames=fields, lineterminator="\n").writerow(history[-1])

    # ---------------------------------------------------------------- steps.csv
    def add_step(self, row: dict[str, Any]) -> None:
        """Queue one update's row; values may be device tensors (read at the next flush)."""
        if self.writes:
            self.pending_steps.append(row)

    def flush_steps(self) -> None:
        if not self.pending_steps:
            return
        rows = [{k: as_number(v) for k, v in row.items()} for row in self.pending_steps]
        self.pending_steps = []
        for row in rows:
            self._scalars("train", row)
        path = self.run.steps
        header = None
        if path.exists() and path.stat().st_size:
            with open(path, newline="", encoding="utf-8") as fh:
                header = next(csv.reader(fh))
        fields = header or list(dict.fromkeys(k for row in rows for k in row))
        with open(path, "a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, restval="", extrasaction="ignore",
                                    lineterminator="\n")
            if header is None:
                writer.writeheader()
            writer.writerows(rows)

    def truncate_steps(self, step: int) -> None:
        """Back to a checkpoint of update `step`: drop the rows logged after it (and the
        TensorBoard events after it)."""
        self.pending_steps = []
        if self.tensorboard:
            self.close()
            self.board(purge_step=step + 1)
        if not self.writes or not self.run.steps.exists():
            return
        with open(self.run.steps, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        if rows:
            kept = [r for r in rows[1:] if int(r[0]) <= step]
            write_csv_atomic(self.run.steps, rows[0], kept)

    # ---------------------------------------------------------------- curves.png
    def plot(self, history: list[dict[str, float]], monitor: str) -> None:
        if self.writes and history:
            from common.engine.plots import plot_curves
            plot_curves(history, self.run.curves, monitor=monitor)
