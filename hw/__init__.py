"""One package per homework. Each declares its `HOMEWORK` entry (common/homework.py) in its
`__init__.py`; TASKS maps every CLI name found here, or published by an installed package
under the "mlhw.homeworks" entry points, to that entry (the task class imported lazily)."""

from __future__ import annotations

import sys
from pathlib import Path

from common.homework import discover

HERE = Path(__file__).resolve().parent
# the recipes (configs/<hw>.toml): hw/configs is a link to the checkout's configs/ and a real
# folder of package data once installed; a checkout without the link keeps them beside hw/
RECIPES = next((d.resolve() for d in (HERE / "configs", HERE.parent / "configs")
                if d.is_dir()), HERE / "configs")
TASKS = discover(sys.modules[__name__], recipes=RECIPES)
