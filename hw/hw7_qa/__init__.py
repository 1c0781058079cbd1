"""HW7 BERT extractive question answering (ml2022spring-hw7)."""

from common.homework import Homework

HOMEWORK = Homework(
    "hw7", "HW7 BERT extractive question answering (ml2022spring-hw7)", ".task:QATask",
    commands={
        "spans": ("how many train and dev answers the window settings can recover exactly",
                  "spans_command"),
    }, package=__name__)
