"""Reading the HW1 tables (2021, 2022 and 2023 layouts) and writing the demo data.

Columns are found from the header, never from fixed indices: the first column is `id`; a name
that occurs once is a static feature (the one-hot states); a name that repeats is a day feature,
named `d<k>.<name>` for its k-th occurrence. The target is the last `tested_positive` of the
training file, which the test file lacks.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.core.errors import UserError
from common.core.io import write_csv_atomic

TRAIN_NAMES = ("covid.train.csv", "covid.train_new.csv", "covid_train.csv")
TEST_NAMES = ("covid.test.csv", "covid.test_un.csv", "covid_test.csv")
TARGET_BASE = "tested_positive"
DEMO_ANSWERS = "demo_test_answers.csv"   # the demo test set's targets, for `--demo` scores


@dataclass
class CovidTable:
    path: Path
    ids: np.ndarray                  # int64, from the id column
    columns: list[str]               # canonical feature names (no id, no target)
    features: np.ndarray             # float64 (rows, len(columns))
    target: np.ndarray | None        # float64 (rows,) for the training table

    def __len__(self) -> int:
        return len(self.ids)

    def column_matrix(self, names: list[str]) -> np.ndarray:
        """Feature matrix for the given names; `id` selects the id column."""
        index = {name: i for i, name in enumerate(self.columns)}
        cols = [self.ids.astype(np.float64) if n == "id" else self.features[:, index[n]]
                for n in names]
        return np.stack(cols, axis=1) if cols else np.zeros((len(self), 0))


def find_file(data_dir: Path, names: tuple[str, ...], what: str) -> Path:
    """The first of `names` in data_dir or one folder below it (Kaggle nests downloads)."""
    for folder in [data_dir, *sorted(p for p in data_dir.iterdir() if p.is_dir())]:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    zips = sorted(data_dir.glob("*.zip"))
    hint = f"; unzip {zips[0]} there first" if zips else ""
    raise UserError(f"{data_dir}: no {what} file ({' or '.join(names)}){hint}")


def canonical_names(header: list[str]) -> list[str]:
    """Strip pandas-style `.N` suffixes of repeated names, then number the repeats by day."""
    raw = [h.strip() for h in header]
    base = [re.sub(r"\.\d+$", "", h) for h in raw]
    counts = Counter(base)
    names = [b if counts[b] > 1 else h for h, b in zip(raw, base, strict=True)]
    counts = Counter(names)
    seen: Counter = Counter()
    out = []
    for name in names:
        if counts[name] > 1:
            seen[name] += 1
            out.append(f"d{seen[name]}.{name}")
        else:
            out.append(name)
    return out


def read_table(path: Path, *, has_target: bool) -> CovidTable:
    """Read and validate one table; every problem is a UserError naming the file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), None)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text CSV file; re-download it") from None
    if not header:
        raise UserError(f"{path}: the file is empty; re-download it")
    names = canonical_names(header)
    if names[0].lower() != "id":
        raise UserError(f"{path}: the first column must be 'id', found {header[0]!r}")
    try:
        frame = pd.read_csv(path, header=None, skiprows=1, dtype=str, keep_default_na=False,
                            encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame(columns=range(len(names)))
    except pd.errors.ParserError as exc:
        raise UserError(f"{path}: malformed CSV ({str(exc).strip()}); every row needs "
                        f"{len(names)} cells") from None
    if len(frame) == 0:
        raise UserError(f"{path}: the file has a header but no rows; re-download it")
    if frame.shape[1] != len(names):
        raise UserError(f"{path}: rows have {frame.shape[1]} cells but the header has "
                        f"{len(names)} columns")
    stripped = frame.apply(lambda col: col.str.strip())
    values = stripped.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(values)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        cell = stripped.iat[row, col]
        what = "is empty" if cell == "" else "is NaN" if cell.lower() in ("nan", "na", "null") \
            else f"is not a number ({cell!r})"
        raise UserError(f"{path}: line {row + 2}, column {header[col]!r} {what}; fix or "
                        "re-download the file")
    if not np.all(np.isfinite(values)):
        row, col = map(int, np.argwhere(~np.isfinite(values))[0])
        raise UserError(f"{path}: line {row + 2}, column {header[col]!r} is infinite; fix or "
                        "re-download the file")
    if has_target:
        target_names = [n for n in names if n == TARGET_BASE or n.endswith(f".{TARGET_BASE}")]
        if not target_names or names[-1] != target_names[-1]:
            raise UserError(f"{path}: the last column must be the target {TARGET_BASE!r} of "
                            f"the last day, found {header[-1]!r}; is this the test file?")
        return CovidTable(path, values[:, 0].astype(np.int64), names[1:-1], values[:, 1:-1],
                          values[:, -1])
    return CovidTable(path, values[:, 0].astype(np.int64), names[1:], values[:, 1:], None)


def check_columns(table: CovidTable, expected: list[str]) -> None:
    """The test table must have exactly the training table's feature columns, in order."""
    if table.columns == expected:
        return
    missing = [c for c in expected if c not in table.columns]
    extra = [c for c in table.columns if c not in expected]
    parts = []
    if missing:
        parts.append(f"missing column(s) {', '.join(missing[:5])}" + (" ..." if len(missing) > 5
                                                                      else ""))
    if extra:
        parts.append(f"unexpected column(s) {', '.join(extra[:5])}" + (" ..." if len(extra) > 5
                                                                       else ""))
    if not parts:
        parts.append("columns are in another order than in the training file")
    raise UserError(f"{table.path}: {'; '.join(parts)} (expected the training file's "
                    f"{len(expected)} feature columns)")


def load_train_table(data_dir: Path) -> CovidTable:
    return read_table(find_file(data_dir, TRAIN_NAMES, "training"), has_target=True)


def load_test_table(data_dir: Path, columns: list[str]) -> CovidTable:
    table = read_table(find_file(data_dir, TEST_NAMES, "test"), has_target=False)
    check_columns(table, columns)
    return table


# --------------------------------------------------------------------------- demo data
STATES = ("AL AK AZ AR CA CO CT FL GA ID IL IN IA KS KY LA MD MA MI MN MS MO NE NV NJ NM NY NC "
          "OH OK OR RI SC TX UT VA WA").split()
DAY_FEATURES = ("cli ili hh_cmnty_cli nohh_cmnty_cli wearing_mask travel_outside_state "
                "work_outside_home shop restaurant spent_time large_event public_transit "
                "anxious depressed worried_finances tested_positive").split()


def write_demo_data(dest: Path, *, n_train: int = 2699, n_test: int = 1078, seed: int = 0) -> Path:
    """Synthetic tables in the exact 2022 layout (118 / 117 columns) with a learnable target:
    tested_positive follows the illness signals and its previous day, per-state offsets and a
    mild nonlinearity, plus noise."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    state = rng.integers(0, len(STATES), n)
    state_level = rng.uniform(0.5, 1.5, len(STATES))
    behaviour = rng.normal(size=(len(STATES), 11))
    illness = np.log(state_level[state]) + rng.normal(0, 0.4, n)
    tested = np.clip(9.0 * np.exp(illness) + rng.normal(0, 1.0, n), 0.3, None)
    days = []
    for _ in range(5):
        illness = illness + rng.normal(0, 0.08, n)
        level = np.exp(illness)
        cli = 0.9 * level + rng.normal(0, 0.05, n)
        ili = cli + rng.normal(0, 0.03, n)
        hh = 15 * level + rng.normal(0, 0.8, n)
        nohh = 11 * level + rng.normal(0, 0.8, n)
        habits = 30 + 5 * behaviour[state] + rng.normal(0, 0.5, (n, 11))
        tested = 0.55 * tested + 0.45 * (9.5 * level + 2.0 * np.tanh(hh / 15 - 1)) \
            + 0.3 * behaviour[state, 0] + rng.normal(0, 0.35, n)
        tested = np.clip(tested, 0.3, None)
        days.append(np.column_stack([cli, ili, hh, nohh, habits, tested]))
    onehot = np.eye(len(STATES))[state]
    table = np.hstack([onehot, *days])
    header = ["id", *STATES] + DAY_FEATURES * 5
    dest.mkdir(parents=True, exist_ok=True)
    train_ids = np.array([i for i in range(n_train + 1) if i != 2239][:n_train])
    for name, rows, ids, cols in (("covid.train.csv", table[:n_train], train_ids, len(header)),
                                  ("covid.test.csv", table[n_train:], np.arange(n_test),
                                   len(header) - 1)):
        with open(dest / name, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(header[:cols])
            for i, row in zip(ids, rows, strict=True):
                cells = [str(int(v)) for v in row[:len(STATES)]] + \
                    [f"{v:.7g}" for v in row[len(STATES):cols - 1]]
                writer.writerow([str(int(i)), *cells])
    write_csv_atomic(dest / DEMO_ANSWERS, ("id", TARGET_BASE),
                     ([i, f"{v:.7g}"] for i, v in enumerate(table[n_train:, -1])))
    return dest
