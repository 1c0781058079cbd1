"""The house rules that keep the code easy to live in: no import circle inside common/ (lazy
imports included; only `if TYPE_CHECKING:` blocks are exempt), common/ never imports a
homework, no homework imports another, and every homework package keeps its networks in
model.py."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path, package: str) -> set[str]:
    """Modules of `package` that `path` imports anywhere but under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
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


def import_graph(folder: Path, package: str) -> dict[str, set[str]]:
    return {f"{package}.{p.stem}": _imports(p, package) for p in sorted(folder.glob("*.py"))}


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
    graph = import_graph(ROOT / "common", "common")
    assert "common.tune" in graph and "common.kfold" in graph["common.tune"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_common_never_imports_a_homework():
    for path in (ROOT / "common").glob("*.py"):
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
