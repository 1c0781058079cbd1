"""`new NAME --kind KIND`: the scaffold trains at once, and a refused name writes nothing.

Every kind is generated into one copy of the library (common/, scripts/, hw/__init__.py) in a
temporary folder, as a user's checkout would get it; there each is listed, meets the lint
rules, runs its full recipe, folds (or refuses to) and tunes, and its generated tests pass."""

import json
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.core.errors import UserError
from common.scaffold.new import KINDS, new
from tests.helpers import ROOT, run_cli

pytestmark = pytest.mark.slow  # every kind generated, trained, folded and tuned: minutes
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


# several command lines of a checkout in one fresh interpreter of its own (its common/ and hw/
# imported from there), one after another, as a user would type them
DRIVER = """import json, sys
sys.path.insert(0, sys.argv[1])
from common.testing import call
from hw.cli import main
done = [call(main, *args, cwd=sys.argv[1]) for args in json.loads(sys.argv[2])]
print(json.dumps([[d.returncode, d.stdout, d.stderr] for d in done]))
"""


def run_each(root: Path, *commands: list[str]) -> list[subprocess.CompletedProcess]:
    """`scripts/run.py ARGS` in `root` for each command, in one interpreter started there."""
    done = subprocess.run([sys.executable, "-c", DRIVER, str(root), json.dumps(commands)],
                          capture_output=True, text=True, cwd=root, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return [subprocess.CompletedProcess(args, code, out, err)
            for args, (code, out, err) in zip(commands, json.loads(done.stdout), strict=True)]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "__pycache__" not in p.parts)


NAMES = {kind: f"hw{9 + k}" for k, kind in enumerate(sorted(KINDS))}   # hw9, hw10, ...


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """One checkout holding a package of every kind (`images` under --package hw_pkg)."""
    root = checkout(tmp_path_factory.mktemp("new"))
    made = run_each(root, *(["new", name, "--kind", kind, "--title", f'{kind} "scaffold"',
                             *(["--package", "hw_pkg"] if kind == "images" else [])]
                            for kind, name in NAMES.items()))
    for done in made:
        assert done.returncode == 0, done.stderr
    return root


def test_every_kind_is_discovered_and_meets_the_lint_rules(generated):
    listed = run_in(generated, "list").stdout   # discovered: no table edited
    for kind, name in NAMES.items():
        assert f'{name:<6} {kind} "scaffold"' in listed, listed
        folder = generated / "hw" / ("hw_pkg" if kind == "images" else name)
        readme = (folder / "README.md").read_text()   # a README whose commands are its own
        assert readme.startswith(f'# {kind} \'scaffold\'') and \
            f"scripts/run.py {name} train --demo" in readme, readme[:200]
        for link in re.findall(r"\]\(([^)]+)\)", readme):
            assert (folder / link).is_file(), link
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff:  # the generated code meets this repository's lint rules
        lint = subprocess.run([ruff, "check", "--config", str(ROOT / "pyproject.toml"), "hw",
                               "tests"], capture_output=True, text=True, cwd=generated)
        assert lint.returncode == 0, lint.stdout


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_new_package_runs_its_full_recipe_folds_and_tunes(kind, generated, tmp_path):
    name = NAMES[kind]
    package = "hw_pkg" if kind == "images" else name   # --package: a folder name of its own
    for path in (f"hw/{package}/__init__.py", f"hw/{package}/data.py",
                 f"hw/{package}/model.py", f"hw/{package}/task.py",
                 f"configs/{name}.toml", f"configs/{name}_cpu.toml",
                 f"tests/hw/{name}/test_{name}.py"):
        assert (generated / path).is_file(), path
    # `train --demo --dry-run` with the _cpu recipe is the generated test's (run below)
    full, folds, study = run_each(
        generated,
        # the full recipe (its model at full size) at a batch of 4: its keys are valid too
        [name, "train", "--demo", "--dry-run", "--config", f"configs/{name}.toml", "--set",
         "trainer.batch_size=4", "--out", str(tmp_path / "full")],
        [name, "kfold", "--demo", "--dry-run", "--out", str(tmp_path / "kf")],
        [name, "tune", "--demo", "--dry-run", "--trials", "1", "--out", str(tmp_path / "tu")])
    assert full.returncode == 0, full.stderr
    if kind in UNFUSABLE:   # refused in one line, nothing written
        assert folds.returncode == 2 and "cannot fuse" in folds.stderr, folds.stderr
        assert not (tmp_path / "kf").exists()
    else:
        assert folds.returncode == 0 and f"out-of-fold over all {TRAIN_ITEMS[kind]} items" \
            in folds.stderr, folds.stderr
    assert study.returncode == 0 and "best: trial" in study.stdout, study.stderr


def test_the_generated_tests_pass(generated):
    """Each kind's tests: learns its demo data, `train --demo --dry-run` writes a valid
    submission, a bad file is one line and exit 2."""
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            *(f"tests/hw/{name}/test_{name}.py" for name in NAMES.values())],
                           capture_output=True, text=True, cwd=generated, timeout=1200)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert f"{3 * len(KINDS)} passed" in tests.stdout


def test_new_refuses_bad_names_and_taken_targets_writing_nothing(tmp_path):
    root = checkout(tmp_path)
    (root / "configs").mkdir()
    (root / "configs" / "hw9.toml").write_text("# mine\n")
    before = tree(root)
    for name, package, words in (("9hw", "", "not a lower-case Python identifier"),
                                 ("class", "", "not a lower-case Python identifier"),
                                 ("Hw9", "", "not a lower-case Python identifier"),
                                 ("hw10", "8x", "'8x' is not a lower-case Python identifier"),
                                 ("hw9", "", "configs/hw9.toml exists already")):
        with pytest.raises(UserError, match=words):
            new(name, "regression", root, package=package)
    result, unknown = run_each(root, ["new", "hw9", "--kind", "regression"],  # as typed
                               ["new", "hw10", "--kind", "audio"])
    assert result.returncode == 2 and "configs/hw9.toml exists already" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert tree(root) == before and (root / "configs" / "hw9.toml").read_text() == "# mine\n"
    taken = run_cli("new", "hw1", "--kind", "regression")  # an existing homework's name
    assert taken.returncode == 2 and "is taken on the command line already" in taken.stderr
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
