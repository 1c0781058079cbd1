"""HW4 speaker identification (ml2022spring-hw4)."""

from common.homework import Homework

HOMEWORK = Homework(
    "hw4", "HW4 speaker identification (ml2022spring-hw4)", ".task:SpeakerTask",
    commands={
        "featurize": ("turn your own audio into the course's Dataset/ layout",
                      "featurize_command"),
    }, package=__name__)
