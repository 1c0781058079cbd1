"""HW8 face anomaly detection with autoencoders (ml2022spring-hw8).

Made by `new --kind images`; HOMEWORK puts it on the command line."""

from common.homework import Homework

HOMEWORK = Homework(
    "hw8",
    'HW8 face anomaly detection with autoencoders (ml2022spring-hw8)',
    ".task:Hw8Task",
    package=__name__,
    kaggle_competition="ml2022spring-hw8",
    download_hint="kaggle competitions download -c ml2022spring-hw8 (then unzip data.zip)",
    demo_config="hw8_cpu",
    demo_baseline="auc 0.4416 (configs/hw8_sample.toml, measured)",
)
