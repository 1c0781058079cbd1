"""HW7 BERT extractive question answering (ml2022spring-hw7)."""

from common.homework import Homework

HOMEWORK = Homework(
    "hw7", "HW7 BERT extractive question answering (ml2022spring-hw7)", ".task:QATask",
    commands={
        "spans": ("how many train and dev answers the window settings can recover exactly",
                  "spans_command"),
    }, package=__name__,
    kaggle_competition="ml2022spring-hw7",
    download_hint="hw7_data.zip (gdown id 1AVgZvy3VFeg0fX-6WQJMHPVrx3A-M1kb), unzipped",
    demo_config="hw7_cpu",
    demo_baseline="not run offline (bert-base-chinese is a download); its naive rule on "
        "this recipe's model: dev em 0.207 against 0.283 (measured)",
)
