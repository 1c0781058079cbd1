#!/usr/bin/env python3
"""The single entry point: `python scripts/run.py <hw> train|predict|demo-data ...`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hw.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
