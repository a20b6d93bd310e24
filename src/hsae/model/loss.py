"""The HSAE training loss (PAPER.md sections 2-3, computed as in section 8).

  loss = sum_l ||x~_l - x||^2 + lambda_l L0_l  +  rho sum_{l<L-1} constraint_l  (+ ghost grads)

x~_l is level l's reconstruction with swapped parents replaced by their children:
  x~_l = A_l W_l + b_dec_l + A_{l+1}[:, C(S)] W_{l+1}[C(S)] - A_l[:, S] W_l[S]
where S are the swapped parents with children (one mask per step, shared by the batch) and
C(S) their children (model/swap.py). The corrections are two small dense products over those
~r of the columns, and the constraint touches only the child levels' support entries
(model/constraint.py). The decodes, swaps and constraints are one autograd node
(model/couple.py), so each level's gradients are built once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .constraint import support_entries
from .couple import compiled, coupled_decodes
from .hsae import HSAE
from .jumprelu import jumprelu_l0


@dataclass
class LossOutput:
    """The scalar loss plus detached per-level statistics for the trainer.

    The statistics stay 0-d tensors on the loss's device: reading them is the trainer's one host
    synchronisation per step (a GPU step can then run ahead of the host until that read)."""

    loss: torch.Tensor
    mse: list[torch.Tensor]
    l0: list[torch.Tensor]
    constraint: list[torch.Tensor]
    ghost: list[torch.Tensor]
    active: list[torch.Tensor]  # bool [B, n_l] per level, detached


def ghost_loss(x: torch.Tensor, x_hat: torch.Tensor, h: torch.Tensor, W_dec: torch.Tensor,
               dead: torch.Tensor, mse: torch.Tensor, mean: Callable | None = None) -> torch.Tensor:
    """Ghost gradients (Jermyn & Templeton 2024) for the dead features of one level.

    Dead features, with exp(pre-activation) as their activation, are asked to explain the
    residual x - x_hat, scaled to half its norm; the loss is rescaled to the size of the
    level's MSE so it neither dominates nor vanishes. `mean` averages detached statistics
    over data-parallel ranks, so the rescaling is that of the global batch.
    """
    resid = (x - x_hat).detach()
    idx = dead.nonzero().squeeze(1)
    out = (torch.exp(h[:, idx].clamp(max=30.0)) @ W_dec[idx]).to(resid.dtype)
    scale = (resid.norm(dim=1, keepdim=True) / (2 * out.norm(dim=1, keepdim=True).clamp_min(1e-8))).detach()
    g = (out * scale - resid).square().sum(1).mean()
    stats = torch.stack([mse.detach(), g.detach()])
    if mean is not None:
        stats = mean(stats)
    # * dead.any(): a mask with no dead feature adds nothing (the residual alone is not a ghost
    # term), decided on the device rather than by a host read
    return g * (stats[0] / stats[1].clamp_min(1e-12)) * dead.any()


def encode_level(lv, x: torch.Tensor, bandwidth: float, entries: bool = False):
    """(pre-activations, activations, batch-mean L0, active mask, support) of one level, in the weights'
    dtype; the support as `jumprelu_l0` gives it (a mask, or where its loop runs, entries if `entries`).

    The dense, fixed-shape part of the loss: what `hsae train --compile` compiles.
    """
    h = lv.pre(x).to(lv.W_enc.dtype)
    return (h, *jumprelu_l0(h, lv.threshold, bandwidth, entries))


def hsae_loss(
    model: HSAE,
    x: torch.Tensor,
    lambdas: list[float],
    rho: float,
    swap: list[torch.Tensor | None] | None = None,
    dead: list[torch.Tensor | None] | None = None,
    bandwidth: float = 1e-3,
    mean: Callable | None = None,
    encode: Callable = encode_level,
) -> LossOutput:
    """The fast HSAE loss on a batch x [B, d].

    swap[l] (l < L-1): bool [n_l] of parents swapped this step (None: no swap).
    dead[l]: bool [n_l] of features that get ghost gradients (None: none; the trainer passes None
    where it knows there are none, so it skips the work without reading the device).
    rho = 0 with no swaps trains the levels independently (the post-hoc baseline).
    mean: averages a detached tensor over data-parallel ranks (None: one process).
    encode: encode_level, or a compiled version of it.
    Under bf16 autocast the products run in bf16; their outputs are cast back to the
    weights' dtype, so thresholds, L0 and every loss term are computed in full precision.
    """
    L = len(model.levels)
    swap = swap or [None] * L
    dead = dead or [None] * L
    # The couplings touch only support entries, found while the mask is still in the cache: the
    # constraint's torch form the child levels', model/kernel.py's loops every level's.
    fast = (rho > 0 or any(s is not None for s in swap)) and compiled(x)
    hs, acts, l0s_t, active, entries = [], [], [], [], []
    for l, lv in enumerate(model.levels):
        need = (rho > 0 and l > 0) or fast
        h, a, l0, act, support = encode(lv, x, bandwidth, need)
        hs.append(h)
        acts.append(a)
        l0s_t.append(l0)
        active.append(act)
        if need and not isinstance(support, tuple):  # the torch form's mask (e.g. a compiled encode)
            flat, vals = support_entries(support, a)
            support = (flat, None if vals is None else a.reshape(-1).take(flat))  # vals with their gradient
        entries.append(support if need else None)

    levels = model.levels
    parents = [None] + [model.parent(l) for l in range(1, L)]
    x_ts, cons = coupled_decodes(acts, [v.W_dec for v in levels], [v.b_dec for v in levels], parents, entries,
                                 swap, rho, x.dtype)
    total = x.new_zeros(())
    mses, l0s, ghosts = [], [], []
    for l, lv in enumerate(model.levels):
        x_t = x_ts[l]
        mse = (x_t - x).square().sum(1).mean()
        l0 = l0s_t[l]
        total = total + mse + lambdas[l] * l0
        mses.append(mse.detach())
        l0s.append(l0.detach())
        if dead[l] is not None:
            g = ghost_loss(x, x_t, hs[l], lv.W_dec, dead[l], mse, mean)
            total = total + g
            ghosts.append(g.detach())
        else:
            ghosts.append(x.new_zeros(()))
    for c in cons:
        total = total + rho * c
    cons = [c.detach() for c in cons]
    return LossOutput(total, mses, l0s, cons, ghosts, active)
