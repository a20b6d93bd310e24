"""JumpReLU and its step function with straight-through pseudo-derivatives.

Rajamanoharan et al. 2024: the forward pass is exact; the backward pass replaces the
zero/undefined derivative w.r.t. the threshold by a kernel estimate. We use the
rectangle kernel K(u) = 1[|u| < 1/2] with bandwidth eps (see `HSAEConfig.bandwidth`):

  jumprelu(h, t) = h * 1[h > t]    d/dh = 1[h > t]    d/dt = -(t / eps) K((h - t) / eps)
  step(h, t)     = 1[h > t]        d/dh = 0           d/dt = -(1 / eps) K((h - t) / eps)

d step / dh is zero so that the L0 penalty moves only thresholds, never the encoder.
On a CPU, the training forward (`jumprelu_l0`) is one of model/kernel.py's loops: one pass
instead of seven, with the support entries the couplings need taken on the way; its backward is
one pass too, which adds the couplings' gradients, given at those entries, into a's.
"""

from __future__ import annotations

import numpy as np
import torch

from . import kernel


def _near(h: torch.Tensor, t: torch.Tensor, eps: float) -> torch.Tensor:
    """The rectangle kernel's support, |h - t| < eps / 2, as a bool mask (used in `where`, never as
    a float factor: that would copy the whole mask)."""
    return (h - t).abs() < eps / 2


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, t, eps):
        ctx.save_for_backward(h, t)
        ctx.eps = eps
        return torch.where(h > t, h, 0.0)  # not h * mask: that first copies the mask to float (see below)

    @staticmethod
    def backward(ctx, g):
        h, t = ctx.saved_tensors
        gh = torch.where(h > t, g, 0.0)
        gt = -torch.where(_near(h, t, ctx.eps), g * t, 0.0).sum(0) / ctx.eps
        return gh, gt, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, t, eps):
        ctx.save_for_backward(h, t)
        ctx.eps = eps
        return (h > t).to(h.dtype)

    @staticmethod
    def backward(ctx, g):
        h, t = ctx.saved_tensors
        gt = -torch.where(_near(h, t, ctx.eps), g, 0.0).sum(0) / ctx.eps
        return None, gt, None


def jumprelu(h: torch.Tensor, threshold: torch.Tensor, eps: float) -> torch.Tensor:
    """JumpReLU of pre-activations h [B, n] with per-feature thresholds [n]."""
    return _JumpReLU.apply(h, threshold, eps)


def step(h: torch.Tensor, threshold: torch.Tensor, eps: float) -> torch.Tensor:
    """Heaviside 1[h > threshold] [B, n], differentiable w.r.t. the threshold only."""
    return _Step.apply(h, threshold, eps)


class _JumpReLUL0(torch.autograd.Function):
    """jumprelu and the batch-mean L0 in one pass, saving two bool masks instead of h.

    Where model/kernel.py's loop runs and entries are asked for, a's values at the support entries
    are an output of their own: what takes them (the couplings) gives their gradient as entries,
    which the backward's loop adds in row by row (no scattered writes into a [B, n] gradient)."""

    @staticmethod
    def forward(ctx, h, t, eps, entries):
        ctx.eps, ctx.B = eps, h.shape[0]
        ctx.loop = _compiled(h, t)
        if ctx.loop:
            a, v = torch.empty_like(h), kernel.view
            active, near = torch.empty_like(h, dtype=torch.bool), torch.empty_like(h, dtype=torch.bool)
            cnt, flat, vals = kernel.jumprelu_l0(v(h), v(t), v(t - eps / 2), v(t + eps / 2), v(a),
                                                 v(active).view(np.uint8), v(near).view(np.uint8), entries)
            flat, vals = torch.from_numpy(flat), torch.from_numpy(vals)
            ctx.save_for_backward(active, near, t, flat)
            ctx.mark_non_differentiable(active, flat)
            return a, h.new_tensor(cnt) / ctx.B, active, flat if entries else None, vals if entries else None
        active = h > t
        near = (h > t - eps / 2) & (h < t + eps / 2)  # the rectangle kernel's support
        ctx.save_for_backward(active, near, t)
        support = active | near
        ctx.mark_non_differentiable(active, support)
        # where and count_nonzero, not products with or sums of the masks: on the CPU those first
        # copy the whole [B, n] mask to float, a pass and an allocation each
        return torch.where(active, h, 0.0), torch.count_nonzero(active).to(h.dtype) / ctx.B, active, support, None

    @staticmethod
    def backward(ctx, ga, gl0, _active, _support, gvals):
        if ctx.loop:
            active, near, t, flat = ctx.saved_tensors
            ga, v = ga.contiguous(), kernel.view
            gh, gt = torch.empty_like(ga), torch.empty_like(t)
            gv = torch.zeros_like(flat, dtype=ga.dtype) if gvals is None else gvals.to(ga.dtype).contiguous()
            kernel.jumprelu_backward(v(ga), v(gv), v(flat), v(active).view(np.uint8), v(near).view(np.uint8),
                                     v(t), v((gl0 / ctx.B).to(t.dtype).reshape(1)), ctx.eps, v(gh), v(gt))
            return gh, gt, None, None
        active, near, t = ctx.saved_tensors
        # both thresholds' terms share the kernel: -(1 / eps) sum over near rows of (t ga + gl0 / B)
        gt = -torch.where(near, torch.addcmul(gl0 / ctx.B, ga, t), 0.0).sum(0) / ctx.eps
        return torch.where(active, ga, 0.0), gt, None, None


def _compiled(h: torch.Tensor, t: torch.Tensor) -> bool:
    """Whether model/kernel.py's loop runs the forward: on a CPU in fp32/fp64 (thresholds in the same
    dtype), rows of whole words, and not inside torch.compile's tracing (which keeps the torch form)."""
    return (kernel.takes(h) and t.dtype == h.dtype and h.is_contiguous() and t.is_contiguous() and h.dim() == 2
            and h.shape[1] % 8 == 0 and not torch.compiler.is_compiling())


def jumprelu_l0(h: torch.Tensor, threshold: torch.Tensor, eps: float, entries: bool = False):
    """(jumprelu(h), mean over the batch of step(h).sum(1), the bool [B, n] mask h > threshold,
    support) with the same gradients as `jumprelu` and `step` used separately. The support, where a
    is active or its threshold gradient is nonzero, comes as a bool [B, n] mask in the torch form;
    where model/kernel.py's loop runs, as its entries (`support_entries`: flat indices, a there,
    differentiable) if `entries`, else None."""
    a, l0, active, support, vals = _JumpReLUL0.apply(h, threshold, eps, entries)
    return a, l0, active, support if vals is None else (support, vals)
