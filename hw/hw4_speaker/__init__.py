"""HW4 speaker identification (ml2022spring-hw4)."""

from common.homework import Homework

HOMEWORK = Homework(
    "hw4", "HW4 speaker identification (ml2022spring-hw4)", ".task:SpeakerTask",
    commands={
        "featurize": ("turn your own audio into the course's Dataset/ layout",
                      "featurize_command"),
    }, package=__name__,
    kaggle_competition="ml2022spring-hw4",
    download_hint="the course's Dataset.tar.gz.parta[a-d] (GitHub release "
        "MachineLearningHW/ML_HW4_Dataset), joined and untarred; or run.py hw4 featurize",
    demo_baseline="acc 0.644 (configs/hw4_sample.toml, measured)",
)
