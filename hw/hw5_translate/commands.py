"""HW5's own commands: `backtranslate` (a zh->en run turns monolingual Chinese into synthetic
training pairs) and `report` (the course's report figures: the decoder's positional-embedding
similarity and the gradient norm of every update)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from common.cli import check_options, run_parser
from common.core.errors import UserError
from common.core.io import write_text_atomic
from common.engine.plots import plot_grad_norms, plot_matrix
from common.engine.rundir import RunDir
from common.engine.runlog import say
from common.experiments.finished import load_run_model
from common.experiments.pipeline import make_trainer
from common.homework import Homework
from hw.hw5_translate import data as mt
from hw.hw5_translate.task import Pairs, Sampling, TranslationTask


def _parser(argv0: str, description: str) -> argparse.ArgumentParser:
    return run_parser(argv0, description, "a finished hw5 run")


def backtranslate_command(argv: list[str], homework: Homework) -> int:
    """`run.py hw5 backtranslate --run RUN [--mono FILE] [--sample]`: translate monolingual
    Chinese with a zh-en run into synthetic.en / synthetic.zh for data.synthetic."""
    parser = _parser(argv[0], "Translate a monolingual Chinese file with a zh->en run (trained "
                     "with --set data.direction=zh-en) into synthetic English-Chinese pairs, "
                     "cleaned and filtered like the real ones, for --set data.synthetic=...")
    parser.add_argument("--mono", metavar="FILE",
                        help=f"one Chinese sentence per line (default: the run's data folder's "
                        f"{mt.MONO_NAME})")
    parser.add_argument("--sample", action="store_true",
                        help="draw each output from the model (seeded by trainer.seed) instead "
                        "of beam search: noisier, more varied sources")
    parser.add_argument("--topk", type=int, default=0, metavar="K",
                        help="with --sample: draw among the K most likely pieces (0: all)")
    parser.add_argument("--temperature", type=float, default=1.0, metavar="T",
                        help="with --sample: divide log-probabilities by T")
    parser.add_argument("--limit", type=int, default=0, metavar="N",
                        help="the first N usable lines only (0: all)")
    args = parser.parse_args(argv[1:])
    check_options(args, {"topk": {"min": 0}, "temperature": {"above": 0.0},
                         "limit": {"min": 0}})
    out = Path(args.out) if args.out else Path(args.run) / "backtranslation"
    RunDir(out).check_writable()
    task, model, ckpt = load_run_model(TranslationTask, args.run, ckpt=args.ckpt)
    cfg = task.config["data"]
    if cfg.direction != "zh-en":
        raise UserError(f"{args.run}: translates {cfg.direction}; back-translation needs a "
                        "zh-en run: train one with --set data.direction=zh-en")
    mono = Path(args.mono) if args.mono else mt.find_root(cfg.dir) / mt.MONO_NAME
    zh = [s for s in (mt.clean_zh(line) for line in mt.read_lines(mono))
          if 1 <= mt.length(s, "zh") <= 1000]
    zh = zh[:args.limit] if args.limit > 0 else zh
    if not zh:
        raise UserError(f"{mono}: no Chinese line survives cleaning; pass --mono FILE")
    packed = mt.pack(task.sp, zh)
    if args.sample:
        task = task.with_sampling(Sampling(temperature=args.temperature, topk=args.topk,
                                           seed=task.config["trainer"].seed))
    way = "sampling" if args.sample else f"beam {task.config['model'].beam}"
    say(f"back-translating {len(zh)} lines of {mono} with {ckpt} ({way})")
    trainer = make_trainer(task, model, None)
    dataset = Pairs(packed, None, np.arange(len(packed)))
    english = task.finalize(trainer.predict(dataset), dataset)
    en, zh = mt.clean_filter(english, zh)
    en_path, zh_path = mt.synthetic_paths(out / mt.SYNTHETIC)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(en_path, "".join(line + "\n" for line in en))
    write_text_atomic(zh_path, "".join(line + "\n" for line in zh))
    say(f"synthetic pairs: {len(en)} in {en_path} / {zh_path.name}")
    say(f"next: train en-zh on real + synthetic pairs: --set data.synthetic=\"{out}\" "
        "(and data.real_upsample=N to weigh the real pairs)")
    return 0


def report_command(argv: list[str], homework: Homework) -> int:
    """`run.py hw5 report --run RUN`: report_positions.png and report_grad_norm.png."""
    parser = _parser(argv[0], "The report's figures: the cosine similarity of the decoder's "
                     "positional embeddings (Q1) and the gradient norm of every update with "
                     "the clipping threshold and the explosions circled (Q2).")
    parser.add_argument("--positions", type=int, default=0, metavar="N",
                        help="the first N positions (0: all the model has)")
    args = parser.parse_args(argv[1:])
    check_options(args, {"positions": {"min": 0}})
    run = RunDir(args.run)
    out = Path(args.out) if args.out else run.path
    RunDir(out).check_writable()
    task, model, ckpt = load_run_model(TranslationTask, run.path, ckpt=args.ckpt)
    if not hasattr(model, "dec_pos"):
        raise UserError(f"{run.path}: the {task.config['model'].arch} model has no positional "
                        "embeddings; report a Transformer run (model.arch = \"transformer\")")
    table = model.dec_pos.detach().float()
    table = table[:args.positions] if args.positions > 0 else table
    unit = torch.nn.functional.normalize(table, dim=1)
    kind = task.config["model"].positions
    plot_matrix((unit @ unit.T).numpy(), out / "report_positions.png",
                title=f"cosine similarity of the decoder's {kind} positional embeddings",
                xlabel="position", ylabel="position")
    say(f"positions: {out / 'report_positions.png'} ({len(table)} x {table.shape[1]}, {ckpt})")
    clip = task.config["trainer"].clip_grad_norm
    found = plot_grad_norms(run.steps, out / "report_grad_norm.png", clip=clip)
    say(f"gradient norms: {out / 'report_grad_norm.png'} ({found['updates']} updates, "
        f"{found['explosions']} above {found['threshold']:.3g}"
        f"{' (the clip threshold)' if clip > 0 else ''})")
    return 0
