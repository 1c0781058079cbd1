"""`run.py runs` and `run.py compare`: the runs under runs/ as one table (name, date, state,
what each config changes against the homework's default recipe, best monitored metric), and
several runs' validation curves overlaid with their config differences side by side."""

from __future__ import annotations

import csv
import math
import time
import tomllib
from pathlib import Path
from typing import Any

from common.core.config import config_to_dict, load_config, toml_value
from common.core.errors import UserError
from common.core.io import read_text
from common.engine.rundir import RunDir
from common.experiments.kfold import oof_value

IGNORED = {"data.dir"}   # where the data lies is not a change of recipe


def flat(config: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, values in config.items() for k, v in values.items()
            if f"{s}.{k}" not in IGNORED}


def read_metrics(run: RunDir) -> list[dict[str, float]]:
    if not run.metrics.is_file():
        return []
    with open(run.metrics, newline="", encoding="utf-8") as fh:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()}
                for row in csv.DictReader(fh)]


def best_of(rows: list[dict[str, float]], monitor: str, mode: str) -> tuple[float, float]:
    """(best value, its step); NaN when the run never logged the metric."""
    values = [(r[monitor], r.get("step", math.nan)) for r in rows
              if monitor in r and r[monitor] == r[monitor]]
    if not values:
        return math.nan, math.nan
    return (max if mode == "max" else min)(values, key=lambda v: v[0])


def kfold_value(run: RunDir, metric: str) -> tuple[str, float] | None:
    """("oof_<name>", value): a finished k-fold run's out-of-fold value of metric (valid_acc
    -> acc, as tune --folds reads it); None for other runs."""
    if not run.kfold.is_file():
        return None
    with open(run.kfold, newline="", encoding="utf-8") as fh:
        overall = next((r for r in csv.DictReader(fh) if r["fold"] == "all"), None)
    if overall is None:
        return None
    names = {k: float(v) for k, v in overall.items() if k not in ("fold", "train", "held_out")}
    try:
        value = oof_value(names, metric)
    except UserError:
        return None
    name = metric.removeprefix("valid_")
    return f"oof_{name if name in names else next(iter(names))}", value


def find_runs(root: Path, hw: str | None = None) -> list[tuple[str, RunDir]]:
    """(homework, run) for every run directory runs/<hw>/<name>/ holding a config.toml, and
    the trial runs of tune studies (runs/<hw>/<study>/trials/<trial>/)."""
    found = []
    for hw_dir in sorted(p for p in Path(root).glob("*") if p.is_dir()):
        if hw and hw_dir.name != hw:
            continue
        for run in sorted(hw_dir.glob("*")):
            if (run / "config.toml").is_file():
                found.append((hw_dir.name, RunDir(run)))
            for trial in sorted(run.glob("trials/*")):
                if (trial / "config.toml").is_file():
                    found.append((hw_dir.name, RunDir(trial)))
    return found


def default_config(tasks, hw: str) -> dict[str, Any]:
    task_cls = tasks[hw]()
    recipes = getattr(tasks[hw], "recipes", None)
    path = Path(recipes) / f"{hw}.toml" if recipes else None
    return flat(config_to_dict(load_config(task_cls.schema(),
                                           path if path and path.is_file() else None)))


def run_config(tasks, hw: str, run: RunDir) -> dict[str, Any]:
    task_cls = tasks[hw]()
    try:
        return flat(config_to_dict(load_config(task_cls.schema(), run.config)))
    except UserError:  # a config from an older version: compare what it says
        raw = raw_config(run)
        return flat({s: v for s, v in raw.items() if isinstance(v, dict)})


def raw_config(run: RunDir) -> dict[str, Any]:
    try:
        return tomllib.loads(read_text(run.config))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{run.config}: not valid TOML ({exc}); fix it or move the run "
                        "away") from None


def metric_mode(task_cls, config: dict[str, Any], metric: str) -> str:
    """Whether `metric` is better high ("max") or low ("min") in a run: its trainer.mode for
    the metric it monitored, else what its task declares (Objective.higher_is_better)."""
    if metric == config.get("trainer.monitor", "valid_loss"):
        return str(config.get("trainer.mode", "min"))
    bare = metric.removeprefix("valid_").removeprefix("train_").removeprefix("oof_")
    return "max" if bare in task_cls.higher_is_better else "min"


def changes(config: dict[str, Any], default: dict[str, Any]) -> str:
    diff = [f"{k}={toml_value(v)}" for k, v in config.items()
            if default.get(k) != v and not (isinstance(v, dict) and not v)]
    return " ".join(diff) or "(the default recipe)"


def table(tasks, root: str | Path, *, hw: str | None = None, sort: str | None = None
          ) -> list[dict[str, Any]]:
    rows, defaults = [], {}
    for name, run in find_runs(Path(root), hw):
        if name not in tasks:
            continue
        if name not in defaults:
            defaults[name] = default_config(tasks, name)
        try:
            config = run_config(tasks, name, run)
        except UserError as exc:  # one broken run folder: a row that says so, not a crash
            rows.append({"hw": name, "run": str(run.path.relative_to(root)), "mode": "min",
                         "date": "-", "state": "unreadable", "metric": "-", "best": math.nan,
                         "step": math.nan, "changes": str(exc)})
            continue
        metric = sort or str(config.get("trainer.monitor", "valid_loss"))
        mode = metric_mode(tasks[name](), config, metric)
        oof = kfold_value(run, metric)
        if oof is not None:  # a k-fold run: its out-of-fold value, from no one step
            metric, value, step = *oof, math.nan
        else:
            value, step = best_of(read_metrics(run), metric, mode)
        rows.append({"hw": name, "run": str(run.path.relative_to(root)), "mode": mode,
                     "date": time.strftime("%Y-%m-%d %H:%M",
                                           time.localtime(run.config.stat().st_mtime)),
                     "state": run.status().get("state", "?"), "metric": metric,
                     "best": value, "step": step, "changes": changes(config, defaults[name])})
    if sort:  # best first, each run by its own direction (they agree for one metric)
        rows.sort(key=lambda r: (math.isnan(r["best"]),
                                 -r["best"] if r["mode"] == "max" else r["best"]))
    return rows


def runs_command(tasks, root: str | Path, *, hw: str | None = None, sort: str | None = None
                 ) -> int:
    if not Path(root).is_dir():
        raise UserError(f"{root}: no runs yet; train something first (or pass --root DIR)")
    rows = table(tasks, root, hw=hw, sort=sort)
    if not rows:
        print(f"no runs under {root}" + (f" for {hw}" if hw else ""))
        return 0
    cols = ["run", "date", "state", "metric", "best", "step", "changes"]

    def cell(row, c):
        v = row[c]
        if isinstance(v, float):
            return "-" if math.isnan(v) else (f"{v:.5g}" if c == "best" else f"{int(v)}")
        return str(v)

    widths = {c: max(len(c), *(len(cell(r, c)) for r in rows)) for c in cols[:-1]}
    print("  ".join(c.ljust(widths.get(c, 0)) for c in cols))
    for r in rows:
        print("  ".join(cell(r, c).ljust(widths.get(c, 0)) for c in cols))
    return 0


def _hw_of(tasks, run: RunDir) -> str:
    for part in reversed(run.path.resolve().parts):
        if part in tasks:
            return part
    raw = raw_config(run)
    for hw in tasks:  # the homework whose schema reads the config
        try:
            load_config(tasks[hw]().schema(), run.config)
            return hw
        except UserError:
            continue
    raise UserError(f"{run.config}: no homework reads this config ({', '.join(raw)})")


def compare_command(tasks, run_dirs: list[str], *, metric: str | None = None,
                    out: str | None = None) -> int:
    runs = [RunDir(r) for r in run_dirs]
    RunDir.check_writable_file(out or "compare.png")
    for run in runs:
        if not run.config.is_file():
            raise UserError(f"{run.config}: not found; pass run directories")
    configs = [run_config(tasks, _hw_of(tasks, run), run) for run in runs]
    metric = metric or str(configs[0].get("trainer.monitor", "valid_loss"))
    from common.engine.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = 0
    for run in runs:
        rows = [r for r in read_metrics(run) if metric in r and r[metric] == r[metric]]
        if rows:
            ax.plot([r["step"] for r in rows], [r[metric] for r in rows], marker=".",
                    label=run.path.name)
            drawn += 1
    if not drawn:
        raise UserError(f"{metric}: none of these runs logged it; pass --metric")
    ax.set_xlabel("update")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    path = Path(out or "compare.png")
    save_figure(fig, path)
    keys = sorted(k for k in set().union(*configs)
                  if len({toml_value(c.get(k, "")) for c in configs}) > 1)
    names = [r.path.name for r in runs]
    width = max([len("key"), *map(len, keys)]) if keys else 3
    cols = [max(len(n), 8) for n in names]
    print("  ".join(["key".ljust(width), *(n.ljust(w) for n, w in zip(names, cols, strict=True))]))
    for k in keys:
        print("  ".join([k.ljust(width), *(toml_value(c[k]).ljust(w) if k in c else "-".ljust(w)
                                           for c, w in zip(configs, cols, strict=True))]))
    if not keys:
        print("(the configs are the same)")
    print(f"curves: {path}")
    return 0
