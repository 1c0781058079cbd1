"""HW1: predict the day-5 COVID tested-positive rate of a US state from survey data."""

from common.homework import Homework

HOMEWORK = Homework("hw1", "HW1 COVID-19 positive-rate regression (ml2022spring-hw1)",
                    ".task:CovidTask", package=__name__,
    kaggle_competition="ml2022spring-hw1",
    download_hint="kaggle competitions download -c ml2022spring-hw1",
    demo_config="hw1_demo",
    demo_baseline="mse 0.239 (configs/hw1_sample.toml, measured)",
)
