"""HW8 face anomaly detection with autoencoders (ml2022spring-hw8).

Made by `new --kind images`; HOMEWORK puts it on the command line."""

from common.homework import Homework

HOMEWORK = Homework(
    "hw8",
    'HW8 face anomaly detection with autoencoders (ml2022spring-hw8)',
    ".task:Hw8Task",
    package=__name__,
)
