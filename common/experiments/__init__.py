"""Runs built on the engine: one run end to end, a finished run used again, k-fold, Optuna
studies, run tables, submissions and hand-in. Imports the layers below it."""
