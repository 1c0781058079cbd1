"""The command line shared by every homework: `run.py <hw> train|kfold|predict|ensemble|average|
demo-data` and `run.py list`.

`main(tasks)` takes a registry of task classes, so `common` never imports a homework.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from common.core import distributed
from common.core.config import Config, check_value, load_config, rules_of, toml_value
from common.core.errors import Terminated, UserError, warn_user
from common.core.io import building_folder
from common.core.owner import check_not_running, command_line, describe, holder, owning
from common.engine.fusion import FUSABLE, METHODS
from common.engine.rundir import RunDir
from common.engine.runlog import say
from common.engine.sections import KFoldConfig, PredictConfig, TuneConfig
from common.engine.task import Task
from common.experiments.finished import average_run, ensemble_run, load_run_config, predict_run
from common.experiments.handoff import handoff
from common.experiments.kfold import kfold_run, predict_kfold
from common.experiments.pipeline import data_dir_of, dry_run_config, train_run
from common.experiments.tune import Study, check_storage, format_table, parse_space, tune
from common.homework import recipe_path
from common.scaffold.new import KINDS, new

# what a user's disk or folders cause: disk full, no permission, read-only, a file in the way
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM,
                errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG}
TaskRegistry = dict[str, Callable[[], type[Task]]]
SHARED_COMMANDS = ("list", "runs", "compare", "new")  # build_parser's; no homework takes them


def run_parser(prog: str, description: str, what: str = "a finished run"
               ) -> argparse.ArgumentParser:
    """The parser of a homework command that works on a run: --run, --ckpt, --out."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help=what)
    parser.add_argument("--ckpt", metavar="best|last|PATH",
                        help="weights (default: what the run predicted with)")
    parser.add_argument("--out", metavar="DIR", help="where to write (default: the run)")
    return parser


def check_options(args, rules: dict[str, dict]) -> None:
    """Range-check numeric command-line options with the config's rules and wording (min,
    max, below, above; a list option checks each item), e.g. "--tta -1: -1 must be at least
    0"."""
    for name, rule in rules.items():
        value = getattr(args, name, None)
        if value is not None:
            shown = " ".join(map(str, value)) if isinstance(value, list) else value
            check_value(value, rule, f"--{name.replace('_', '-')} {shown}")


OPTION_RULES = {  # per action of the shared command line; an option that sets a config key
    # checks that key's own rules
    "kfold": {"folds": rules_of(KFoldConfig, "folds")},
    "predict": {"tta": rules_of(PredictConfig, "tta")},
    "ensemble": {"weights": {"min": 0.0}},
    "average": {"last": {"min": 1}, "best": {"min": 1}},
    "tune": {"trials": rules_of(TuneConfig, "trials"), "timeout": rules_of(TuneConfig, "timeout"),
             "workers": {"min": 1}, "folds": {"min": 0}, "ensemble_top": {"min": 0}},
}


def _add_train_parser(sub, task_name: str, action: str, help: str, description: str):
    p = sub.add_parser(action, help=help, description=description)
    g = p.add_argument_group("recipe")
    g.add_argument("--config", metavar="FILE",
                   help=f"TOML recipe (default: configs/{task_name}.toml, the best recipe)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                   help="override one config key, e.g. --set optim.lr=1e-3 (repeatable)")
    g = p.add_argument_group("data and output")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="DIR", help=f"data folder (default: data/{task_name})")
    src.add_argument("--demo", action="store_true",
                     help=f"use synthetic demo data (written to data/demo/{task_name} if absent)")
    g.add_argument("--out", metavar="DIR",
                   help=f"run directory (default: runs/{task_name}/<timestamp>-<config name>)")
    g = p.add_argument_group("control")
    g.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run exactly, from its checkpoints/last.pt")
    g.add_argument("--dry-run", action="store_true",
                   help="a tiny slice of everything end to end (one epoch of two batches)")
    return p


def _add_task_parser(sub, name: str, title: str, commands: dict) -> None:
    p = sub.add_parser(name, help=title, description=title)
    p.set_defaults(homework=name)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for command, (help_text, _) in commands.items():  # the homework's own actions
        actions.add_parser(command, help=help_text)  # listed in --help; run by _command
    _add_train_parser(actions, name, "train",
                      "train, then predict the test set with the best checkpoint",
                      "Train a model and write the submission into the run directory.",
                      ).set_defaults(func=_train)
    kf = _add_train_parser(
        actions, name, "kfold", "train one model per fold on train+valid and fuse them",
        "Merge train and valid, split into K folds, train one model per fold under "
        "<run>/fold-<k>/, report out-of-fold metrics and write the fused submission. "
        "--resume continues the unfinished folds.")
    kf.add_argument("--folds", type=int, metavar="K", help="number of folds (kfold.folds)")
    kf.set_defaults(func=_train)
    pr = actions.add_parser("predict", help="write the submission again from a run's checkpoint")
    pr.set_defaults(func=_predict)
    pr.add_argument("--run", required=True, metavar="RUN_DIR",
                    help="a run directory, or a k-fold run (every fold predicts, then fused)")
    pr.add_argument("--ckpt", metavar="best|last|PATH",
                    help="checkpoint (default: the run's predict.ckpt, as train used it: best "
                    "unless the recipe says last)")
    pr.add_argument("--data", metavar="DIR", help="data folder (default: the run's data.dir)")
    pr.add_argument("--tta", type=int, metavar="N",
                    help="test-time augmented views besides the plain one (predict.tta)")
    pr.add_argument("--out", metavar="DIR",
                    help="where to write (default: the run itself; a single run only)")
    add_safety_flags(pr, running=True)
    en = actions.add_parser(
        "ensemble", help="fuse the saved test outputs of several runs or folds",
        description="Fuse test predictions of finished runs, k-fold runs or single folds "
        "without retraining, and write one submission.")
    en.set_defaults(func=_ensemble)
    en.add_argument("members", nargs="+", metavar="RUN_DIR",
                    help="run, k-fold or fold directories (or test_outputs.pt files)")
    en.add_argument("--method", choices=METHODS,
                    help="classes: mean-prob (default), mean-logit or vote (ties: summed "
                    "probability, then lowest class); regression: mean; anomaly scores: rank "
                    "(default), zscore or mean")
    en.add_argument("--weights", type=float, nargs="+", metavar="W",
                    help="one weight per member (normalised; default equal)")
    en.add_argument("--data", metavar="DIR", help="data folder (default: the first member's)")
    en.add_argument("--out", metavar="DIR",
                    help=f"output directory (default: runs/{name}/<timestamp>-ensemble)")
    add_safety_flags(en, running=True)
    av = actions.add_parser(
        "average", help="average a run's last (or best) N checkpoints into one model and predict",
        description="Average the weights of the last N checkpoints a run kept "
        "(trainer.keep_checkpoints), or of the N best by its monitored metric "
        "(trainer.keep_best_checkpoints), save checkpoints/average-last<N>.pt (or "
        "average-best<N>.pt) and write the submission into RUN_DIR/average-last<N>/.")
    av.set_defaults(func=_average)
    av.add_argument("run", metavar="RUN_DIR", help="a finished run directory")
    which = av.add_mutually_exclusive_group(required=True)
    which.add_argument("--last", type=int, metavar="N", help="the newest N kept checkpoints")
    which.add_argument("--best", type=int, metavar="N",
                       help="the N kept checkpoints with the best monitored metric")
    av.add_argument("--data", metavar="DIR", help="data folder (default: the run's data.dir)")
    add_safety_flags(av)
    tu = _add_train_parser(
        actions, name, "tune", "an Optuna study over the recipe's [tune.space]",
        "Run an Optuna study: each trial is an ordinary run under <study>/trials/ with "
        "overrides sampled from the recipe's [tune.space]; the objective is the monitored "
        "metric (or the out-of-fold one with --folds). The study lives in <study>/study.db "
        "(SQLite) unless --storage names another database; --resume continues it.")
    tu.set_defaults(func=_tune)
    tu.add_argument("--trials", type=int, metavar="N",
                    help="trials the study should hold, finished or pruned (tune.trials)")
    tu.add_argument("--timeout", type=float, metavar="S",
                    help="stop starting trials after S seconds (tune.timeout)")
    tu.add_argument("--sampler", choices=("tpe", "random"), help="tune.sampler (default tpe)")
    tu.add_argument("--pruner", choices=("median", "hyperband", "none"),
                    help="tune.pruner (default median)")
    tu.add_argument("--storage", metavar="URL",
                    help="an Optuna storage URL shared by several processes or machines, e.g. "
                    "postgresql://user:pass@host/db (default: sqlite in the study folder)")
    tu.add_argument("--study-name", metavar="NAME",
                    help="the study's name in the storage (default: the study folder's name)")
    tu.add_argument("--workers", type=int, default=1, metavar="N",
                    help="processes on this machine working on the study")
    tu.add_argument("--folds", type=int, default=0, metavar="K",
                    help="objective: the out-of-fold metric of K-fold runs")
    tu.add_argument("--ensemble-top", type=int, default=0, metavar="K",
                    help="fuse the test outputs of the best K trials at the end")
    dl = actions.add_parser("download", help="download the data with the kaggle CLI",
                            description="Download and extract the competition's data with the "
                            "kaggle CLI (installed and configured with your API token).")
    dl.add_argument("--dest", metavar="DIR", help=f"destination (default: data/{name})")
    dl.set_defaults(func=_download)
    dd = actions.add_parser("demo-data", help="write the synthetic demo data set")
    dd.add_argument("--dest", metavar="DIR", help=f"destination (default: data/demo/{name})")
    dd.set_defaults(func=_demo_data)


def build_parser(tasks: TaskRegistry, titles: dict[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run.py", description="NTU ML 2022 homework runner")
    sub = parser.add_subparsers(dest="task", required=True, metavar="COMMAND")
    sub.add_parser("list", help="list the homeworks").set_defaults(func=_list)
    rp = sub.add_parser("runs", help="every run under runs/ as a table",
                        description="Every run under runs/ (or --root): name, date, state, "
                        "what its config changes against the homework's default recipe, its "
                        "best monitored metric and where.")
    rp.set_defaults(func=_runs)
    rp.add_argument("--hw", metavar="HW", help="one homework only")
    rp.add_argument("--sort", metavar="METRIC", help="sort by this metric (e.g. valid_acc)")
    rp.add_argument("--root", default="runs", metavar="DIR", help="where runs live (runs)")
    cp = sub.add_parser("compare", help="overlay runs' validation curves, diff their configs",
                        description="Overlay the validation curves of runs in one PNG and "
                        "print their config differences side by side.")
    cp.set_defaults(func=_compare)
    cp.add_argument("runs", nargs="+", metavar="RUN_DIR")
    cp.add_argument("--metric", metavar="M", help="the curve to draw (default: the first "
                    "run's trainer.monitor)")
    cp.add_argument("--out", metavar="FILE", help="the PNG (default: compare.png here)")
    cp.add_argument("--allow-running", action="store_true",
                    help="also draw runs that are still training (their curves so far)")
    nw = sub.add_parser("new", help="scaffold a new homework package that trains on demo data",
                        description="Write hw/NAME/ (or hw/PKG/: data.py, model.py, "
                        "task.py, README.md, the HOMEWORK entry), configs/NAME.toml and "
                        "NAME_cpu.toml and tests/hw/NAME/test_NAME.py; "
                        "`NAME train --demo` works right after. Writes nothing if any of them "
                        "exists.")
    nw.set_defaults(func=_new)
    nw.add_argument("name", metavar="NAME", help="the homework's command name, e.g. hw8")
    nw.add_argument("--kind", required=True, choices=tuple(KINDS),
                    help="the task's shape")
    nw.add_argument("--title", default="", help="one line for `list`")
    nw.add_argument("--package", default="", metavar="PKG",
                    help="the package's folder name under hw/ (default: NAME), e.g. "
                    "hw8_anomaly for the command hw8")
    nw.add_argument("--root", default=".", metavar="DIR",
                    help="the checkout to write into (default: the current folder)")
    for name in tasks:
        if name in sub.choices:  # a homework may not shadow a shared command (list, runs, ...)
            warn_user(f"homework {name!r} has the name of a shared command; it is left out "
                      "(rename it)")
            continue
        _add_task_parser(sub, name, titles.get(name, name),
                         getattr(tasks[name], "commands", {}))
    return parser


def demo_dir(task_cls: type[Task], dest: str | None = None) -> Path:
    """The demo data folder, written once (generation is deterministic) and again when the
    homework's generator changed (its `demo_version`, kept in the folder's marker)."""
    path = Path(dest or f"data/demo/{task_cls.name}")
    marker = path / ".complete"
    done = "demo data complete" + (f" (version {task_cls.demo_version})"
                                   if task_cls.demo_version > 1 else "") + "\n"
    found = marker.read_text() if marker.is_file() else None
    if found != done and distributed.is_main():
        if found is None and path.is_dir() and any(path.iterdir()):
            raise UserError(f"{path}: holds files but no finished demo data; remove it or "
                            "choose another --dest")
        if found is not None:
            say(f"{path}: demo data of an older generator; writing it again")
        with building_folder(path, replace=True) as stage:  # whole, or not there at all
            task_cls.write_demo_data(stage)
            (stage / ".complete").write_text(done)
    distributed.barrier()  # under torchrun the other ranks wait for rank 0's files
    return path


def resolve_recipe(task_cls: type[Task], config: str | None, overrides: list[str], *,
                   homework=None, demo: bool = False, data: str | None = None
                   ) -> tuple[Config, Path, list[str]]:
    """The recipe a command runs: --config, else the homework's <hw>.toml from its recipes
    folder (its demo recipe under --demo; a one-line error when that file is absent), then the
    --set overrides and the data folder of --demo / --data, stored absolute so predict and
    --resume work from anywhere. Returns (config, its file, the overrides as applied)."""
    demo_recipe = getattr(homework, "demo_config", "")
    default = demo_recipe if demo and demo_recipe else task_cls.name
    path = Path(config) if config else recipe_path(homework, default)
    overrides = list(overrides)
    if demo or data:
        data_dir = demo_dir(task_cls) if demo else Path(data)
        overrides.append(f"data.dir={toml_value(str(data_dir.resolve()))}")
    return load_config(task_cls.schema(), path, overrides), path, overrides


def _train(args) -> int:
    """`<hw> train` and `<hw> kfold`: a new run from the recipe, or --resume one."""
    task_cls, kfold = args.task_cls, args.action == "kfold"
    if args.resume:
        if args.config or args.overrides or args.data or args.demo or args.out or \
                getattr(args, "folds", None):
            raise UserError("--resume continues a run with its saved config.toml and data; "
                            "pass --resume RUN_DIR alone")
        run_dir = Path(args.resume)
        RunDir(run_dir).check_writable()
        check_not_running(run_dir)
        check_run_kind(run_dir, task_cls.name, args.action)
        marker = RunDir(run_dir).config if kfold else RunDir(run_dir).last
        if not marker.is_file():
            raise UserError(f"{run_dir}: no {marker.relative_to(run_dir)} to resume from; "
                            "start a new run")
        config = load_run_config(task_cls, run_dir)
    else:
        overrides = list(args.overrides)
        if kfold and args.folds is not None:
            overrides.append(f"kfold.folds={args.folds}")
        config, config_path, _ = resolve_recipe(task_cls, args.config, overrides,
                                                homework=args.homework, demo=args.demo,
                                                data=args.data)
        if args.dry_run:
            config = dry_run_config(config)
        name = config_path.stem
        name += "-kfold" if kfold else ""
        name += "-demo" if args.demo else ""
        name += "-dryrun" if args.dry_run else ""
        run_dir = Path(args.out) if args.out else RunDir.new("runs", task_cls.name, name).path
        run_dir = distributed.broadcast_object(run_dir)  # one name for every rank
        RunDir(run_dir).check_writable()
        check_not_running(run_dir, " or choose another --out")
        if RunDir(run_dir).config.is_file():
            raise UserError(f"{run_dir}: already holds a run; continue it with "
                            f"{task_cls.name} {run_kind(run_dir)} --resume {run_dir} or choose "
                            "another --out")
    data_dir_of(task_cls(config), getattr(args.homework, "download_hint", ""))
    resume_hint = f"{command_name()} {task_cls.name} {args.action} --resume {run_dir}"
    try:
        with owning(run_dir, command_line()):
            if kfold:
                result = kfold_run(task_cls, config, run_dir, resume=bool(args.resume))
            else:
                result = train_run(task_cls, config, run_dir, resume=bool(args.resume))
    except KeyboardInterrupt as exc:
        print(f"{interrupted(exc)}; continue with: {resume_hint}", file=sys.stderr)
        return getattr(exc, "exit_status", 130)
    except OSError as exc:  # a write failed mid-run: disk full, permissions
        if exc.errno not in WRITE_ERRORS:
            raise
        kept = RunDir(run_dir).last.is_file() or (kfold and RunDir(run_dir).config.is_file())
        then = f"the last good checkpoint is kept; fix it and continue with: {resume_hint}" \
            if kept else "nothing to resume yet; fix it and start again"
        raise UserError(f"{exc.filename or run_dir}: cannot write ({exc.strerror or exc}); "
                        f"{then}") from None
    if kfold:
        say("out-of-fold " + " ".join(f"{k} {v:.5g}" for k, v in result["oof"].items()))
    elif result["best"] is not None:
        say(f"best {config['trainer'].monitor}: {result['best']:.5g}")
    if result["submission"] is None:
        return 0
    say(f"submission: {result['submission']}")
    if distributed.is_main():
        handoff(args.homework, result["submission"], Path(run_dir).name)
    if args.demo and distributed.is_main():  # rank 0 wrote the submission
        demo_summary(task_cls, config, run_dir, result["submission"], args.homework)
    return 0


def _tune(args) -> int:
    """`<hw> tune`: start a study (its folder, study.json) or continue one (--resume)."""
    task_cls = args.task_cls
    if args.folds == 1:
        raise UserError("--folds 1: 1 fold trains on nothing held out; use 0 (the "
                        "monitored metric) or at least 2")
    if args.resume:
        if args.config or args.overrides or args.data or args.demo or args.out:
            raise UserError("--resume continues a study with its saved study.json; pass "
                            "--resume STUDY_DIR (with --workers, --trials or --timeout at most)")
        check_not_running(Path(args.resume))
        study = Study.load(Path(args.resume))
        for key in ("trials", "timeout"):
            if getattr(args, key) is not None:
                setattr(study, key, getattr(args, key))
    else:
        config, config_path, overrides = resolve_recipe(task_cls, args.config, args.overrides,
                                                        homework=args.homework,
                                                        demo=args.demo, data=args.data)
        parse_space(config["tune"].space, task_cls.schema())  # a bad space: one line, now
        data_dir_of(task_cls(config), getattr(args.homework, "download_hint", ""))
        cfg = config["tune"]
        name = f"{config_path.stem}-tune" + ("-demo" if args.demo else "")
        folder = Path(args.out) if args.out else RunDir.new("runs", task_cls.name, name).path
        if (folder / "study.json").exists():
            raise UserError(f"{folder}: already holds a study; continue it with --resume "
                            f"{folder} or choose another --out")
        RunDir(folder).check_writable()
        if args.storage:
            check_storage(args.storage)
        folder.mkdir(parents=True, exist_ok=True)
        study = Study(task=task_cls.name, config=str(config_path), overrides=overrides,
                      folder=str(folder.resolve()),
                      storage=args.storage or f"sqlite:///{(folder / 'study.db').resolve()}",
                      name=args.study_name or folder.name,
                      trials=args.trials or cfg.trials,
                      timeout=args.timeout if args.timeout is not None else cfg.timeout,
                      sampler=args.sampler or cfg.sampler, pruner=args.pruner or cfg.pruner,
                      seed=cfg.seed, folds=args.folds, startup_trials=cfg.startup_trials,
                      warmup_evals=cfg.warmup_evals, dry_run=args.dry_run)
        study.save()
    say(f"study: {study.folder} ({study.storage}, {study.trials} trials, {study.sampler}, "
        f"pruner {study.pruner})")
    try:
        with owning(Path(study.folder), command_line()):
            result = tune(task_cls, study, resume=bool(args.resume), workers=args.workers,
                          task_path=f"{task_cls.__module__}:{task_cls.__name__}",
                          ensemble_top=args.ensemble_top)
    except KeyboardInterrupt as exc:
        print(f"{interrupted(exc)}; continue the study with: {command_name()} "
              f"{task_cls.name} tune --resume {study.folder}", file=sys.stderr)
        return getattr(exc, "exit_status", 130)
    print(format_table(result["table"]))
    say(f"trials: {Path(study.folder) / 'trials.csv'}")
    if result["best"] is not None:
        best = result["best"]
        say(f"best: trial {best.number}, value {best.value:.5g}, run "
            f"{best.user_attrs.get('run_dir')}")
    if result["ensemble"] is not None:
        say(f"ensemble of the best {args.ensemble_top}: {result['ensemble']}")
        handoff(args.homework, result["ensemble"], Path(study.folder).name)
    return 0


def run_kind(run_dir: Path) -> str:
    """The command a run folder belongs to: kfold (folds.csv or fold-<k>/) or train."""
    run = RunDir(run_dir)
    return "kfold" if run.is_kfold() or run.fold_dirs() else "train"


def check_run_kind(run_dir: Path, hw: str, action: str) -> None:
    """`train --resume` takes a train run and `kfold --resume` a k-fold run: the other kind
    would start a run of the wrong kind inside it."""
    if RunDir(run_dir).config.is_file() and run_kind(run_dir) != action:
        raise UserError(f"{run_dir}: a {run_kind(run_dir)} run, not a {action} run; continue it "
                        f"with {hw} {run_kind(run_dir)} --resume {run_dir}")


def command_name() -> str:
    """How the user called us: `mlhw` or `python scripts/run.py`."""
    prog = Path(sys.argv[0]).name
    return prog if prog == "mlhw" else f"python {sys.argv[0]}"


def demo_summary(task_cls: type[Task], config: Config, run_dir: Path, submission: Path,
                 homework=None) -> None:
    """Where things went, how good the result is on the demo's answer key (beside the course
    sample's, from the homework's entry), what to try next."""
    recipes = getattr(homework, "recipes", None)
    baseline = getattr(homework, "demo_baseline", "")
    hint = getattr(homework, "download_hint", "")
    cmd = f"{command_name()} {task_cls.name}"
    data_dir = Path(config["data"].dir)
    say(f"demo data: {data_dir} (synthetic, in the real layout)")
    say(f"run: {run_dir} (metrics.csv, curves.png, log.txt, checkpoints/)")
    score = task_cls.demo_score(submission, data_dir, config)
    if score:
        say("demo test score (against the demo's answer key): "
            + " ".join(f"{k} {v:.4g}" for k, v in score.items())
            + (f"; the course sample: {baseline}" if baseline else ""))
    sample = Path(recipes or ".") / f"{task_cls.name}_sample.toml"
    if recipes and sample.is_file():
        shown = sample.resolve()
        with contextlib.suppress(ValueError):   # as typed from here, when it lies below
            shown = shown.relative_to(Path.cwd())
        say(f"next: compare the course sample: {cmd} train --demo --config {shown}")
    say(f"next: the real data: {cmd} train --data data/{task_cls.name} "
        f"(download: {hint or 'see data/README.md'})")
    if task_cls.output_kind in FUSABLE:
        say(f"      folds and an ensemble: {cmd} kfold --demo --folds 5")


def main(tasks: TaskRegistry, argv: list[str] | None = None) -> int:
    """Parse argv and run the subcommand's handler (each subparser's `func`) inside the one
    error boundary; a homework's own command parses its own options."""
    titles = {name: getattr(loader, "title", name) for name, loader in tasks.items()}
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) >= 2 and argv[1] in getattr(tasks.get(argv[0]), "commands", {}):
        return guarded(_command, tasks[argv[0]], argv)
    args = build_parser(tasks, titles).parse_args(argv)
    args.tasks = tasks
    distributed.init_from_env()  # under torchrun: join the process group
    try:
        return guarded(_dispatch, args)
    finally:
        distributed.shutdown()


def _dispatch(args) -> int:
    """The parsed subcommand's handler; `<hw> <action>` gets the homework's entry and task
    class, its numeric options checked first."""
    if getattr(args, "homework", None) is not None:
        args.homework = args.tasks[args.homework]
        args.task_cls = args.homework()
        check_options(args, OPTION_RULES.get(args.action, {}))
    return args.func(args)


def guarded(func: Callable[..., int], *args) -> int:
    """The command line's one error boundary: a user's error is one line and exit 2 (a write
    that the disk or folders refused is one), Ctrl-C exits 130; anything else is a bug and is
    raised as it is."""
    try:
        return func(*args)
    except OSError as exc:
        return _report(write_error(exc))
    except UserError as exc:
        return _report(exc)
    except KeyboardInterrupt as exc:
        print(f"{interrupted(exc)}; nothing was replaced (continue a run with --resume RUN_DIR)",
              file=sys.stderr)
        return getattr(exc, "exit_status", 130)


def interrupted(exc: KeyboardInterrupt) -> str:
    """'interrupted' for Ctrl-C, 'stopped by SIGTERM' for a signal."""
    return f"stopped by {exc.name}" if isinstance(exc, Terminated) else "interrupted"


def _list(args) -> int:
    for name, entry in args.tasks.items():
        print(f"{name:6s} {getattr(entry, 'title', name)}")
    return 0


def _new(args) -> int:
    written = new(args.name, args.kind, Path(args.root),
                  taken=set(args.tasks) | set(SHARED_COMMANDS),
                  title=args.title, package=args.package)
    for path in written:
        say(f"wrote {path}")
    say(f"next: python scripts/run.py {args.name} train --demo; python -m pytest {written[-1]}")
    return 0


def _runs(args) -> int:
    from common.experiments import runs as run_table

    return run_table.runs_command(args.tasks, args.root, hw=args.hw, sort=args.sort)


def _compare(args) -> int:
    from common.experiments import runs as run_table

    check_readable([Path(r) for r in args.runs], args.allow_running)
    return run_table.compare_command(args.tasks, args.runs, metric=args.metric, out=args.out)


def _download(args) -> int:
    from common.experiments.handoff import download

    task_cls = args.task_cls
    say(f"data: {download(args.homework, Path(args.dest or f'data/{task_cls.name}'))}")
    return 0


def add_safety_flags(parser: argparse.ArgumentParser, *, running: bool = False) -> None:
    """--force (replace a finished submission) and, for readers of runs, --allow-running."""
    parser.add_argument("--force", action="store_true",
                        help="replace a submission already in the output folder")
    if running:
        parser.add_argument("--allow-running", action="store_true",
                            help="read a run that is still training (its checkpoint or "
                            "outputs as they are now, said loudly)")


def check_readable(runs: list[Path], allow_running: bool) -> None:
    """Runs still being written are refused, or with --allow-running named loudly."""
    for run in runs:
        if allow_running:
            owner = holder(run)
            if owner is not None:
                warn_user(f"{run} is still being written by {describe(owner)}: using its "
                          "files as they are now, not the run's final result")
        else:
            check_not_running(run, ", or pass --allow-running to use it as it is now")


def check_replace(out: Path, name: str, force: bool, flag: str = "--out") -> None:
    """A finished file in the output folder is replaced only with --force."""
    RunDir(out).check_writable(flag)
    if (out / name).exists() and not force:
        raise UserError(f"{out / name}: exists (a finished submission); pass --force to "
                        f"replace it, or {flag} DIR to write elsewhere")


def _predict(args) -> int:
    run = Path(args.run)
    kfold = RunDir(run).is_kfold()
    if kfold and args.out:
        raise UserError(f"{run}: a k-fold run predicts into its own folds; drop --out")
    check_readable([run], args.allow_running)
    out = Path(args.out) if args.out else run
    if args.allow_running and out.resolve() == run.resolve():
        raise UserError(f"{run}: still training; --allow-running needs --out DIR (the run's "
                        "own folder is its trainer's)")
    check_replace(out, args.task_cls.submission_name, args.force)
    with owning(out, command_line()):
        if kfold:
            path = predict_kfold(args.task_cls, run, ckpt=args.ckpt, data_dir=args.data,
                                 tta=args.tta)
        else:
            path = predict_run(args.task_cls, run, ckpt=args.ckpt, data_dir=args.data,
                               tta=args.tta, out_dir=out)
    say(f"submission: {path}")
    handoff(args.homework, path, out.name)
    return 0


def _ensemble(args) -> int:
    out = Path(args.out) if args.out else RunDir.new("runs", args.task_cls.name, "ensemble").path
    members = [Path(m) for m in args.members]
    check_readable([m if m.is_dir() else m.parent for m in members], args.allow_running)
    check_replace(out, args.task_cls.submission_name, args.force)
    with owning(out, command_line()):
        path = ensemble_run(args.task_cls, args.members, out, method=args.method,
                            weights=args.weights, data_dir=args.data)
    say(f"submission: {path}")
    handoff(args.homework, path, out.name)
    return 0


def _average(args) -> int:
    select = "best" if args.best is not None else "last"
    count = args.best if select == "best" else args.last
    check_replace(Path(args.run) / f"average-{select}{count}", args.task_cls.submission_name,
                  args.force, flag="--last/--best N")
    with owning(args.run, command_line(), flag="run"):
        path = average_run(args.task_cls, args.run, count, select=select, data_dir=args.data)
    say(f"submission: {path}")
    handoff(args.homework, path, Path(args.run).name)
    return 0


def _demo_data(args) -> int:
    say(f"demo data: {demo_dir(args.task_cls, args.dest)}")
    return 0


def _command(homework, argv: list[str]) -> int:
    """Run `<hw> <command> ...` with the homework's function(argv, homework), argv[0] its
    program's name."""
    module, function = homework.commands[argv[1]][1].split(":")
    run = getattr(importlib.import_module(module), function)
    return run([f"{command_name()} {argv[0]} {argv[1]}", *argv[2:]], homework)


def write_error(exc: OSError) -> UserError:
    """A failed write that the user's disk or folders caused (full, too large, no permission,
    read-only, a file in the way) as one line; anything else is a bug and raised as it is."""
    if exc.errno not in WRITE_ERRORS:
        raise exc
    return UserError(f"{exc.filename or 'output'}: cannot write ({exc.strerror or exc}); "
                     "free space or choose a writable folder and try again")


def _report(exc: UserError) -> int:
    rank = f"[rank {distributed.rank()}] " if distributed.world_size() > 1 else ""
    print(f"{rank}error: {exc}", file=sys.stderr)
    return 2
