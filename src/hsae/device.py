"""Which torch device a command runs on (--device auto|cpu|cuda), shared by collection and training."""

from __future__ import annotations

import torch

from .config import UserError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """torch.device for --device auto|cpu|cuda (GPU local_rank under torchrun)."""
    if spec not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}, got {spec!r}")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to this torch build")
    if local_rank >= torch.cuda.device_count():
        raise UserError(f"local rank {local_rank} has no GPU: only {torch.cuda.device_count()} visible")
    return torch.device("cuda", local_rank)
