"""One package per homework; TASKS maps the CLI name to its task class (imported lazily)."""

from __future__ import annotations

import importlib


class LazyTask:
    """Imports a homework's task class only when that homework is used. `commands`: extra
    actions of this homework, name -> (help, "module:function(argv) -> int")."""

    def __init__(self, title: str, target: str, commands: dict[str, tuple[str, str]] | None = None):
        self.title, self.target, self.commands = title, target, commands or {}

    def __call__(self):
        module, cls = self.target.split(":")
        return getattr(importlib.import_module(module), cls)


TASKS = {
    "hw1": LazyTask("HW1 COVID-19 positive-rate regression (ml2022spring-hw1)",
                    "hw.hw1_covid.task:CovidTask"),
    "hw2": LazyTask("HW2 framewise phoneme classification (ml2022spring-hw2)",
                    "hw.hw2_phoneme.task:PhonemeTask"),
    "hw3": LazyTask("HW3 Food-11 image classification (ml2022spring-hw3b)",
                    "hw.hw3_food.task:FoodTask"),
    "hw4": LazyTask("HW4 speaker identification (ml2022spring-hw4)",
                    "hw.hw4_speaker.task:SpeakerTask",
                    {"featurize": ("turn your own audio into the course's Dataset/ layout",
                                   "hw.hw4_speaker.data:featurize_command")}),
    "hw5": LazyTask("HW5 English to Chinese translation (JudgeBoi)",
                    "hw.hw5_translate.task:TranslationTask",
                    {"backtranslate": ("turn monolingual Chinese into synthetic pairs with a "
                                       "zh-en run", "hw.hw5_translate.commands:"
                                       "backtranslate_command"),
                     "report": ("the report's figures: positional-embedding similarity, "
                                "gradient norms", "hw.hw5_translate.commands:report_command")}),
    "hw6": LazyTask("HW6 anime-face generation (JudgeBoi)", "hw.hw6_gan.task:GanTask",
                    {"generate": ("write 1000 faces and JudgeBoi's submission.tgz from a run",
                                  "hw.hw6_gan.commands:generate_command"),
                     "fid": ("the FID (or proxy FID) between two folders or archives of images",
                             "hw.hw6_gan.commands:fid_command"),
                     "report": ("the report's figure: D's per-layer gradient norms of runs",
                                "hw.hw6_gan.commands:report_command")}),
    "hw7": LazyTask("HW7 BERT extractive question answering (ml2022spring-hw7)",
                    "hw.hw7_qa.task:QATask",
                    {"spans": ("how many train and dev answers the window settings can "
                               "recover exactly", "hw.hw7_qa.task:spans_command")}),
}
