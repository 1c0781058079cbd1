"""HW5 English to Chinese translation (JudgeBoi)."""

from common.homework import Homework

HOMEWORK = Homework(
    "hw5", "HW5 English to Chinese translation (JudgeBoi)", ".task:TranslationTask",
    commands={
        "backtranslate": ("turn monolingual Chinese into synthetic pairs with a zh-en run",
                          "backtranslate_command"),
        "report": ("the report's figures: positional-embedding similarity, gradient norms",
                   "report_command"),
    }, package=__name__)
