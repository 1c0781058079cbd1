"""HW5 English to Chinese translation (JudgeBoi)."""

from common.homework import Homework

COMMANDS = "hw.hw5_translate.commands"
HOMEWORK = Homework(
    "hw5", "HW5 English to Chinese translation (JudgeBoi)", "hw.hw5_translate.task:TranslationTask",
    commands={
        "backtranslate": ("turn monolingual Chinese into synthetic pairs with a zh-en run",
                          f"{COMMANDS}:backtranslate_command"),
        "report": ("the report's figures: positional-embedding similarity, gradient norms",
                   f"{COMMANDS}:report_command"),
    })
