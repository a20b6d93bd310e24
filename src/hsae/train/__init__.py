"""Training: the loop, LR schedule and the L0 controller."""

from .trainer import Trainer, train, train_live

__all__ = ["Trainer", "train", "train_live"]
