"""`new NAME --kind KIND`: the scaffold trains at once, and a refused name writes nothing.

Each kind is generated into a copy of the library (common/, scripts/, hw/__init__.py) in a
temporary folder, as a user's checkout would get it; there `train --demo --dry-run` and the
generated test must pass."""

import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.scaffold import KINDS
from tests.conftest import ROOT, run_cli

UNFUSABLE = {"sequence", "gan"}   # tokens and images: k-fold refuses them
TRAIN_ITEMS = {"regression": 800, "classification": 800, "images": 800, "span": 800}


def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "common", root / "common",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "scripts", root / "scripts",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "hw").mkdir()
    for name in ("__init__.py", "cli.py"):
        shutil.copy(ROOT / "hw" / name, root / "hw" / name)
    return root


def run_in(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(root / "scripts" / "run.py"), *args],
                          capture_output=True, text=True, cwd=root, timeout=600)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_new_package_trains_on_demo_data_and_its_test_passes(kind, tmp_path):
    root = checkout(tmp_path)
    package = "hw9_pkg" if kind == "images" else "hw9"  # --package: a folder name of its own
    made = run_in(root, "new", "hw9", "--kind", kind, "--title", 'HW9 "scaffold"',
                  "--package", package)
    assert made.returncode == 0, made.stderr
    for path in (f"hw/{package}/__init__.py", f"hw/{package}/data.py",
                 f"hw/{package}/model.py", f"hw/{package}/task.py",
                 "configs/hw9.toml", "configs/hw9_cpu.toml", "tests/test_hw9.py"):
        assert (root / path).is_file(), path
    assert 'hw9    HW9 "scaffold"' in run_in(root, "list").stdout  # discovered, no table edited
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff:  # the generated code meets this repository's lint rules
        lint = subprocess.run([ruff, "check", "--config", str(ROOT / "pyproject.toml"),
                               f"hw/{package}", "tests/test_hw9.py"], capture_output=True,
                              text=True, cwd=root)
        assert lint.returncode == 0, lint.stdout
    # `train --demo --dry-run` with the _cpu recipe is the generated test's (run below)
    full = run_in(root, "hw9", "train", "--demo", "--dry-run", "--config", "configs/hw9.toml",
                  "--out", str(tmp_path / "full"))   # the full recipe's keys are valid too
    assert full.returncode == 0, full.stderr
    folds = run_in(root, "hw9", "kfold", "--demo", "--dry-run", "--out", str(tmp_path / "kf"))
    if kind in UNFUSABLE:   # refused in one line, nothing written
        assert folds.returncode == 2 and "cannot fuse" in folds.stderr, folds.stderr
        assert not (tmp_path / "kf").exists()
    else:
        assert folds.returncode == 0 and f"out-of-fold over all {TRAIN_ITEMS[kind]} items" \
            in folds.stderr, folds.stderr
    study = run_in(root, "hw9", "tune", "--demo", "--dry-run", "--trials", "2", "--out",
                   str(tmp_path / "tu"))
    assert study.returncode == 0 and "best: trial" in study.stdout, study.stderr
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "tests/test_hw9.py"], capture_output=True, text=True, cwd=root,
                           timeout=600)
    assert tests.returncode == 0, tests.stdout[-2000:]
    assert "3 passed" in tests.stdout


def test_new_refuses_bad_names_and_taken_targets_writing_nothing(tmp_path):
    root = checkout(tmp_path)
    (root / "configs").mkdir()
    (root / "configs" / "hw9.toml").write_text("# mine\n")
    before = tree(root)
    for name, words in (("9hw", "not a lower-case Python identifier"),
                        ("class", "not a lower-case Python identifier"),
                        ("Hw9", "not a lower-case Python identifier"),
                        ("hw10 --package 8x", "'8x' is not a lower-case Python identifier"),
                        ("hw9", "configs/hw9.toml exists already")):
        result = run_in(root, "new", *name.split(), "--kind", "regression")
        assert result.returncode == 2 and words in result.stderr, (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert tree(root) == before and (root / "configs" / "hw9.toml").read_text() == "# mine\n"
    taken = run_cli("new", "hw1", "--kind", "regression")  # an existing homework's name
    assert taken.returncode == 2 and "exists already" in taken.stderr
    unknown = run_in(root, "new", "hw10", "--kind", "audio")
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr
    assert tree(root) == before
    # a full disk for real: files of at most 2000 bytes; task.py is larger
    full = subprocess.run(
        [sys.executable, str(root / "scripts" / "run.py"), "new", "hw10", "--kind", "regression"],
        capture_output=True, text=True, cwd=root, timeout=600,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000)))
    assert full.returncode == 2 and "hw10" in full.stderr, full.stderr
    assert len(full.stderr.strip().splitlines()) == 1
    assert tree(root) == before  # nothing half-written, no staging folder left
