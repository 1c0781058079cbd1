"""Console entry point `mlhw` (the same CLI as scripts/run.py)."""

import sys

from common.cli import main as common_main
from hw import TASKS


def main(argv: list[str] | None = None) -> int:
    return common_main(TASKS, argv)


if __name__ == "__main__":
    sys.exit(main())
