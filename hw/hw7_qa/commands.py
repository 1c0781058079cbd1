"""HW7's own command: `spans`, how many answers the window settings can recover exactly."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from common.cli import resolve_recipe
from common.engine.runlog import say
from common.homework import Homework
from hw.hw7_qa.task import QATask


def spans_command(argv: list[str], homework: Homework) -> int:
    """`run.py hw7 spans --data DIR [--config FILE] [--set k=v ...]`: how many train and dev
    answers lie wholly inside a window and come back exactly through tokenisation, offsets
    and text cutting."""
    parser = argparse.ArgumentParser(
        prog=argv[0], description="Count the train and dev answers that the window settings "
        "(data.max_length, data.doc_stride, data.max_question_tokens) and the tokenizer can "
        "represent exactly.")
    parser.add_argument("--data", required=True, metavar="DIR", help="the folder of the files")
    parser.add_argument("--config", metavar="FILE", help="default: configs/hw7.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value")
    args = parser.parse_args(argv[1:])
    config, _, _ = resolve_recipe(QATask, args.config, args.overrides, homework=homework,
                                  data=args.data)
    data = QATask(config).load_train(Path(args.data))
    rows = np.arange(len(data))
    task = QATask(config).fitted(data, rows)
    total = found = 0
    for split, part in (("train", rows[:data.n_train]), ("dev", rows[data.n_train:])):
        ok = int(task.labelled_dataset(data, part).recoverable.sum())
        say(f"{split}: {ok}/{len(part)} answers recoverable ({100 * ok / max(len(part), 1):.2f}%)")
        total, found = total + len(part), found + ok
    say(f"spans: {found}/{total} recoverable ({100 * found / max(total, 1):.2f}%)")
    return 0
