"""One package per homework; TASKS maps the CLI name to its task class (imported lazily)."""

from __future__ import annotations

import importlib


class LazyTask:
    """Imports a homework's task class only when that homework is used."""

    def __init__(self, title: str, target: str):
        self.title, self.target = title, target

    def __call__(self):
        module, cls = self.target.split(":")
        return getattr(importlib.import_module(module), cls)


TASKS = {
    "hw1": LazyTask("HW1 COVID-19 positive-rate regression (ml2022spring-hw1)",
                    "hw.hw1_covid.task:CovidTask"),
    "hw2": LazyTask("HW2 framewise phoneme classification (ml2022spring-hw2)",
                    "hw.hw2_phoneme.task:PhonemeTask"),
    "hw3": LazyTask("HW3 Food-11 image classification (ml2022spring-hw3b)",
                    "hw.hw3_food.task:FoodTask"),
}
