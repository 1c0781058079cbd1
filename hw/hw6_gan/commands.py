"""HW6's own commands: `generate` (1000 faces and JudgeBoi's archive from a run), `fid` (the
FID or proxy FID between two sets of images) and `report` (the discriminator's per-layer
gradient norms of one or more runs, e.g. weight clipping against gradient penalty)."""

from __future__ import annotations

import argparse
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from common.cli import add_safety_flags, check_options, check_readable, check_replace, run_parser
from common.core.errors import UserError
from common.core.owner import command_line, owning
from common.data.images import image_files, load_images
from common.engine.plots import plt, read_steps, save_figure
from common.engine.rundir import RunDir
from common.engine.runlog import say
from common.experiments.finished import load_run_model
from common.experiments.pipeline import make_trainer
from common.homework import Homework
from hw.hw6_gan import fid
from hw.hw6_gan.task import SUBMISSION_IMAGES, GanTask


def generate_command(argv: list[str], homework: Homework) -> int:
    """`run.py hw6 generate --run RUN [--out DIR] [--count N] [--truncation PSI]`."""
    parser = run_parser(
        argv[0], "Generate faces with a run's generator (EMA weights when it kept them) into "
        "DIR/images/1.jpg ... and DIR/submission.tgz (no enclosing folder, under 2 MB: JPEG "
        "quality lowered until it fits, then read back and checked).", "a finished hw6 run")
    parser.add_argument("--count", type=int, default=SUBMISSION_IMAGES, metavar="N",
                        help=f"images (JudgeBoi wants {SUBMISSION_IMAGES})")
    parser.add_argument("--truncation", type=float, metavar="PSI",
                        help="style generator: pull w toward its mean (1: none; 0.7 is common)")
    parser.add_argument("--seed", type=int, metavar="S",
                        help="another set of latent codes (default: the run's trainer.seed)")
    add_safety_flags(parser, running=True)
    args = parser.parse_args(argv[1:])
    check_options(args, {"count": {"min": 1}, "truncation": {"min": 0.0, "max": 1.0}})
    out = Path(args.out) if args.out else Path(args.run)
    check_readable([Path(args.run)], args.allow_running)
    check_replace(out, GanTask.submission_name, args.force)  # checks that out is writable
    with owning(out, command_line()):
        return generate(args, out)


def generate(args, out: Path) -> int:
    task, model, ckpt = load_run_model(GanTask, args.run, ckpt=args.ckpt)
    if args.truncation is not None:
        task.config["model"] = replace(task.config["model"], truncation=args.truncation)
    if args.seed is not None:
        task.config["trainer"] = replace(task.config["trainer"], seed=args.seed)
    say(f"generating {args.count} faces with {ckpt}")
    codes = task.test_codes(args.count)
    images = make_trainer(task, model, None).predict(codes)
    out.mkdir(parents=True, exist_ok=True)
    path = task.write_submission(codes, images, out / task.submission_name)
    say(f"submission: {path} (images in {out / 'images'})")
    return 0


def read_image_set(path: Path, size: int) -> np.ndarray:
    """(N, size, size, 3) uint8 from a folder of images or a .tgz of them."""
    path = Path(path)
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise UserError(f"{path}: no images in this folder")
        return np.asarray(load_images(files, size).array)
    if path.is_file() and path.name.endswith((".tgz", ".tar.gz", ".tar")):
        from PIL import Image

        try:
            with tarfile.open(path) as tar:
                members = [m for m in tar.getmembers() if m.isfile()]
                arrays = [np.asarray(Image.open(tar.extractfile(m)).convert("RGB")
                                     .resize((size, size)), dtype=np.uint8) for m in members]
        except (tarfile.TarError, OSError, EOFError) as exc:  # EOFError: a truncated .tgz
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(":")
            raise UserError(f"{path}: unreadable archive ({reason}); pass a .tgz of images or "
                            "a folder") from None
        if not arrays:
            raise UserError(f"{path}: no images in this archive")
        return np.stack(arrays)
    raise UserError(f"{path}: neither a folder of images nor a .tgz archive")


def fid_command(argv: list[str], homework: Homework) -> int:
    """`run.py hw6 fid --real DIR --fake DIR|TGZ [--inception PATH] [--cascade PATH]`."""
    parser = argparse.ArgumentParser(
        prog=argv[0], description="The Fréchet distance between the features of two image "
        "sets: InceptionV3 (the real FID) with --inception, else the fixed proxy network "
        "(a proxy FID, on its own scale). Neither is JudgeBoi's number, which is in the "
        "thousands.")
    parser.add_argument("--real", required=True, metavar="DIR",
                        help="real images (a faces/ folder) or an archive")
    parser.add_argument("--fake", required=True, metavar="DIR|TGZ",
                        help="generated images: a folder or submission.tgz")
    parser.add_argument("--inception", metavar="PATH",
                        help=f"InceptionV3 weights ({fid.INCEPTION_HINT})")
    parser.add_argument("--size", type=int, default=64, metavar="N",
                        help="both sets resized to N x N first (default 64, the course's)")
    parser.add_argument("--cascade", metavar="PATH",
                        help="also the anime-face detection rate (AFD) of the fake set, with "
                        "OpenCV and this cascade file (lbpcascade_animeface.xml)")
    args = parser.parse_args(argv[1:])
    check_options(args, {"size": {"min": 8}})
    net = fid.feature_network(args.inception or "",
                              "cuda" if torch.cuda.is_available() else "cpu")
    real_dir = Path(args.real)
    if real_dir.is_dir() and not image_files(real_dir) and (real_dir / "faces").is_dir():
        real_dir = real_dir / "faces"
    real = read_image_set(real_dir, args.size)
    fake = read_image_set(Path(args.fake), args.size)

    def stats(images):
        tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        return fid.statistics(fid.image_features(net, tensor))

    value = fid.frechet_distance(*stats(fake), *stats(real))
    label = "FID (InceptionV3)" if args.inception else "proxy FID (fixed random network, " \
        "not Inception)"
    say(f"{label}: {value:.4f} ({len(fake)} fake against {len(real)} real at "
        f"{args.size} x {args.size})")
    if args.cascade:
        say(f"AFD (faces detected): {fid.detection_rate(fake, args.cascade):.3f}")
    return 0


def report_command(argv: list[str], homework: Homework) -> int:
    """`run.py hw6 report --run A [--run B ...] [--out FILE]`."""
    parser = argparse.ArgumentParser(
        prog=argv[0], description="The report's figure: the discriminator's per-layer "
        "gradient norms over training (log scale), one panel per run, e.g. a weight-clipping "
        "run (configs/hw6_wgan.toml) beside a gradient-penalty run (hw6_wgangp.toml).")
    parser.add_argument("--run", dest="runs", action="append", required=True,
                        metavar="RUN_DIR", help="a hw6 run trained with model.log_d_layers")
    parser.add_argument("--out", metavar="FILE",
                        help="the PNG (default: report_d_grad_norms.png in the first run)")
    args = parser.parse_args(argv[1:])
    if args.out:
        RunDir.check_writable_file(args.out)
    panels = []
    for run_dir in args.runs:
        run = RunDir(run_dir)
        steps = read_steps(run.steps)
        columns = sorted((k for k in steps if k.startswith("dgrad_")),
                         key=lambda k: int(k.split("_")[1]))
        if len(columns) < 1:
            raise UserError(f"{run.steps}: no per-layer gradient norms; train with "
                            "model.log_d_layers = true")
        from common.experiments.finished import load_run_config

        cfg = load_run_config(GanTask, run.path)["model"]
        how = (f"weight clipping {cfg.clip_weights:g}" if cfg.clip_weights else "") or \
            (f"gradient penalty {cfg.gp_weight:g}" if cfg.gp_weight else "") or \
            (f"R1 {cfg.r1_gamma:g}" if cfg.r1_gamma else "no constraint")
        panels.append((run, steps, columns, f"{run.path.name}: {cfg.loss}, {how}"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (_, steps, columns, title) in zip(axes[0], panels, strict=True):
        for i, key in enumerate(columns):
            ax.plot(steps["step"], steps[key], lw=0.8, label=f"layer {i + 1}")
        ax.set_yscale("log")
        ax.set_xlabel("update")
        ax.set_ylabel("gradient norm of D's weights")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    out = Path(args.out) if args.out else panels[0][0].path / "report_d_grad_norms.png"
    save_figure(fig, out)
    say(f"report: {out} ({', '.join(f'{len(c)} layers' for _, _, c, _ in panels)})")
    return 0
