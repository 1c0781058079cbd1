"""HW4 speaker identification (ml2022spring-hw4)."""

from common.homework import Homework

COMMANDS = "hw.hw4_speaker.commands"
HOMEWORK = Homework(
    "hw4", "HW4 speaker identification (ml2022spring-hw4)", "hw.hw4_speaker.task:SpeakerTask",
    commands={
        "featurize": ("turn your own audio into the course's Dataset/ layout",
                      f"{COMMANDS}:featurize_command"),
    })
