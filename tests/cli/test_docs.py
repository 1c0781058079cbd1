"""The documentation keeps up with the code: every command a README quotes parses (its
subcommand's --help lists each option it uses, each benchmark script and make target exists)
and every relative link points at a file that exists. Also `scripts/docs.py`, which makes the
README's pictures."""

from __future__ import annotations

import re
from functools import cache

import pytest

from tests.helpers import ROOT, run_cli

DOCS = sorted([ROOT / "README.md", ROOT / "common" / "README.md",
               *(ROOT / "common" / "docs").glob("*.md"), *(ROOT / "hw").glob("*/README.md"),
               ROOT / "scripts" / "bench" / "README.md"])
LINK = re.compile(r"\]\(([^)\s]+)\)")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def code_lines(text: str) -> list[str]:
    """The lines of a page's ```bash blocks (continuations joined), and its inline `...`
    commands, without comments."""
    lines = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            lines.append(line.split(" #")[0].strip())
    lines += re.findall(r"`((?:python |mlhw |make |torchrun )[^`]+)`", text)
    return [line for line in lines if line]


def commands(text: str) -> list[tuple[str, list[str], str]]:
    """(kind, words, line) of each command: run (scripts/run.py or mlhw: the words after it),
    bench (scripts/bench/X.py), make (the targets)."""
    found = []
    for line in code_lines(text):
        words = line.replace("[", " ").replace("]", " ").replace("|", " ") \
            .replace("<hw>", "hw1").split()
        if "scripts/run.py" in words:
            found.append(("run", words[words.index("scripts/run.py") + 1:], line))
        elif words[:1] == ["mlhw"]:
            found.append(("run", words[1:], line))
        elif any(w.startswith("scripts/bench/") for w in words):
            found.append(("bench", [w for w in words if w.startswith("scripts/bench/")], line))
        elif words[:1] == ["make"]:
            found.append(("make", [w for w in words[1:] if not w.startswith("-")], line))
    return found


@cache
def help_text(*words: str) -> str:
    result = run_cli(*words, "--help")
    assert result.returncode == 0, (words, result.stderr)
    return result.stdout


def subcommand(words: list[str]) -> tuple[str, ...]:
    """The command and action a quoted command names: (hw1, train), (runs,), (hw4, featurize)."""
    head = []
    for word in words[:2]:
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", word):
            break
        head.append(word)
    if head[:1] and head[0] in ("list", "runs", "compare", "new"):
        return tuple(head[:1])
    return tuple(head)


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        assert (page.parent / target.split("#")[0]).exists(), f"{page}: {target}"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_quoted_command_parses(page):
    makefile = (ROOT / "Makefile").read_text()
    made: set[str] = set()
    for kind, words, line in commands(page.read_text(encoding="utf-8")):
        if kind == "make":
            for target in words:
                assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{page}: {line}"
        elif kind == "bench":
            for script in words:
                assert (ROOT / script).is_file(), f"{page}: {line}"
                # the script's own source and the sibling benchmarks it imports
                source = (ROOT / script).read_text()
                source += "".join((ROOT / "scripts" / "bench" / f"{m}.py").read_text()
                                  for m in re.findall(r"^from (\w+) import", source, re.M)
                                  if (ROOT / "scripts" / "bench" / f"{m}.py").is_file())
                for option in OPTION.findall(line):
                    assert f'"{option}"' in source, f"{page}: {option} in {line}"  # whole
        else:
            name = subcommand(words)
            assert name, f"{page}: {line}"
            if name[0] in made:   # a homework the page makes with `new` first
                continue
            if name[0] == "new" and len(words) > 1:
                made.add(words[1])
            shown = help_text(*name)
            for option in OPTION.findall(line.split("scripts/run.py")[-1]):
                assert re.search(rf"{option}(?![\w-])", shown), \
                    f"{page}: {' '.join(name)} has no {option}: {line}"


def test_the_command_finder_reads_blocks_inline_commands_and_options():
    text = ("```bash\npython scripts/run.py hw1 train --demo \\\n    --out x  # a comment --no\n"
            "make demo\n```\nthen `python scripts/bench/hw1_cv.py --config F` and "
            "`mlhw hw4 featurize --data D`.")
    found = commands(text)
    assert [(k, w[:2]) for k, w, _ in found] == [
        ("run", ["hw1", "train"]), ("make", ["demo"]),
        ("bench", ["scripts/bench/hw1_cv.py"]), ("run", ["hw4", "featurize"])]
    assert OPTION.findall(found[0][2]) == ["--demo", "--out"]
    assert subcommand(["hw1", "train", "--demo"]) == ("hw1", "train")
    assert subcommand(["hw1", "--help"]) == ("hw1",)
    assert subcommand(["runs", "--hw", "hw1"]) == ("runs",)
    # a wrong option is seen
    with pytest.raises(AssertionError):
        assert "--no-such-option" in help_text("hw1", "train")


def test_docs_script_writes_each_picture_from_a_finished_run(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs", ROOT / "scripts" / "docs.py")
    docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(docs)
    main = docs.main
    assert main(["--only", "hw1", "--dry-run", "--dest", str(tmp_path / "img")]) == 0
    picture = tmp_path / "img" / "hw1_curves.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "img").glob(".*.tmp"))
