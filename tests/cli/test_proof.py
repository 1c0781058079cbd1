"""`make proof`'s script end to end at two batches per rung on HW1's real table: the table,
the kept rows and the picture; --render writes the same table from the kept rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REAL_HW1, ROOT


@pytest.mark.slow
def test_proof_writes_its_table_rows_and_picture_and_renders_them_again(tmp_path):
    if not (REAL_HW1 / "covid.train.csv").is_file():
        pytest.skip("real HW1 data (../shared/data/hw1/2022) not present")
    script = str(ROOT / "scripts" / "proof" / "run.py")
    docs, runs = tmp_path / "docs", tmp_path / "runs"
    done = subprocess.run([sys.executable, script, "--only", "hw1", "--dry-run", "--docs",
                           str(docs), "--runs", str(runs)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = json.loads((docs / "proof.json").read_text())
    assert [(r["hw"], r["name"], r["course"]) for r in rows] == [
        ("hw1", "course sample", True), ("hw1", "hw1 (ours)", False)]
    assert all(r["value"] > 0 and r["wall"] > 0 and r["peak"] > 0 for r in rows)
    assert all((Path(r["run"]) / "pred.csv").is_file() for r in rows)  # runs and submissions
    table = (docs / "proof.md").read_text()
    assert "| hw1 | real: the course's 2022 training table (2699 rows) | hw1 (ours) |" in table
    assert "Dry run" in table and (docs / "img" / "proof.png").stat().st_size > 10_000
    (docs / "proof.md").unlink()
    assert subprocess.run([sys.executable, script, "--render", "--docs", str(docs)],
                          timeout=120).returncode == 0
    assert (docs / "proof.md").read_text().replace(" **Dry run: two batches per rung; the "
                                                   "numbers mean nothing.**", "") == \
        table.replace(" **Dry run: two batches per rung; the numbers mean nothing.**", "")
