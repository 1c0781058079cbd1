"""The engine: the Task contract, the Trainer and its helpers (optimizer steps, checkpoints,
run logs and folders, evaluation, fusion of outputs). The one place for loops and steps.
Imports common.core and common.data."""
