"""Training: the loop, LR schedule and the L0 controller."""

from .trainer import Trainer, train

__all__ = ["Trainer", "train"]
