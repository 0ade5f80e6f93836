"""Distillation training: settings, data pipeline, loop, checkpoints and run folders.

Entry point: :func:`pyssondo.train.distill.distill` with a :class:`DistillConfig`.
"""
from .config import DistillConfig

__all__ = ["DistillConfig"]
