"""One package per homework. Each declares its `HOMEWORK` entry (common/homework.py) in its
`__init__.py`; TASKS maps every CLI name found here, or published by an installed package
under the "mlhw.homeworks" entry points, to that entry (the task class imported lazily)."""

from __future__ import annotations

import sys

from common.homework import discover

TASKS = discover(sys.modules[__name__])
