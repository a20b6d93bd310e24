"""Model: JumpReLU SAE levels, the forest, and the fast HSAE loss (pure torch, no I/O)."""

from .forest import CoActivation, update_forest
from .hsae import HSAE, SAELevel
from .loss import LossOutput, hsae_loss

__all__ = ["HSAE", "SAELevel", "CoActivation", "update_forest", "hsae_loss", "LossOutput"]
