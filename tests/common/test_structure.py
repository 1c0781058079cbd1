"""The house rules that keep the code easy to live in: common/ is its layers (core, data,
engine, experiments, scaffold), none importing one above it; no import circle inside common/
(lazy and type-checking imports included), common/ never imports a
homework, no homework imports another, and every homework package keeps its networks in
model.py."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def _imports(path: Path, package: str, *, type_checking: bool = False) -> set[str]:
    """Modules of `package` that `path` imports anywhere (under `if TYPE_CHECKING:` too, with
    type_checking)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = set() if type_checking else {
        id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
        and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.split(".")[0] == package}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(folder: Path, package: str, *, type_checking: bool = False
                 ) -> dict[str, set[str]]:
    """Each module under folder (subpackages included) -> the modules of package it imports;
    `from common.engine import trainer` counts as importing common.engine.trainer."""
    graph = {}
    for path in sorted(folder.rglob("*.py")):
        found = set()
        for name in _imports(path, package, type_checking=type_checking):
            found.add(name)
        graph[module_name(path)] = found
    return graph


# common's layers, lowest first: a module imports only its own layer and those before it
LAYERS = ["core", "data", "engine", "experiments", "scaffold"]


def layer_of(module: str) -> int:
    """common.<layer>.x -> the layer's rank; common's own top modules (cli, homework,
    testing) sit above every layer."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt in graph and not state.get(nxt):
                found = visit(nxt, [*path, nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in graph:
        if not state.get(start):
            found = visit(start, [start])
            if found:
                return found
    return None


def test_the_cycle_finder_sees_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_in_common():
    """Type-checking imports count: a circle drawn only for the type checker is one too."""
    graph = import_graph(ROOT / "common", "common", type_checking=True)
    assert "common.experiments.kfold" in graph["common.experiments.tune"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_tree_of_common_is_its_layers_and_no_layer_imports_one_above_it():
    """common/ holds the five layer packages and the modules on top of them (cli, homework,
    testing); a module of one layer imports only its own layer and the layers below."""
    graph = import_graph(ROOT / "common", "common")
    top = {m for m in graph if m.count(".") == 1 and m.split(".")[1] not in LAYERS}
    assert top == {"common.cli", "common.homework", "common.testing"}, top
    assert {m.split(".")[1] for m in graph if m.count(".") >= 2} == set(LAYERS)
    assert layer_of("common.engine.trainer") > layer_of("common.data.mix")  # the finder sees
    wrong = [f"{m} imports {d}" for m, deps in graph.items() for d in deps
             if d != "common" and layer_of(d) > layer_of(m)]
    assert not wrong, wrong


def test_import_common_is_cheap():
    """`import common` (the public face) loads no torch, numpy or pandas: `list` and `--help`
    stay fast; the names come on first use."""
    code = ("import sys, common; heavy = {'torch', 'numpy', 'pandas'} & set(sys.modules); "
            "print(sorted(heavy)); from common import Task, Trainer, option, UserError; "
            "print(Task.__module__, Trainer.__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    assert out[0] == "[]", out
    assert out[1] == "common.engine.task common.engine.trainer"


def test_common_never_imports_a_homework():
    for path in (ROOT / "common").rglob("*.py"):
        assert not _imports(path, "hw"), path


def test_no_homework_imports_another():
    """A homework imports `common` and its field's libraries, never another homework: what two
    need (HW6's and HW8's demo faces) lives in common."""
    packages = [p for p in (ROOT / "hw").iterdir() if (p / "__init__.py").is_file()]
    assert len(packages) >= 8
    for package in packages:
        for path in package.rglob("*.py"):
            others = {m.split(".")[1] for m in _imports(path, "hw") if m.count(".") >= 1}
            assert others <= {package.name}, f"{path.relative_to(ROOT)} imports hw.{others}"


def test_networks_live_in_model_py():
    """No nn.Module subclass in a homework's data.py or task.py: networks are in model.py."""
    packages = [p for p in (ROOT / "hw").iterdir() if (p / "task.py").is_file()]
    assert len(packages) >= 7
    for package in packages:
        assert (package / "model.py").is_file(), package
        for name in ("data.py", "task.py"):
            tree = ast.parse((package / name).read_text(encoding="utf-8"))
            modules = [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                       and any(ast.unparse(b).split(".")[-1] in ("Module", "Sequential")
                               for b in n.bases)]
            assert not modules, f"{package.name}/{name}: {modules}"
