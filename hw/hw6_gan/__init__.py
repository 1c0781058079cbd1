"""HW6 anime-face generation (JudgeBoi)."""

from common.homework import Homework

COMMANDS = "hw.hw6_gan.commands"
HOMEWORK = Homework(
    "hw6", "HW6 anime-face generation (JudgeBoi)", "hw.hw6_gan.task:GanTask",
    commands={
        "generate": ("write 1000 faces and JudgeBoi's submission.tgz from a run",
                     f"{COMMANDS}:generate_command"),
        "fid": ("the FID (or proxy FID) between two folders or archives of images",
                f"{COMMANDS}:fid_command"),
        "report": ("the report's figure: D's per-layer gradient norms of runs",
                   f"{COMMANDS}:report_command"),
    })
