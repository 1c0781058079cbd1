"""HW4's own command: `featurize`, the course's log-mel front end over a folder of audio."""

from __future__ import annotations

from pathlib import Path

from common.homework import Homework
from hw.hw4_speaker.data import featurize


def featurize_command(argv: list[str], homework: Homework) -> int:
    """`run.py hw4 featurize --audio DIR --out DIR [--seed N]` (argv[0] is the program)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog=argv[0], description="Turn audio (<speaker>/<file>.wav|flac, plus an optional "
        "test/ folder) into the course's Dataset/ layout with the course's log-mel front end.")
    parser.add_argument("--audio", required=True, metavar="DIR", help="the audio folder")
    parser.add_argument("--out", required=True, metavar="DIR", help="the Dataset/ to write")
    parser.add_argument("--seed", type=int, default=0, help="for the uttr-<hex> file names")
    args = parser.parse_args(argv[1:])
    out = featurize(Path(args.audio), Path(args.out), seed=args.seed)
    print(f"dataset: {out} (train with: run.py hw4 train --data {out})")
    return 0
