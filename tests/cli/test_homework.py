"""How homeworks become commands: discovered from packages under hw/ (or an installed
package's entry point), never listed by hand; models and optimizers built by name from
registries whose errors list the names."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from common.core.errors import UserError
from common.core.registry import Registry
from common.homework import Homework, discover
from tests.helpers import ROOT
from tests.toy import write_blobs


def test_the_seven_homeworks_are_discovered_with_their_titles_and_commands():
    from hw import TASKS

    assert list(TASKS)[:7] == [f"hw{i}" for i in range(1, 8)]
    for name, entry in TASKS.items():
        assert entry.title and entry().name == name   # the class agrees with its entry
    assert set(TASKS["hw6"].commands) == {"generate", "fid", "report"}


def test_a_new_package_is_discovered_without_editing_a_list(tmp_path, monkeypatch):
    pkg = tmp_path / "myhws"
    for sub, body in (("", ""), ("hw9_extra", 'HOMEWORK = Homework("hw9", "HW9 extra", '
                                              '"tests.toy:BlobsTask")'),
                      ("hw10_more", 'HOMEWORK = Homework("hw10", "HW10", "x:Y")'),
                      ("notes", "")):                     # a package without an entry
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text(
            "from common.homework import Homework\n" + body + "\n" if body else "")
    monkeypatch.syspath_prepend(str(tmp_path))
    import myhws

    found = discover(myhws)
    assert list(found) == ["hw9", "hw10"]                 # natural order, notes skipped
    with pytest.raises(ValueError, match="its name is 'blobs'"):
        found["hw9"]()                                     # the class must agree


def test_a_broken_package_or_a_clashing_name_leaves_the_rest_working(tmp_path, monkeypatch,
                                                                       capsys):
    """A package that cannot be imported is one warning, not a traceback in every command; a
    homework named like a shared command (list) is left out with a warning; `new` refuses the
    shared commands' names and standard modules, writing nothing."""
    from common.cli import main as cli_main

    pkg = tmp_path / "brokenhws"
    for sub, body in (("", ""), ("hw9_ok", 'HOMEWORK = Homework("hw9", "HW9", '
                                           '"tests.toy:BlobsTask")'),
                      ("hw10_bad", "import no_such_module_at_all"),
                      ("listing", 'HOMEWORK = Homework("list", "clash", "x:Y")')):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text(
            "from common.homework import Homework\n" + body + "\n" if body else "")
    monkeypatch.syspath_prepend(str(tmp_path))
    import brokenhws

    found = discover(brokenhws)
    err = capsys.readouterr().err
    assert list(found) == ["hw9", "list"]
    assert "warning: brokenhws/hw10_bad: cannot be imported (ModuleNotFoundError: No module " \
        "named 'no_such_module_at_all'); its commands are left out" in err
    assert cli_main(found, ["list"]) == 0
    out, err = capsys.readouterr()
    assert out.split()[0] == "hw9" and "homework 'list' has the name of a shared command" in err
    for name, words in (("list", "'list' is taken on the command line already"),
                        ("runs", "'runs' is taken"), ("json", "'json' is a standard Python "
                                                              "module")):
        assert cli_main(found, ["new", name, "--kind", "regression", "--root",
                                str(tmp_path / "root")]) == 2
        err = [line for line in capsys.readouterr().err.strip().splitlines()
               if not line.startswith("warning: homework 'list'")]
        assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "root").exists()


@pytest.mark.slow
def test_an_installed_package_declares_a_homework_by_entry_point(tmp_path):
    """A package outside the repository, installed with an "mlhw.homeworks" entry point
    (here: a dist-info folder on PYTHONPATH, as pip writes it), gets every command."""
    (tmp_path / "extra_hw").mkdir()
    (tmp_path / "extra_hw" / "__init__.py").write_text(textwrap.dedent('''
        from pathlib import Path

        from common.homework import Homework
        from tests.toy import BlobsTask

        class ExtraTask(BlobsTask):
            name = "extra"

        HOMEWORK = Homework("extra", "an assignment kept elsewhere", "extra_hw:ExtraTask",
                            recipes=Path(__file__).parent / "recipes")
    '''))
    (tmp_path / "extra_hw" / "recipes").mkdir()
    (tmp_path / "extra_hw" / "recipes" / "extra.toml").write_text("[trainer]\nseed = 321\n")
    info = tmp_path / "extra_hw-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-hw\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mlhw.homeworks]\nextra = extra_hw:HOMEWORK\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}

    def cli(*args):
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), *args],
                              capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=300)

    listed = cli("list")
    assert listed.returncode == 0 and "extra  an assignment kept elsewhere" in listed.stdout
    blobs = write_blobs(tmp_path / "blobs")
    run = cli("extra", "train", "--data", str(blobs), "--dry-run", "--out", str(tmp_path / "r"),
              "--set", 'trainer.device="cpu"')
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "r" / "submission.csv").is_file()
    assert "seed = 321" in (tmp_path / "r" / "config.toml").read_text()   # its own recipe


def test_a_missing_recipe_is_one_line_and_no_run(tmp_path, capsys):
    """Without --config a command runs the homework's <name>.toml; a homework that declares no
    recipes folder, or whose folder lacks the file, stops in one line (never the dataclass
    defaults in silence)."""
    from common.cli import main

    blobs = write_blobs(tmp_path / "blobs")
    args = ["blobs", "train", "--data", str(blobs), "--dry-run", "--out", str(tmp_path / "r")]
    for entry, words in (
            (Homework("blobs", "b", "tests.toy:BlobsTask"),
             "blobs: this homework declares no recipes folder (Homework(..., recipes=DIR)); "
             "pass --config FILE"),
            (Homework("blobs", "b", "tests.toy:BlobsTask", recipes=tmp_path),
             f"{tmp_path / 'blobs.toml'}: recipe not found; pass --config FILE")):
        assert main({"blobs": entry}, args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
        assert not (tmp_path / "r").exists()
    (tmp_path / "blobs.toml").write_text("[trainer]\nseed = 99\n")
    assert main({"blobs": Homework("blobs", "b", "tests.toy:BlobsTask", recipes=tmp_path)},
                args) == 0
    assert "seed = 99" in (tmp_path / "r" / "config.toml").read_text()


def test_every_homework_finds_its_recipe_and_its_demo_recipe():
    from common.homework import recipe_path
    from hw import TASKS

    for name, entry in TASKS.items():
        assert entry().name == name
        assert recipe_path(entry, name) == ROOT / "configs" / f"{name}.toml"
        if entry.demo_config:
            assert recipe_path(entry, entry.demo_config).is_file()
    # how each is handed in lives in its entry: Kaggle's slug or a grader's note
    assert all(e.kaggle_competition or e.grader_note for e in TASKS.values())


def test_a_homework_command_without_config_runs_the_homework_recipe(tmp_path, capsys):
    """`hw7 spans --data DIR` reads configs/hw7.toml (its window settings), here with the small
    offline BERT in place of the download it names."""
    from hw.cli import main as cli_main
    from hw.hw7_qa.data import write_demo_data

    demo = write_demo_data(tmp_path / "hw7")
    assert cli_main(["hw7", "spans", "--data", str(demo), "--set", 'model.name=""']) == 0
    said = capsys.readouterr()
    assert "recoverable (100.00%)" in said.out + said.err


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_runs_its_recipes_from_any_folder(tmp_path):
    """`pip install .` (not editable: the wheel's files, recipes included as package data) and
    then `mlhw hw1 train --demo` from a folder outside the checkout runs configs/hw1_demo.toml,
    not the dataclass defaults."""
    from common.core.config import load_config
    from hw.hw1_covid.task import CovidTask

    source, target, elsewhere = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    source.mkdir()
    for part in ("pyproject.toml", "README.md", "common", "hw", "configs"):  # no old build/
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy
        copy(ROOT / part, source / part, **({"symlinks": True, "ignore": shutil.ignore_patterns(
            "__pycache__")} if copy is shutil.copytree else {}))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--no-build-isolation", "--target", str(target), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (target / "hw" / "configs" / "hw1_demo.toml").is_file()
    elsewhere.mkdir()
    run = subprocess.run([str(target / "bin" / "mlhw"), "hw1", "train", "--demo", "--dry-run",
                          "--out", "run"], capture_output=True, text=True, cwd=elsewhere,
                         env={**os.environ, "PYTHONPATH": str(target)}, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert str(target / "hw" / "configs" / "hw1_sample.toml") in run.stderr + run.stdout
    schema = CovidTask.schema()
    ran = load_config(schema, elsewhere / "run" / "config.toml")
    recipe = load_config(schema, ROOT / "configs" / "hw1_demo.toml")
    assert ran["model"] == recipe["model"] != load_config(schema, None)["model"]


def test_a_registry_builds_by_name_and_lists_the_names_it_knows():
    archs = Registry("model.arch")

    @archs.register("small", "tiny")
    def small(width: int = 1):
        return ("small", width)

    assert archs.names() == ("small", "tiny")
    assert archs.build("tiny", width=3) == ("small", 3)
    with pytest.raises(UserError, match=r"model.arch='huge' is unknown; choose one of small, "
                                        r"tiny"):
        archs.build("huge")
    with pytest.raises(ValueError, match="registered twice"):
        archs.register("small")(small)


def test_every_homework_model_arch_is_a_registered_name():
    """--set model.arch=… is checked against the registry of each homework's model.py."""
    from hw import TASKS
    from hw.hw1_covid.model import ARCHS as HW1
    from hw.hw4_speaker.model import ENCODERS, HEADS
    from hw.hw5_translate.model import ARCHS as HW5
    from hw.hw6_gan.model import ARCHS as HW6

    fields = {name: TASKS[name]().model_config.__dataclass_fields__ for name in
              ("hw1", "hw4", "hw5", "hw6")}
    choices = {name: f["arch"].metadata["rules"]["choices"] for name, f in fields.items()}
    assert choices == {"hw1": HW1.names(), "hw4": ENCODERS.names(), "hw5": HW5.names(),
                       "hw6": HW6.names()}
    assert fields["hw4"]["head"].metadata["rules"]["choices"] == HEADS.names()


def test_homework_entry_reports_its_task():
    entry = Homework("blobs", "three blobs", "tests.toy:BlobsTask")
    assert entry().__name__ == "BlobsTask" and "tests.toy:BlobsTask" in repr(entry)


def test_runs_take_a_metrics_direction_from_the_run_and_its_task():
    """The monitored metric follows the run's trainer.mode; another follows what its task
    declares, not a guess from the name ('accent_loss' holds 'acc', 'mem' holds 'em')."""
    from common.experiments.runs import metric_mode
    from hw import TASKS

    hw1, hw3, hw5 = (TASKS[n]() for n in ("hw1", "hw3", "hw5"))
    plain = {"trainer.monitor": "valid_loss", "trainer.mode": "min"}
    assert metric_mode(hw3, plain, "valid_loss") == "min"
    assert metric_mode(hw3, plain, "valid_acc") == "max"          # declared by the task
    assert metric_mode(hw5, plain, "valid_bleu") == "max"
    assert metric_mode(hw1, plain, "valid_accent_loss") == "min"
    assert metric_mode(hw1, plain, "valid_mem") == "min"
    assert metric_mode(hw1, {"trainer.monitor": "valid_mem", "trainer.mode": "max"},
                       "valid_mem") == "max"                       # the run's own mode


def test_a_homework_names_its_task_and_commands_relative_to_its_package():
    entry = Homework("hw9", "HW9", ".task:XaiTask", package="hw.hw9_xai",
                     commands={"saliency": ("maps", "saliency_command"),
                               "other": ("elsewhere", "tools.cli:run")})
    assert entry.task == "hw.hw9_xai.task:XaiTask"
    assert entry.commands == {"saliency": ("maps", "hw.hw9_xai.commands:saliency_command"),
                              "other": ("elsewhere", "tools.cli:run")}
