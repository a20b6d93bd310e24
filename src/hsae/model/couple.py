"""Every level's decode, the swaps and the constraints as one autograd node.

A level's activations and decoder get gradients from up to five terms: its own decode, its
swap as a parent, the swap of the level below it as a child, and the constraint as parent
and as child. As separate autograd nodes, the engine sums those gradients itself, out of
place whenever it cannot reuse a buffer: a full [B, n] or [n, d] allocation and pass each time
(bench/RESULTS.md). In one node, the backward builds each level's gradients once, from the
decode's dense products, and adds the couplings' sparse parts into them in place; where
model/kernel.py's loops run, the activations' parts go to the support entries' values, an input
of their own, whose gradient the JumpReLU's backward adds in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import kernel
from .constraint import ConstraintPlan, constraint_backward, constraint_plan, constraint_sum
from .swap import swap_add_, swap_backward, swap_cancel_, swap_plan


@dataclass
class _Spec:
    L: int
    swaps: list  # per level l < L-1: its SwapPlan or None
    cons: list  # per level pair: its ConstraintPlan (empty: rho = 0, no constraint)
    dtype: torch.dtype  # of the products (bf16 under autocast)
    out_dtype: torch.dtype  # of the reconstructions (the input's)


class _Coupled(torch.autograd.Function):
    """(x~_0, ..., x~_{L-1}, constraint_0, ...) from (a_l..., W_l..., b_l..., v_l...); see `coupled_decodes`.

    v_l: level l's activations at its support entries where the couplings run as model/kernel.py's
    loops (else None): the decode takes a_l, the couplings v_l, and v_l's gradient comes back as
    entries, which the JumpReLU's backward adds into a_l's."""

    @staticmethod
    def forward(ctx, spec: _Spec, *t):
        L = spec.L
        A, W, b = t[:L], t[L:2 * L], t[2 * L:3 * L]
        Am, Wm = [a.to(spec.dtype) for a in A], [w.to(spec.dtype) for w in W]  # no copy in fp32
        outs, swap_saved, cons, cons_saved = [], [], [], []
        for l in range(L):
            y = torch.addmm(b[l].to(spec.dtype), Am[l], Wm[l])
            sw, saved = spec.swaps[l], None
            if sw is not None:
                saved = swap_add_(sw, y, Am[l], Am[l + 1], Wm[l], Wm[l + 1])
            outs.append(y.to(spec.out_dtype))
            swap_saved.append(saved)
        B = A[0].shape[0]
        with torch.autocast(W[0].device.type, enabled=False):  # the constraint stays in the weights' dtype
            for l, c in enumerate(spec.cons):
                total, saved = constraint_sum(c, A[l], A[l + 1], W[l], W[l + 1])
                cons.append(total / B)
                cons_saved.append(saved)
        ctx.spec, ctx.swap_saved, ctx.cons_saved = spec, swap_saved, cons_saved
        ctx.entries = [(v.shape, v.dtype) if v is not None else None for v in t[3 * L:]]
        ctx.save_for_backward(*A, *W, *Am, *Wm)
        return (*outs, *cons)

    @staticmethod
    def backward(ctx, *grads):
        spec = ctx.spec
        L = spec.L
        t = ctx.saved_tensors
        A, W, Am, Wm = t[:L], t[L:2 * L], t[2 * L:3 * L], t[3 * L:]
        g = [x.to(spec.dtype) for x in grads[:L]]
        gW = [(Am[l].t() @ g[l]).to(W[l].dtype) for l in range(L)]
        gb = [grads[l].sum(0) for l in range(L)]
        # each level's one dense gradient, from its decode; in the torch form the couplings of the
        # pair (l - 1, l) add into it in place right after its product, while that is still in the
        # cache (the weights' products come first, so the couplings can add into them). The loops
        # add theirs into the gradients at the entries, gV.
        gA: list = []
        gV = [torch.zeros(v[0], dtype=v[1]) if v is not None else None for v in ctx.entries]
        ga = gV if gV[0] is not None else gA  # the loops ran: every level has its entries' values
        for l in range(L):
            gA.append((g[l] @ Wm[l].t()).to(A[l].dtype))
            if spec.swaps[l] is not None:  # before anything is added: the swap cancels the decode's part only
                swap_cancel_(spec.swaps[l], ctx.swap_saved[l], gA[l])
            if l > 0 and spec.swaps[l - 1] is not None:
                swap_backward(spec.swaps[l - 1], ctx.swap_saved[l - 1], g[l - 1], ga[l], gW[l - 1], gW[l])
            if l > 0 and spec.cons:
                gc = grads[L + l - 1] / A[0].shape[0]
                constraint_backward(spec.cons[l - 1], ctx.cons_saved[l - 1], gc, A[l - 1], W[l - 1], W[l],
                                    ga[l - 1], ga[l], gW[l - 1], gW[l])
        return (None, *gA, *gW, *gb, *gV)


def compiled(t: torch.Tensor) -> bool:
    """Whether the couplings run as model/kernel.py's loops over support entries, for tensors like
    t: on a CPU in fp32 or fp64 (numba has no bf16, so not under autocast). They then need every
    level's support entries."""
    return kernel.takes(t) and not torch.is_autocast_enabled(t.device.type)


def coupled_decodes(acts, W, b, parents, entries, swap, rho: float, out_dtype: torch.dtype):
    """(x~_l per level [B, d] in out_dtype, batch-mean constraint per level pair (empty if rho = 0)).

    acts[l] [B, n_l] activations, W[l] [n_l, d] unit-norm decoder rows, b[l] [d] decoder biases,
    parents[l] (l >= 1) [n_l] int64 parent array (-1 = none; parents[0] is unused),
    entries[l] (`support_entries`) the ascending flat indices of level l's support, where a_l is
    active or its threshold gradient is nonzero, with a_l there where model/kernel.py's loops run
    (differentiable, as `jumprelu_l0` gives them: the loops' gradients go there): the constraint
    needs them for l >= 1 (None where rho = 0); the couplings need them for every level where
    `compiled` (the activations' gradients are then exact on the supports only, all the JumpReLU
    passes on),
    swap[l] bool [n_l] of the parents swapped this step (None: none).
    Under autocast the products run in its dtype; the constraint stays in the weights' dtype.
    """
    L = len(acts)
    dev = W[0].device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else W[0].dtype
    n = [w.shape[0] for w in W]
    fast = compiled(W[0]) and all(e is not None and e[1] is not None for e in entries)
    # the loops take each level's entries as numpy views, taken once here
    sup = [(kernel.view(e[0]), kernel.view(e[1])) for e in entries] if fast else [None] * L
    swaps = [swap_plan(parents[l + 1], swap[l], n[l], sup[l], sup[l + 1]) if l < L - 1 and swap[l] is not None
             else None for l in range(L)]
    cons: list[ConstraintPlan] = []
    if rho > 0:
        cons = [constraint_plan(sup[l + 1] if fast else entries[l + 1], n[l + 1], parents[l + 1], n[l], W[l].dtype,
                                sup[l])
                for l in range(L - 1)]
    out = _Coupled.apply(_Spec(L, swaps, cons, dtype, out_dtype), *acts, *W, *b,
                         *[e[1] if fast else None for e in entries])
    return list(out[:L]), list(out[L:])
