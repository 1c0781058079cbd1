"""`new NAME --kind KIND`: a homework package that trains on its demo data at once.

It writes hw/<name>/ (or hw/<package>/: `__init__.py` with the HOMEWORK entry, `data.py`,
`model.py`, `task.py`, `README.md`), configs/<name>.toml and configs/<name>_cpu.toml, and
tests/hw/<name>/test_<name>.py, from the templates in templates/<kind's folder>/ beside this module
(a file a kind lacks comes from templates/shared/). Nothing is written unless every target is
free, and a failure leaves nothing behind: the package folder is built beside its place and
renamed into it (building_folder), and the files outside it are removed again."""

from __future__ import annotations

import contextlib
import keyword
import string
import sys
from pathlib import Path

from common.core.errors import UserError
from common.core.io import building_folder, surfacing_write_errors, write_text_atomic

TEMPLATES = Path(__file__).with_name("templates")

_REGRESSION = {
    "template": "tabular", "base": "RegressionTask", "target": "target",
    "metric_note": "MSE as loss and metric come from RegressionTask",
    "monitor": "valid_mse", "mode": "min", "outputs": "1", "class_attrs": "",
    "fold_labels": "",
    "demo_target": "    target = np.round(signal + rng.normal(0, 0.2, len(x)), 5)",
    "target_tensor": "as_float_tensor(table.target[idx])",
    "submitted": "outputs.double().numpy()",
    "learn_assert": "    assert metrics[\"mse\"] < 0.5 * table.target.var()  # the demo target's "
                    "variance is about 1.7",
}
_CLASSIFICATION = {
    **_REGRESSION, "base": "ClassificationTask", "target": "label",
    "metric_note": "cross-entropy and accuracy come from ClassificationTask",
    "monitor": "valid_acc", "mode": "max", "outputs": "self.num_classes",
    "class_attrs": "    num_classes = 3\n",
    "fold_labels": '''
    def fold_labels(self, table: data.Table) -> np.ndarray:
        return table.target.astype(np.int64)   # stratified folds
''',
    "demo_target": "    target = np.digitize(signal + rng.normal(0, 0.2, len(x)), "
                   "np.quantile(signal, [1 / 3, 2 / 3]))",
    "target_tensor": "torch.as_tensor(table.target[idx], dtype=torch.long)",
    "submitted": "outputs.argmax(-1).numpy()",
    "learn_assert": "    assert metrics[\"acc\"] > 0.6  # chance: 1/3",
}
KINDS = {"regression": _REGRESSION, "classification": _CLASSIFICATION,
         "images": {"template": "images"}, "sequence": {"template": "sequence"},
         "span": {"template": "span"}, "gan": {"template": "gan"}}


def targets(root: Path, name: str, package: str = "") -> dict[str, Path]:
    """Template file -> where it goes (the package folder is hw/<package or name>)."""
    package = root / "hw" / (package or name)
    return {"__init__.py.tmpl": package / "__init__.py", "data.py.tmpl": package / "data.py",
            "model.py.tmpl": package / "model.py", "task.py.tmpl": package / "task.py",
            "README.md.tmpl": package / "README.md",
            "config.toml.tmpl": root / "configs" / f"{name}.toml",
            "config_cpu.toml.tmpl": root / "configs" / f"{name}_cpu.toml",
            "test.py.tmpl": root / "tests" / "hw" / name / f"test_{name}.py"}


def check_name(name: str, root: Path, taken: set[str], package: str = "") -> None:
    for what in dict.fromkeys((name, package or name)):
        if not what.isidentifier() or keyword.iskeyword(what) or what != what.lower():
            raise UserError(f"new: {what!r} is not a lower-case Python identifier (letters, "
                            "digits and _, not starting with a digit); try e.g. hw8")
    if name in taken:
        raise UserError(f"new: {name!r} is taken on the command line already (a homework or a "
                        "command); choose another name")
    for what in dict.fromkeys((name, package or name)):
        if what in sys.stdlib_module_names:
            raise UserError(f"new: {what!r} is a standard Python module; choose another name, "
                            "e.g. hw9")
    for path in targets(root, name, package).values():
        if path.exists() or (path.name == "__init__.py" and path.parent.exists()):
            where = path.parent if path.name == "__init__.py" else path
            raise UserError(f"new: {where} exists already; choose another name or move it away")


def template(kind: str, name: str) -> Path:
    """The kind's own template file, else the one every kind shares."""
    own = TEMPLATES / KINDS[kind]["template"] / name
    return own if own.is_file() else TEMPLATES / "shared" / name


def new(name: str, kind: str, root: Path, *, taken: set[str] = frozenset(),
        title: str = "", package: str = "") -> list[Path]:
    """Write the package (hw/<package or name>/), configs and test of a new homework named
    `name` on the command line; returns the files written."""
    if kind not in KINDS:
        raise UserError(f"new: --kind {kind!r} is unknown; choose one of {', '.join(KINDS)}")
    root = Path(root)
    check_name(name, root, set(taken), package)
    package = package or name
    title = title or f"{name.upper()} ({kind})"
    values = {**KINDS[kind], "name": name, "kind": kind, "package": package,
              "Class": "".join(part.capitalize() for part in name.split("_")) or name,
              "title": title.replace("\\", "/").replace('"', "'"),  # safe in a docstring
              "title_literal": repr(title)}
    places = targets(root, name, package)
    folder = root / "hw" / package
    texts = {dest: string.Template(template(kind, source).read_text()).substitute(values)
             for source, dest in places.items()}
    made: list[Path] = []      # folders this call created (removed again on failure)
    written: list[Path] = []   # files outside the package folder written so far
    try:
        with building_folder(folder) as stage:
            for dest, text in texts.items():
                if dest.parent == folder:
                    with surfacing_write_errors(dest):
                        (stage / dest.name).write_text(text)
            for dest, text in texts.items():
                if dest.parent != folder:
                    for parent in reversed(dest.relative_to(root).parents[:-1]):
                        if not (root / parent).exists():
                            (root / parent).mkdir()
                            made.append(root / parent)
                    with surfacing_write_errors(dest):
                        write_text_atomic(dest, text)
                    written.append(dest)
    except BaseException:
        for dest in written:
            dest.unlink(missing_ok=True)
        for path in reversed(made):
            with contextlib.suppress(OSError):   # only if empty again
                path.rmdir()
        raise
    return list(places.values())
