"""Reusable training library for the homeworks: config, runtime, data, Trainer, checkpoints."""

from common.errors import UserError

__all__ = ["UserError"]
