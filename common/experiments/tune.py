"""Hyperparameter studies on Optuna: every trial is an ordinary run (its own run directory
under the study folder, its config saved) whose overrides Optuna samples from the `[tune.space]`
of the recipe; the objective is the run's monitored metric (or the out-of-fold metric with
folds); every evaluation (every fold of a k-fold trial) is reported, so the pruner stops
unpromising trials early.

The study lives in an SQLite file in the study folder unless a storage URL names another
database (PostgreSQL, MySQL): Optuna's own way for several processes or machines to share one
study. A killed study continues with resume: finished trials are kept, the interrupted one is
marked failed and its parameters are tried again."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.core.config import (
    Config,
    build_config,
    field_types,
    load_config,
    parse_override,
    toml_value,
)
from common.core.errors import UserError
from common.core.io import write_csv_atomic, write_text_atomic
from common.engine.runlog import say
from common.engine.trainer import Callback
from common.experiments.finished import ensemble_run
from common.experiments.kfold import kfold_run, oof_value
from common.experiments.pipeline import dry_run_config, train_run

if TYPE_CHECKING:
    from common.engine.task import Task

STUDY_FILE = "study.json"      # how the study was started: what resume needs
TRIALS_CSV = "trials.csv"


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("tune needs Optuna: pip install optuna (or pip install -e '.[tune]')") \
            from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for handler in optuna.logging.get_logger("optuna").handlers:
        if not any(isinstance(f, _NotForAnInterrupt) for f in handler.filters):
            handler.addFilter(_NotForAnInterrupt())
    return optuna


class _NotForAnInterrupt:
    """Drops Optuna's two "Trial N failed" warnings (a 30-line traceback) for a trial that
    Ctrl-C or a stop signal ended: the command line says that in one line."""

    def __init__(self):
        self.trials: set[str] = set()

    def filter(self, record) -> bool:
        text = record.getMessage()
        trial = text.split()[1] if text.startswith("Trial ") else ""
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self.trials.add(trial)
            return False
        return not (trial in self.trials and "failed with value" in text)


def check_storage(url: str) -> None:
    """Open a storage URL once, before a study folder exists: a bad one is one line."""
    optuna = _optuna()
    try:
        optuna.storages.RDBStorage(url)
    except Exception as exc:  # SQLAlchemy's and the drivers' own errors, of many types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"--storage {url}: cannot open it ({reason}); give a database URL "
                        "such as sqlite:///study.db or postgresql://user:pass@host/db") from None


# --------------------------------------------------------------------------- the space
def parse_space(space: dict[str, Any], schema: dict[str, type]) -> dict[str, dict[str, Any]]:
    """`[tune.space]`: "section.key" = { low, high[, log, step] } (ints for an integer key,
    floats for a float key) or { choices = [any TOML values] }. Checked against the schema
    before any study exists: the key, the type of the bounds, and every bound and choice with
    the same rules a --set of that value meets."""
    parsed = {}
    for key, spec in space.items():
        where = f"tune.space.{key}"
        if len(key.split(".")) != 2 or key.split(".")[0] not in schema or key.startswith("tune."):
            raise UserError(f"{where}: the key must name a config key as section.key "
                            "(e.g. \"optim.lr\")")
        if not isinstance(spec, dict):
            raise UserError(f"{where}: expected {{ low = .., high = .. }} or {{ choices = [..] }}")
        unknown = set(spec) - {"choices", "low", "high", "log", "step", "float"}
        if unknown:
            raise UserError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        section, name = key.split(".")
        types_ = field_types(schema[section])
        if name not in types_:
            raise UserError(f"{where}: {key} is not a config key; valid keys in [{section}]: "
                            f"{', '.join(types_)}")
        if "choices" in spec:
            if not isinstance(spec["choices"], list) or not spec["choices"]:
                raise UserError(f"{where}: choices must be a non-empty list")
            for choice in spec["choices"]:
                _check_setting(schema, key, choice)
            parsed[key] = {"choices": spec["choices"]}
        elif "low" in spec and "high" in spec:
            low, high = spec["low"], spec["high"]
            if not all(isinstance(v, int | float) and not isinstance(v, bool)
                       for v in (low, high)) or not low < high:
                raise UserError(f"{where}: low and high must be numbers with low < high")
            kind = {int: "int", float: "float"}.get(types_[name])
            if kind is None:
                raise UserError(f"{where}: {key} is not a number; give it {{ choices = [..] }}")
            if kind == "int" and not all(isinstance(v, int) for v in (low, high)):
                raise UserError(f"{where}: {key} is an integer; give integer low and high "
                                f"(not {low!r}, {high!r})")
            step = spec.get("step")
            if step is not None and (isinstance(step, bool) or not isinstance(step, int | float)
                                     or step <= 0 or (kind == "int" and
                                                      not isinstance(step, int))):
                raise UserError(f"{where}: step must be a positive {kind}")
            log = bool(spec.get("log", False))
            if log and low <= 0:
                raise UserError(f"{where}: a log range needs low > 0")
            if log and step is not None:
                raise UserError(f"{where}: a log range takes no step")
            for bound in (low, high):
                _check_setting(schema, key, bound)
            parsed[key] = {"kind": kind, "low": low, "high": high, "log": log, "step": step}
        else:
            raise UserError(f"{where}: expected {{ low = .., high = .. }} or {{ choices = [..] }}")
    if not parsed:
        raise UserError("tune: the recipe has no [tune.space]; add e.g. "
                        "\"optim.lr\" = { low = 1e-4, high = 1e-2, log = true }")
    return parsed


def _check_setting(schema: dict[str, type], key: str, value: Any) -> None:
    """Refuse, in one line naming the space's key, a value a --set of `key` would refuse."""
    section, name = key.split(".")
    build_config(schema, {section: {name: value}}, origins={key: f"tune.space.{key}"})


def suggest(trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One value per key; categorical values travel through Optuna as their TOML text."""
    values = {}
    for key, spec in space.items():
        if "choices" in spec:
            text = trial.suggest_categorical(key, [toml_value(c) for c in spec["choices"]])
            values[key] = parse_override(f"{key}={text}")[2]
        elif spec["kind"] == "int":
            values[key] = trial.suggest_int(key, spec["low"], spec["high"], log=spec["log"],
                                            step=spec["step"] or 1)
        else:
            values[key] = trial.suggest_float(key, spec["low"], spec["high"], log=spec["log"],
                                              step=spec["step"])
    return values


# --------------------------------------------------------------------------- a study
@dataclass
class Study:
    """Everything a worker needs, saved as study.json so that resume and other workers rebuild
    it exactly."""

    task: str                 # the task registry's name
    config: str | None        # the recipe file
    overrides: list[str]      # --set and the data folder, as overrides
    folder: str
    storage: str
    name: str
    trials: int
    timeout: float
    sampler: str
    pruner: str
    seed: int
    folds: int
    startup_trials: int
    warmup_evals: int
    dry_run: bool = False     # every trial a tiny slice (pipeline.dry_run_config)

    def save(self) -> None:
        write_text_atomic(Path(self.folder) / STUDY_FILE,
                          json.dumps(self.__dict__, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Study:
        path = Path(folder) / STUDY_FILE
        if not path.is_file():
            raise UserError(f"{path}: not found; --resume takes a study folder that tune made")
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def report(trial, value: float, step: int, what: str) -> None:
    """One intermediate value to Optuna (NaN as it is: the pruners stop it); raises
    TrialPruned when the pruner says so."""
    trial.report(float(value) if value == value else math.nan, step)
    if trial.should_prune():
        say(f"pruned by Optuna after {what} ({value:.5g})")
        raise _optuna().TrialPruned(f"{what}: {value}")


class ReportToOptuna(Callback):
    """A plain trial reports every evaluation's monitored value (a row without it, as at the
    end of an epoch with no validation data, is not an evaluation)."""

    def __init__(self, trial, monitor: str):
        self.trial, self.monitor, self.evals = trial, monitor, 0

    def on_evaluate(self, trainer, metrics, outputs):
        if self.monitor not in metrics:
            return
        self.evals += 1
        report(self.trial, metrics[self.monitor], self.evals - 1,
               f"evaluation {self.evals}, {self.monitor}")


class ReportFolds:
    """A k-fold trial reports, after each fold, the mean of its folds' held-out metric so far
    (the folds are the same for every trial, so fold k compares like with like)."""

    def __init__(self, trial, monitor: str):
        self.trial, self.monitor, self.values = trial, monitor, []

    def __call__(self, k: int, metrics: dict[str, float]) -> None:
        self.values.append(oof_value(metrics, self.monitor))
        report(self.trial, sum(self.values) / len(self.values), k - 1,
               f"fold {k}, mean held-out {self.monitor.removeprefix('valid_')}")


class NoObjective(UserError):
    """A trial that has no objective value: every trial would be the same, so the study stops."""


def base_config(task_cls: type[Task], study: Study) -> Config:
    return load_config(task_cls.schema(), study.config, study.overrides)


def make_sampler(study: Study, seed: int):
    optuna = _optuna()
    if study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=study.startup_trials)


def open_study(task_cls: type[Task], study: Study, stream: int = 0):
    """The Optuna study. A fresh one samples from tune.seed; one that already holds trials
    (a resume), or another worker process (stream > 0), seeds its sampler from the seed, the
    trials so far and the stream, so it does not draw the same parameters again."""
    optuna = _optuna()
    config = base_config(task_cls, study)
    direction = "maximize" if config["trainer"].mode == "max" else "minimize"
    sampler = make_sampler(study, study.seed)
    if study.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=study.startup_trials,
                                             n_warmup_steps=study.warmup_evals)
    elif study.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=max(1, study.warmup_evals))
    else:
        pruner = optuna.pruners.NopPruner()
    kwargs = {"connect_args": {"timeout": 60}} if study.storage.startswith("sqlite") else {}
    storage = optuna.storages.RDBStorage(study.storage, engine_kwargs=kwargs)
    opened = optuna.create_study(storage=storage, study_name=study.name, direction=direction,
                                 sampler=sampler, pruner=pruner, load_if_exists=True)
    done = len(opened.get_trials(deepcopy=False))
    if done or stream:
        entropy = np.random.SeedSequence([study.seed, done, stream])
        opened.sampler = make_sampler(study, int(entropy.generate_state(1)[0]))
    return opened


def counted(study) -> int:
    """Trials that count toward --trials: finished (complete or pruned) and running ones."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                        TrialState.RUNNING)))


def run_trial(task_cls: type[Task], study: Study, trial) -> float:
    """One trial: its sampled overrides on top of the study's, an ordinary run directory."""
    schema = task_cls.schema()
    config = base_config(task_cls, study)
    space = parse_space(config["tune"].space, schema)
    params = suggest(trial, space)
    overrides = [*study.overrides, *(f"{k}={toml_value(v)}" for k, v in params.items())]
    config = load_config(schema, study.config, overrides)
    if study.dry_run:  # after the sampled values, which may set trainer.epochs
        config = dry_run_config(config)
    run_dir = Path(study.folder) / "trials" / f"trial-{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir))
    say(f"trial {trial.number}: " + " ".join(f"{k}={toml_value(v)}" for k, v in params.items()))
    monitor = config["trainer"].monitor
    if study.folds > 1:
        config["kfold"] = replace(config["kfold"], folds=study.folds)
        result = kfold_run(task_cls, config, run_dir, on_fold=ReportFolds(trial, monitor))
        value = oof_value(result["oof"], monitor)
    else:
        reporter = ReportToOptuna(trial, monitor)
        result = train_run(task_cls, config, run_dir, callbacks=[reporter])
        if not reporter.evals:
            raise NoObjective(f"tune: trial {trial.number} made no evaluation of {monitor}: "
                              "the recipe holds out no validation data; give it some (a "
                              "validation split) or tune with --folds K")
        value = result["best"] if result["best"] is not None else math.nan
    if value != value:  # diverged: as bad as it gets, pruned
        raise _optuna().TrialPruned(f"{monitor} is NaN")
    return float(value)


def work(task_cls: type[Task], study: Study, budget: int | None = None,
         stream: int = 0) -> None:
    """Run trials until the study holds study.trials counted ones (at most `budget` here) or
    the timeout passes. A trial whose sampled config is refused (a UserError) fails and the
    study goes on; three failures in a row stop it with the last error."""
    from optuna.trial import TrialState

    opened = open_study(task_cls, study, stream)
    start, done, failures = time.monotonic(), 0, 0
    errors: list[UserError] = []

    def objective(trial):
        try:
            return run_trial(task_cls, study, trial)
        except UserError as exc:
            trial.set_user_attr("error", str(exc))
            say(f"trial {trial.number} failed: {exc}")
            errors.append(exc)
            raise

    while counted(opened) < study.trials and (budget is None or done < budget):
        if study.timeout and time.monotonic() - start > study.timeout:
            break

        opened.optimize(objective, n_trials=1, catch=(UserError,))
        last = opened.trials[-1]
        failures = failures + 1 if last.state == TrialState.FAIL else 0
        if failures and isinstance(errors[-1], NoObjective):
            raise errors[-1]
        if failures >= 3:
            raise errors[-1] if errors else UserError("tune: three trials failed in a row")
        done += 1


def _worker(task_path: str, study: dict, budget: int, stream: int) -> None:
    import importlib

    module, cls = task_path.split(":")
    task_cls = getattr(importlib.import_module(module), cls)
    work(task_cls, Study(**study), budget, stream)


def retry_interrupted(task_cls: type[Task], study: Study) -> int:
    """Trials left RUNNING by a killed process: marked failed, their parameters queued again."""
    from optuna.trial import TrialState

    opened = open_study(task_cls, study)
    stale = opened.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        opened.tell(trial.number, state=TrialState.FAIL)
        opened.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return len(stale)


def tune(task_cls: type[Task], study: Study, *, resume: bool = False, workers: int = 1,
         task_path: str = "", ensemble_top: int = 0) -> dict:
    """Run (or continue) a study with `workers` processes here; then the trial table, the
    plots and, with ensemble_top, the fused submission of the best trials."""
    folder = Path(study.folder)
    if resume:
        retried = retry_interrupted(task_cls, study)
        if retried:
            say(f"{retried} interrupted trial(s) marked failed and queued again")
    opened = open_study(task_cls, study)
    left = max(0, study.trials - counted(opened))
    if workers > 1 and left:
        ctx = mp.get_context("spawn")
        shares = [left // workers + (i < left % workers) for i in range(workers)]
        procs = [ctx.Process(target=_worker, args=(task_path, study.__dict__, n, i))
                 for i, n in enumerate(shares[1:], 1) if n]
        for p in procs:
            p.start()
        try:
            work(task_cls, study, shares[0])
        finally:
            for p in procs:
                p.join()
    elif left:
        work(task_cls, study)
    opened = open_study(task_cls, study)
    table = trial_table(opened)
    write_csv_atomic(folder / TRIALS_CSV, list(table[0]) if table else ["number"],
                     [list(r.values()) for r in table])
    plots(opened, folder)
    best = best_trial(opened)
    result = {"study": opened, "table": table, "best": best, "ensemble": None}
    if ensemble_top and best is not None:
        top = top_trials(opened, ensemble_top)
        out = folder / f"ensemble-top{len(top)}"
        result["ensemble"] = ensemble_run(task_cls, [t.user_attrs["run_dir"] for t in top], out)
    return result


def trial_table(study) -> list[dict[str, Any]]:
    keys = sorted({k for t in study.trials for k in t.params})
    rows = []
    for t in study.trials:
        duration = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else math.nan
        rows.append({"number": t.number, **{k: t.params.get(k, "") for k in keys},
                     "value": t.value if t.value is not None else "", "state": t.state.name,
                     "duration_s": round(duration, 2), "run_dir": t.user_attrs.get("run_dir", "")})
    return rows


def best_trial(study):
    from optuna.trial import TrialState

    return study.best_trial if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) \
        else None


def top_trials(study, k: int):
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    reverse = study.direction.name == "MAXIMIZE"
    return sorted(done, key=lambda t: t.value, reverse=reverse)[:k]


def plots(study, folder: Path) -> list[Path]:
    """Optuna's optimisation history and parameter importances as PNG (when they can be
    drawn: importances need two finished trials)."""
    import warnings

    from optuna.visualization import matplotlib as vis

    from common.engine.plots import plt, save_figure

    written = []
    for name, draw in (("history", vis.plot_optimization_history),
                       ("importances", vis.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                ax = draw(study)
        except (ValueError, RuntimeError, ZeroDivisionError):
            plt.close("all")
            continue
        save_figure(ax.figure, folder / f"{name}.png")
        written.append(folder / f"{name}.png")
    return written


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no trials"
    cols = [c for c in rows[0] if c != "run_dir"]

    def cell(v):
        return f"{v:.5g}" if isinstance(v, float) else str(v)

    widths = {c: max(len(c), *(len(cell(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(cell(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)

