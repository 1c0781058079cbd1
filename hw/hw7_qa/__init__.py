"""HW7 BERT extractive question answering (ml2022spring-hw7)."""

from common.homework import Homework

COMMANDS = "hw.hw7_qa.commands"
HOMEWORK = Homework(
    "hw7", "HW7 BERT extractive question answering (ml2022spring-hw7)", "hw.hw7_qa.task:QATask",
    commands={
        "spans": ("how many train and dev answers the window settings can recover exactly",
                  f"{COMMANDS}:spans_command"),
    })
