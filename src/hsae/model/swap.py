"""The swap of PAPER.md section 3 as a correction to a level's plain decode.

With S the swapped parents that have children and C(S) their children,

  x~_l = a_l W_l + b_l  +  a_{l+1}[:, C] W_{l+1}[C] - a_l[:, S] W_l[S]

so the level's own decode stays the dense product of an unswapped level, and the swap costs
two products over ~r of the columns. The backward returns sparse gradients (only the
columns S and C, only the rows S and C), which autograd adds in place into the dense ones
from the decode, instead of full-size tensors.
"""

from __future__ import annotations

import torch

from .constraint import sparse_grad


def _rows_cols(B: int, cols: torch.Tensor):
    """Row-major (row, col) indices of the block [B, cols]."""
    rows = torch.arange(B, device=cols.device).repeat_interleave(cols.numel())
    return rows, cols.repeat(B)


class _SwapDelta(torch.autograd.Function):
    """a_c[:, C] @ W_c[C] - a_p[:, S] @ W_p[S]; C and S sorted and distinct."""

    @staticmethod
    def forward(ctx, a_p, a_c, W_p, W_c, S, C):
        AC, WC = a_c.index_select(1, C), W_c.index_select(0, C)
        AS, WS = a_p.index_select(1, S), W_p.index_select(0, S)
        ctx.save_for_backward(AC, WC, AS, WS, S, C)
        ctx.shapes = a_p.shape, a_c.shape, W_p.shape, W_c.shape
        return AC @ WC - AS @ WS

    @staticmethod
    def backward(ctx, g):
        AC, WC, AS, WS, S, C = ctx.saved_tensors
        sp, sc, swp, swc = ctx.shapes
        B = g.shape[0]
        g = g.contiguous()
        # products in the saved tensors' dtype (bf16 under autocast), gradients in the inputs'
        ga_c = sparse_grad(*_rows_cols(B, C), (g.to(WC.dtype) @ WC.t()).reshape(-1), sc)
        ga_p = sparse_grad(*_rows_cols(B, S), (-(g.to(WS.dtype) @ WS.t())).reshape(-1), sp)
        gW_c = _row_grad(C, AC.t() @ g.to(AC.dtype), swc)
        gW_p = _row_grad(S, -(AS.t() @ g.to(AS.dtype)), swp)
        return ga_p, ga_c, gW_p, gW_c, None, None


def _row_grad(rows: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    """A gradient with only `rows` (sorted, distinct) nonzero: COO over dim 0, dense over dim 1."""
    return torch.sparse_coo_tensor(rows[None], values, shape, is_coalesced=True, check_invariants=False)


def swap_delta(a_p, a_c, W_p, W_c, parent: torch.Tensor, swap: torch.Tensor) -> torch.Tensor | None:
    """What the swap adds to level l's decode [B, d] (None: no swapped parent has children).

    parent [n_c]: level l+1's parent array; swap [n_p] bool: the parents swapped this step.
    """
    has_parent = parent >= 0
    hit = has_parent & swap[parent.clamp_min(0)]
    C = hit.nonzero().squeeze(1)
    if C.numel() == 0:
        return None
    S = torch.zeros_like(swap).index_fill_(0, parent[C], True).nonzero().squeeze(1)
    return _SwapDelta.apply(a_p, a_c, W_p, W_c, S, C)
