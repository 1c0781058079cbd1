"""HW2: framewise phoneme classification on LibriPhone MFCC features."""

from common.homework import Homework

HOMEWORK = Homework("hw2", "HW2 framewise phoneme classification (ml2022spring-hw2)",
                    ".task:PhonemeTask", package=__name__,
    kaggle_competition="ml2022spring-hw2",
    download_hint="kaggle competitions download -c ml2022spring-hw2",
    demo_config="hw2_cpu",
    demo_baseline="acc 0.306 (configs/hw2_sample.toml, measured)",
)
