"""How a homework makes itself known to the command line: one `Homework` entry (its CLI name,
title, task class and extra commands), declared as `HOMEWORK` in the package's `__init__.py`
(or published by an installed package under the entry-point group "mlhw.homeworks"). The
task class is imported only when that homework is used, so `list` and `--help` stay quick."""

from __future__ import annotations

import importlib
import pkgutil
import re
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from common.core.errors import UserError, warn_user

ENTRY_POINT_GROUP = "mlhw.homeworks"


class Homework:
    """`task`: "module:Class". `commands`: the homework's own actions, name -> (help,
    "module:function"), each called with its argv (argv[0] the program's name). With
    `package` (the declaring package's `__name__`), a task module starting with "." is inside
    it, and a command given as a bare function name lives in its `commands` module.
    `recipes`: the folder of its recipes (`<name>.toml`, the default of every command, and
    the others `--config` names); a subpackage found by `discover` gets its package's.

    How it is handed in and found, for the command line's messages: `kaggle_competition` (the
    Kaggle slug: `download` and the submit line), `grader_note` (how to hand in elsewhere,
    with {submission}), `download_hint` (where the data comes from), `demo_config` (the
    recipe `--demo` runs without --config; default `<name>`), `demo_baseline` (the course
    sample's measured demo score, shown beside a --demo run's)."""

    def __init__(self, name: str, title: str, task: str,
                 commands: dict[str, tuple[str, str]] | None = None, *, package: str = "",
                 recipes: str | Path | None = None, kaggle_competition: str = "",
                 grader_note: str = "", download_hint: str = "", demo_config: str = "",
                 demo_baseline: str = ""):
        if package and task.startswith("."):
            task = package + task
        self.name, self.title, self.task = name, title, task
        self.kaggle_competition, self.grader_note = kaggle_competition, grader_note
        self.download_hint, self.demo_config = download_hint, demo_config
        self.demo_baseline = demo_baseline
        self.recipes = Path(recipes) if recipes is not None else None
        self.commands = {command: (text, target if ":" in target or not package
                                   else f"{package}.commands:{target}")
                         for command, (text, target) in (commands or {}).items()}

    def __call__(self) -> type:
        """The task class."""
        module, cls = self.task.split(":")
        task_cls = getattr(importlib.import_module(module), cls)
        if task_cls.name != self.name:
            raise ValueError(f"{self.task}: its name is {task_cls.name!r}, its HOMEWORK entry "
                             f"says {self.name!r}; make them agree")
        return task_cls

    def __repr__(self) -> str:
        return f"Homework({self.name!r}, {self.task!r})"


def recipe_path(entry, name: str) -> Path:
    """The file of recipe `name` of a homework entry (a `Homework`; anything else declares
    no recipes), or a one-line error saying what to do instead."""
    folder = getattr(entry, "recipes", None)
    if folder is None:
        raise UserError(f"{getattr(entry, 'name', name)}: this homework declares no recipes "
                        "folder (Homework(..., recipes=DIR)); pass --config FILE")
    path = Path(folder) / f"{name}.toml"
    if not path.is_file():
        raise UserError(f"{path}: recipe not found; pass --config FILE, or reinstall the "
                        "package that brings the homework's recipes")
    return path


def _natural(name: str) -> list:
    """hw2 before hw10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def discover(package: ModuleType, *, recipes: Path | None = None) -> dict[str, Homework]:
    """Every `HOMEWORK` declared by a subpackage of `package` (its recipes in `recipes` unless
    it names its own), then every installed one of the "mlhw.homeworks" entry points (a name
    already taken by a subpackage keeps the subpackage), sorted by name (hw2 before hw10)."""
    found: dict[str, Homework] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.ispkg:
            try:
                module = importlib.import_module(f"{package.__name__}.{info.name}")
            except Exception as exc:  # one broken package must not take every command down
                reason = (str(exc).splitlines() or [""])[0]
                warn_user(f"{package.__name__}/{info.name}: cannot be imported "
                          f"({type(exc).__name__}: {reason}); its commands are left out until "
                          "it is fixed")
                continue
            entry = getattr(module, "HOMEWORK", None)
            if isinstance(entry, Homework):
                if entry.recipes is None:
                    entry.recipes = recipes
                found[entry.name] = entry
    for point in entry_points(group=ENTRY_POINT_GROUP):
        entry = point.load()
        if isinstance(entry, Homework):
            found.setdefault(entry.name, entry)
    return {name: found[name] for name in sorted(found, key=_natural)}
