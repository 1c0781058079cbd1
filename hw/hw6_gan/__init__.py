"""HW6 anime-face generation (JudgeBoi)."""

from common.homework import Homework

HOMEWORK = Homework(
    "hw6", "HW6 anime-face generation (JudgeBoi)", ".task:GanTask",
    commands={
        "generate": ("write 1000 faces and JudgeBoi's submission.tgz from a run",
                     "generate_command"),
        "fid": ("the FID (or proxy FID) between two folders or archives of images",
                "fid_command"),
        "report": ("the report's figure: D's per-layer gradient norms of runs",
                   "report_command"),
    }, package=__name__,
    grader_note="upload {submission} on JudgeBoi (the course's server: a .tgz of 1000 "
        "JPEGs under 2 MB; select one submission)",
    download_hint="faces.zip from the Hugging Face dataset LeoFeng/MLHW_6, extracted",
    demo_config="hw6_cpu",
)
