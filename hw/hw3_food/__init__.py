"""HW3 Food-11 image classification."""

from common.homework import Homework

HOMEWORK = Homework("hw3", "HW3 Food-11 image classification (ml2022spring-hw3b)",
                    ".task:FoodTask", package=__name__)
