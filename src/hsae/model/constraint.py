"""The structural constraint of PAPER.md section 2, computed without [B, n, d] tensors.

Per input and per parent i with children C(i), with unit-norm decoder rows w:

  ||a_i w_i - sum_c a_c w_c||^2 = a_i^2 - 2 sum_c a_i a_c (w_i . w_c) + ||sum_c a_c w_c||^2

The first two terms are elementwise. The last needs only children that are in the
JumpReLU's support in that input (active, or inside the threshold kernel, where the
threshold's pseudo-gradient lives): its diagonal is sum_c a_c^2, and its off-diagonal part
is computed per (input, parent) group with at least two such children by `_SiblingCross`,
which recomputes in chunks instead of saving anything of size [groups, d].
"""

from __future__ import annotations

import torch

# Entries per chunk times d stays under this many floats (4 MB in fp32): temporaries this
# small are recycled by the allocator, larger ones cost page faults on every step.
_CHUNK_FLOATS = 1 << 20


def _chunks(group: torch.Tensor, d: int):
    """Yield (e0, e1) entry ranges, aligned to group starts, of bounded size."""
    m = group.numel()
    step = max(1, _CHUNK_FLOATS // max(d, 1))
    if m <= step:
        yield 0, m
        return
    starts = torch.cat([group.new_zeros(1), (group[1:] != group[:-1]).nonzero().squeeze(1) + 1])
    e0 = 0
    while e0 < m:
        i = int(torch.searchsorted(starts, e0 + step))
        # First group start at or past the budget: a group larger than a chunk goes whole.
        e1 = int(starts[i]) if i < starts.numel() else m
        yield e0, e1
        e0 = e1


class _SiblingCross(torch.autograd.Function):
    """sum over groups g of ||sum_{e in g} v_e w_{c_e}||^2 - sum_e v_e^2 ||w_{c_e}||^2.

    Entries must be sorted by group. That is 2 * sum over same-group pairs e < e' of
    v_e v_e' (w_c_e . w_c_e'): the sibling-sibling cross term.
    """

    @staticmethod
    def forward(ctx, vals, W, cols, group):
        ctx.save_for_backward(vals, W, cols, group)
        total = vals.new_zeros(())
        for e0, e1, V, v, Wc, _ in _chunk_sums(vals, W, cols, group):
            total += (V * V).sum() - (v * v * (Wc * Wc).sum(1)).sum()
        return total

    @staticmethod
    def backward(ctx, g):
        vals, W, cols, group = ctx.saved_tensors
        gv = torch.zeros_like(vals)
        gW = torch.zeros_like(W)
        for e0, e1, V, v, Wc, gi in _chunk_sums(vals, W, cols, group):
            Vg = V.index_select(0, gi)
            gv[e0:e1] = (2 * g) * ((Vg * Wc).sum(1) - v * (Wc * Wc).sum(1))
            gW.index_add_(0, cols[e0:e1], ((2 * g) * v)[:, None] * (Vg - v[:, None] * Wc))
        return gv, gW, None, None


def _chunk_sums(vals, W, cols, group):
    """Per chunk: (e0, e1, V [groups, d] sums, values, rows of W, local group index)."""
    for e0, e1 in _chunks(group, W.shape[1]):
        v, Wc = vals[e0:e1], W.index_select(0, cols[e0:e1])
        gi = group[e0:e1] - group[e0]
        # one row per entry bounds the groups (the unused rows stay 0) without reading gi[-1] on the host
        V = W.new_zeros(e1 - e0, W.shape[1]).index_add_(0, gi, v[:, None] * Wc)
        yield e0, e1, V, v, Wc, gi


class _RowDot(torch.autograd.Function):
    """s[k] = A[ia[k]] . B[ib[k]], in chunks, saving no gathered rows (they can be [n, d])."""

    @staticmethod
    def forward(ctx, A, B, ia, ib):
        ctx.save_for_backward(A, B, ia, ib)
        step = max(1, _CHUNK_FLOATS // A.shape[1])
        out = A.new_empty(ia.numel())
        for k in range(0, ia.numel(), step):
            out[k:k + step] = (A.index_select(0, ia[k:k + step]) * B.index_select(0, ib[k:k + step])).sum(1)
        return out

    @staticmethod
    def backward(ctx, g):
        A, B, ia, ib = ctx.saved_tensors
        gA, gB = torch.zeros_like(A), torch.zeros_like(B)
        step = max(1, _CHUNK_FLOATS // A.shape[1])
        for k in range(0, ia.numel(), step):
            gk = g[k:k + step, None]
            gA.index_add_(0, ia[k:k + step], gk * B.index_select(0, ib[k:k + step]))
            gB.index_add_(0, ib[k:k + step], gk * A.index_select(0, ia[k:k + step]))
        return gA, gB, None, None


def constraint(
    a_p: torch.Tensor,
    a_c: torch.Tensor,
    support_c: torch.Tensor,
    W_p: torch.Tensor,
    W_c: torch.Tensor,
    parent: torch.Tensor,
) -> torch.Tensor:
    """Batch mean of sum_i ||f_i - sum_{c in C(i)} f_c||^2 over parents i with children.

    a_p [B, n_p], a_c [B, n_c]: activations; support_c [B, n_c] bool: where a_c is active or
    its threshold gradient is nonzero (a superset of a_c != 0); parent [n_c] int64, -1 = none.
    """
    B, n_p = a_p.shape
    has_parent = parent >= 0  # none (no forest yet): every term below is 0, with no host read
    has_child = torch.zeros(n_p, dtype=torch.bool, device=a_p.device)
    has_child[parent[has_parent]] = True
    t1 = (a_p.square() * has_child).sum()

    rows, cols = (support_c & has_parent).nonzero(as_tuple=True)
    if rows.numel() == 0:
        return t1 / B
    par = parent[cols]
    vals = a_c[rows, cols]
    # cosine of each child in this batch to its parent
    uc, inv = torch.unique(cols, return_inverse=True)
    s = _RowDot.apply(W_p, W_c, parent[uc], uc)[inv]
    t2 = (a_p[rows, par] * vals * s).sum()
    t3 = vals.square().sum()

    # Group entries by (input, parent); only groups of two or more carry a cross term.
    key = rows * n_p + par
    uniq, inv, counts = torch.unique(key, return_inverse=True, return_counts=True)
    multi = (counts[inv] >= 2).nonzero().squeeze(1)
    if multi.numel():
        idx = multi[torch.argsort(inv[multi], stable=True)]
        g_old = inv[idx]
        group = torch.cumsum(torch.cat([g_old.new_ones(1), (g_old[1:] != g_old[:-1]).long()]), 0) - 1
        t3 = t3 + _SiblingCross.apply(vals[idx], W_c, cols[idx], group)
    return (t1 - 2 * t2 + t3) / B
