"""The HSAE training loss (PAPER.md sections 2-3, computed as in section 8).

  loss = sum_l ||x~_l - x||^2 + lambda_l L0_l  +  rho sum_{l<L-1} constraint_l  (+ ghost grads)

x~_l is level l's reconstruction with swapped parents replaced by their children:
  x~_l = (A_l * keep) W_l + A_{l+1}[:, C(S)] W_{l+1}[C(S)] + b_dec_l
where S are the swapped parents (one mask per step, shared by the batch; keep = 0 on S) and
C(S) their children. The second product touches only ~r of the columns, so the swap costs
~r of a decode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .constraint import constraint
from .hsae import HSAE
from .jumprelu import jumprelu_l0


@dataclass
class LossOutput:
    """The scalar loss plus detached per-level statistics for the trainer."""

    loss: torch.Tensor
    mse: list[float]
    l0: list[float]
    constraint: list[float]
    ghost: list[float]
    active: list[torch.Tensor]  # bool [B, n_l] per level, detached


def swapped_children(parent: torch.Tensor, swap: torch.Tensor) -> torch.Tensor:
    """Bool [n_{l+1}]: children whose parent is in the swap mask [n_l]."""
    return (parent >= 0) & swap[parent.clamp_min(0)]


def ghost_loss(x: torch.Tensor, x_hat: torch.Tensor, h: torch.Tensor, W_dec: torch.Tensor,
               dead: torch.Tensor, mse: torch.Tensor) -> torch.Tensor:
    """Ghost gradients (Jermyn & Templeton 2024) for the dead features of one level.

    Dead features, with exp(pre-activation) as their activation, are asked to explain the
    residual x - x_hat, scaled to half its norm; the loss is rescaled to the size of the
    level's MSE so it neither dominates nor vanishes.
    """
    resid = (x - x_hat).detach()
    idx = dead.nonzero().squeeze(1)
    out = torch.exp(h[:, idx].clamp(max=30.0)) @ W_dec[idx]
    scale = (resid.norm(dim=1, keepdim=True) / (2 * out.norm(dim=1, keepdim=True).clamp_min(1e-8))).detach()
    g = (out * scale - resid).square().sum(1).mean()
    return g * (mse.detach() / g.detach().clamp_min(1e-12))


def hsae_loss(
    model: HSAE,
    x: torch.Tensor,
    lambdas: list[float],
    rho: float,
    swap: list[torch.Tensor | None] | None = None,
    dead: list[torch.Tensor | None] | None = None,
    bandwidth: float = 1e-3,
) -> LossOutput:
    """The fast HSAE loss on a batch x [B, d].

    swap[l] (l < L-1): bool [n_l] of parents swapped this step (None: no swap).
    dead[l]: bool [n_l] of features that get ghost gradients (None: none).
    rho = 0 with no swaps trains the levels independently (the post-hoc baseline).
    """
    L = len(model.levels)
    swap = swap or [None] * L
    dead = dead or [None] * L
    hs, acts, l0s_t, supports = [], [], [], []
    for lv in model.levels:
        h = lv.pre(x)
        a, l0, support = jumprelu_l0(h, lv.threshold, bandwidth)
        hs.append(h)
        acts.append(a)
        l0s_t.append(l0)
        supports.append(support)

    total = x.new_zeros(())
    mses, l0s, cons, ghosts = [], [], [], []
    for l, lv in enumerate(model.levels):
        C = None
        if l < L - 1 and swap[l] is not None:
            C = swapped_children(model.parent(l + 1), swap[l]).nonzero().squeeze(1)
        if C is not None and C.numel():
            # Swapped parents (only those with children, PAPER.md section 3) are masked out of
            # their level's decode; their children's outputs are added in their place.
            keep = torch.ones(lv.n, dtype=x.dtype)
            keep[model.parent(l + 1)[C]] = 0
            child = model.levels[l + 1]
            x_t = lv.decode(acts[l] * keep) + acts[l + 1].index_select(1, C) @ child.W_dec.index_select(0, C)
        else:
            x_t = lv.decode(acts[l])
        mse = (x_t - x).square().sum(1).mean()
        l0 = l0s_t[l]
        total = total + mse + lambdas[l] * l0
        mses.append(mse.item())
        l0s.append(l0.item())
        if dead[l] is not None and bool(dead[l].any()):
            g = ghost_loss(x, x_t, hs[l], lv.W_dec, dead[l], mse)
            total = total + g
            ghosts.append(g.item())
        else:
            ghosts.append(0.0)
        if l < L - 1 and rho > 0:
            c = constraint(acts[l], acts[l + 1], supports[l + 1], lv.W_dec,
                           model.levels[l + 1].W_dec, model.parent(l + 1))
            total = total + rho * c
            cons.append(c.item())
    return LossOutput(total, mses, l0s, cons, ghosts, [a.detach() > 0 for a in acts])
