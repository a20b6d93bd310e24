"""The HSAE: L JumpReLU SAE levels of growing size over one input, plus a parent forest.

Pure torch, no I/O. Shapes: x [B, d]; level l has W_enc [d, n_l], b_enc [n_l],
W_dec [n_l, d] (unit-norm rows), b_dec [d], threshold [n_l] (stored as its log so it stays
positive). parents[l] (l >= 1) is an int64 [n_l] array of level-(l-1) indices, -1 = none.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .jumprelu import jumprelu


class SAELevel(nn.Module):
    """One JumpReLU SAE: a(x) = JumpReLU_theta(x W_enc + b_enc), x_hat = a W_dec + b_dec."""

    def __init__(self, d: int, n: int, threshold_init: float, generator: torch.Generator | None = None):
        super().__init__()
        w = torch.randn(n, d, generator=generator)
        w = w / w.norm(dim=1, keepdim=True)
        # Tied init (encoder = decoder^T) starts every feature as a matched filter for its
        # own direction, the usual JumpReLU/TopK initialisation.
        self.W_enc = nn.Parameter(w.t().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.W_dec = nn.Parameter(w)
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.log_threshold = nn.Parameter(torch.full((n,), math.log(threshold_init)))

    @property
    def n(self) -> int:
        """Number of features."""
        return self.W_dec.shape[0]

    @property
    def threshold(self) -> torch.Tensor:
        """Per-feature JumpReLU threshold, always > 0."""
        return self.log_threshold.exp()

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations h = x W_enc + b_enc, [B, n]."""
        return torch.addmm(self.b_enc, x, self.W_enc)

    def encode(self, x: torch.Tensor, bandwidth: float = 1e-3) -> torch.Tensor:
        """Feature activations a(x), [B, n]."""
        return jumprelu(self.pre(x), self.threshold, bandwidth)

    def decode(self, a: torch.Tensor) -> torch.Tensor:
        """Reconstruction a W_dec + b_dec, [B, d]."""
        return torch.addmm(self.b_dec, a, self.W_dec)


class HSAE(nn.Module):
    """L SAE levels with sizes n_0 < n_1 < ... and a forest linking level l+1 to level l."""

    def __init__(self, d: int, sizes: list[int], threshold_init: float = 0.5, seed: int = 0):
        super().__init__()
        if any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise ValueError(f"level sizes must be strictly increasing, got {sizes}")
        g = torch.Generator().manual_seed(seed)
        self.d = d
        self.levels = nn.ModuleList(SAELevel(d, n, threshold_init, g) for n in sizes)
        for l, n in enumerate(sizes[1:], start=1):
            self.register_buffer(f"parent_{l}", torch.full((n,), -1, dtype=torch.long))

    @property
    def sizes(self) -> list[int]:
        """Features per level."""
        return [lv.n for lv in self.levels]

    def parent(self, l: int) -> torch.Tensor:
        """Parent array of level l >= 1: int64 [n_l], index into level l-1 or -1."""
        return getattr(self, f"parent_{l}")

    def set_parent(self, l: int, parent: torch.Tensor) -> None:
        """Replace level l's parent array (values in [-1, n_{l-1}))."""
        p = self.parent(l)
        if parent.shape != p.shape or parent.min() < -1 or parent.max() >= self.levels[l - 1].n:
            raise ValueError(f"bad parent array for level {l}")
        p.copy_(parent)

    def encode(self, x: torch.Tensor, bandwidth: float = 1e-3) -> list[torch.Tensor]:
        """Activations of every level, a list of [B, n_l]."""
        return [lv.encode(x, bandwidth) for lv in self.levels]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unperturbed reconstruction of every level, a list of [B, d]."""
        return [lv.decode(lv.encode(x)) for lv in self.levels]

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder row to unit norm (the loss's identities assume it)."""
        for lv in self.levels:
            lv.W_dec.div_(lv.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the component of each decoder row's gradient along the row itself.

        Such a component only changes the row's norm, which normalize_decoder undoes, and
        Adam would otherwise spend its step size on it.
        """
        for lv in self.levels:
            w, g = lv.W_dec, lv.W_dec.grad
            if g is not None:
                g.sub_((g * w).sum(1, keepdim=True) * w)
