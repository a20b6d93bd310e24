"""hsae: Hierarchical Sparse Autoencoders (a forest of JumpReLU SAEs) for language-model activations."""

from .config import TrainConfig, UserError
from .model import HSAE, hsae_loss, update_forest

__all__ = ["HSAE", "TrainConfig", "UserError", "hsae_loss", "update_forest"]
__version__ = "0.1.0"
