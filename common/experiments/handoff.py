"""From a submission file to the grader: the exact `kaggle competitions submit` line for
Kaggle homeworks (or the task's note for other graders), and `download`, which runs the kaggle
CLI when it is installed and configured and otherwise says in one line what to do."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import zipfile
from pathlib import Path

from common.core.errors import UserError
from common.engine.runlog import say

TOKEN_HINT = ("put your API token in ~/.kaggle/kaggle.json (kaggle.com > Settings > API > "
              "Create New Token), or set KAGGLE_USERNAME and KAGGLE_KEY")


def submit_line(slug: str, submission: Path, message: str) -> str:
    return (f"kaggle competitions submit -c {slug} -f {shlex.quote(str(submission))} "
            f"-m {shlex.quote(message)}")


def handoff(homework, submission: Path, run_name: str) -> None:
    """Print how to hand the submission in, as the homework's entry (a `Homework`) says."""
    slug = getattr(homework, "kaggle_competition", "")
    if slug:
        say(f"hand in: {submit_line(slug, Path(submission), run_name)}")
    elif getattr(homework, "grader_note", ""):
        say(f"hand in: {homework.grader_note.format(submission=submission)}")


def kaggle_configured() -> bool:
    home = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (home / "kaggle.json").is_file() or bool(
        os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")) or bool(
        os.environ.get("KAGGLE_API_TOKEN")) or (home / "access_token").is_file()


def download(homework, dest: Path) -> Path:
    """`kaggle competitions download -c <slug> -p DEST` for the homework's entry (its
    kaggle_competition), then every zip in DEST extracted."""
    slug = getattr(homework, "kaggle_competition", "")
    if not slug:
        raise UserError(f"{homework.name} is not on Kaggle; download it yourself: "
                        f"{getattr(homework, 'download_hint', '') or 'see data/README.md'}")
    exe = shutil.which("kaggle")
    if exe is None:
        raise UserError(f"download needs the kaggle CLI: pip install kaggle, then {TOKEN_HINT}")
    if not kaggle_configured():
        raise UserError(f"the kaggle CLI is installed but not configured: {TOKEN_HINT}")
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest}: exists and is not a folder; choose another --dest")
    taken = {p.name for p in dest.iterdir()} if dest.is_dir() else set()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # everything lands in a folder beside dest first: dest appears (or grows) only on success
    tmp = dest.with_name(f".{dest.name}-download-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        say(f"running: kaggle competitions download -c {slug} -p {dest}")
        done = subprocess.run([exe, "competitions", "download", "-c", slug, "-p", str(tmp)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            raise UserError(f"kaggle competitions download -c {slug} failed: {last[-1]} (join "
                            "the competition on its Kaggle page first)")
        for archive in sorted(tmp.glob("*.zip")):
            try:
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(tmp)
            except (zipfile.BadZipFile, EOFError) as exc:
                raise UserError(f"{archive.name}: a damaged zip from the kaggle CLI ({exc}); "
                                "run download again") from None
            say(f"extracted {archive.name}")
        clash = sorted(taken & {p.name for p in tmp.iterdir()})
        if clash:
            raise UserError(f"{dest}: already holds {', '.join(clash[:3])}; choose another "
                            "--dest (nothing was replaced)")
        if not dest.exists():
            tmp.rename(dest)
        else:
            for item in sorted(tmp.iterdir()):
                item.rename(dest / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
