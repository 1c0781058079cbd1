"""HW3 Food-11 image classification."""

from common.homework import Homework

HOMEWORK = Homework("hw3", "HW3 Food-11 image classification (ml2022spring-hw3b)",
                    ".task:FoodTask", package=__name__,
    kaggle_competition="ml2022spring-hw3b",
    download_hint="kaggle competitions download -c ml2022spring-hw3b",
    demo_baseline="acc 0.091 (configs/hw3_sample.toml, measured)",
)
