"""HW5 English to Chinese translation (JudgeBoi)."""

from common.homework import Homework

HOMEWORK = Homework(
    "hw5", "HW5 English to Chinese translation (JudgeBoi)", ".task:TranslationTask",
    commands={
        "backtranslate": ("turn monolingual Chinese into synthetic pairs with a zh-en run",
                          "backtranslate_command"),
        "report": ("the report's figures: positional-embedding similarity, gradient norms",
                   "report_command"),
    }, package=__name__,
    grader_note="upload {submission} on JudgeBoi (the course's server: a .txt under "
        "700 kB, 5 a day)",
    download_hint="ted2020.tgz and test.tgz (GitHub release yuhsinchan/ML2022-HW5Dataset "
        "v1.0.2), extracted",
    demo_config="hw5_cpu",
)
