"""The structural constraint of PAPER.md section 2, computed without [B, n, d] tensors.

Per input and per parent i with children C(i), with unit-norm decoder rows w:

  ||a_i w_i - sum_c a_c w_c||^2 = a_i^2 - 2 sum_c a_i a_c (w_i . w_c) + ||sum_c a_c w_c||^2

The first term is elementwise over the parent level. The others need only the children's
entries in the JumpReLU's support (active, or inside the threshold kernel, where the
threshold's pseudo-gradient lives): the middle one uses each child's cosine to its parent
(n_c * d, a fraction of one decode), the last one's diagonal is sum_c a_c^2, and its
off-diagonal part is computed per (input, parent) group with at least two such children,
in chunks, saving nothing of size [groups, d].

One autograd Function does the whole pair with a hand-written backward: each input's
gradient is built once, in place, instead of as a sum of one full-size tensor per gather
(on a CPU those allocations and fills were most of the constraint's cost).
"""

from __future__ import annotations

import torch

# Entries per chunk times d stays under this many floats (4 MB in fp32): temporaries this
# small are recycled by the allocator, larger ones cost page faults on every step.
_CHUNK_FLOATS = 1 << 20


def _row_chunks(n: int, d: int):
    """Yield (r0, r1) row ranges of about _CHUNK_FLOATS floats."""
    step = max(1, _CHUNK_FLOATS // max(d, 1))
    for r0 in range(0, n, step):
        yield r0, min(n, r0 + step)


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


def _chunk_sums(vals, W, cols, group):
    """Per chunk: (e0, e1, V [groups, d] sums, values, rows of W, local group index)."""
    for e0, e1 in _chunks(group, W.shape[1]):
        v, Wc = vals[e0:e1], W.index_select(0, cols[e0:e1])
        gi = group[e0:e1] - group[e0]
        # one row per entry bounds the groups (the unused rows stay 0) without reading gi[-1] on the host
        V = W.new_zeros(e1 - e0, W.shape[1]).index_add_(0, gi, v[:, None] * Wc)
        yield e0, e1, V, v, Wc, gi


def sibling_cross(vals, W, cols, group) -> torch.Tensor:
    """sum over groups g of ||sum_{e in g} v_e w_{c_e}||^2 - sum_e v_e^2 ||w_{c_e}||^2.

    Entries must be sorted by group. That is 2 * sum over same-group pairs e < e' of
    v_e v_e' (w_c_e . w_c_e'): the sibling-sibling cross term.
    """
    total = vals.new_zeros(())
    for _, _, V, v, Wc, _ in _chunk_sums(vals, W, cols, group):
        total += (V * V).sum() - (v * v * (Wc * Wc).sum(1)).sum()
    return total


def _sibling_cross_backward(vals, W, cols, group, g, gv, gW) -> None:
    """Add g times sibling_cross's gradient to gv (per entry) and gW (rows of W)."""
    for e0, e1, V, v, Wc, gi in _chunk_sums(vals, W, cols, group):
        Vg = V.index_select(0, gi)
        gv[e0:e1] += (2 * g) * ((Vg * Wc).sum(1) - v * (Wc * Wc).sum(1))
        gW.index_add_(0, cols[e0:e1], ((2 * g) * v)[:, None] * (Vg - v[:, None] * Wc))


def _cosines(W_p, W_c, par) -> torch.Tensor:
    """s[c] = W_p[par[c]] . W_c[c], in chunks."""
    s = W_c.new_empty(W_c.shape[0])
    for r0, r1 in _row_chunks(*W_c.shape):
        s[r0:r1] = (W_p.index_select(0, par[r0:r1]) * W_c[r0:r1]).sum(1)
    return s


def sparse_grad(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    """A COO gradient of `shape` with values at distinct (rows, cols), in row-major order.

    Autograd adds it into the input's dense gradient in place (an index_add of its entries),
    where a dense one would cost a full-size allocation, fill and sum.
    """
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape, is_coalesced=True,
                                   check_invariants=False)


class _Constraint(torch.autograd.Function):
    """t1 - 2 t2 + t3 of the module docstring, summed over the batch (see `constraint`)."""

    @staticmethod
    def forward(ctx, a_p, a_c, W_p, W_c, par, has_child, flat, pflat, cols, sib, group):
        ctx.n_c = a_c.shape[1]
        vals = a_c.reshape(-1).index_select(0, flat)
        ap = a_p.reshape(-1).index_select(0, pflat)
        se = _cosines(W_p, W_c, par).index_select(0, cols)
        total = (a_p.square() * has_child).sum() - 2 * (ap * vals * se).sum() + vals.square().sum()
        if sib.numel():
            total += sibling_cross(vals[sib], W_c, cols[sib], group)
        ctx.save_for_backward(a_p, a_c, W_p, W_c, par, has_child, flat, pflat, cols, sib, group, vals, ap, se)
        return total

    @staticmethod
    def backward(ctx, g):
        a_p, a_c, W_p, W_c, par, has_child, flat, pflat, cols, sib, group, vals, ap, se = ctx.saved_tensors
        gv = (2 * g) * (vals - ap * se)
        gW_c = torch.zeros_like(W_c)
        if sib.numel():
            gs = torch.zeros_like(vals[sib])
            _sibling_cross_backward(vals[sib], W_c, cols[sib], group, g, gs, gW_c)
            gv.index_add_(0, sib, gs)
        # nonzero gave the entries distinct and in row-major order: a coalesced sparse gradient
        ga_c = sparse_grad(flat // ctx.n_c, cols, gv, a_c.shape)
        ga_p = a_p * ((2 * g) * has_child)
        ga_p.view(-1).index_add_(0, pflat, (-2 * g) * vals * se)
        # d/dW of t2 through each child's cosine to its parent
        ds = W_c.new_zeros(W_c.shape[0])
        ds.index_add_(0, cols, (-2 * g) * ap * vals)
        gW_p = torch.zeros_like(W_p)
        for r0, r1 in _row_chunks(*W_c.shape):
            p, d = par[r0:r1], ds[r0:r1, None]
            gW_c[r0:r1] += d * W_p.index_select(0, p)
            gW_p.index_add_(0, p, d * W_c[r0:r1])
        return ga_p, ga_c, gW_p, gW_c, *[None] * 7


def sibling_groups(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(entries, group index) of the entries whose key is shared with another, sorted by key.

    Sorting once and comparing neighbours finds the groups of two or more without `unique`.
    """
    ks, order = torch.sort(key)
    same = ks[1:] == ks[:-1]
    multi = torch.zeros_like(ks, dtype=torch.bool)
    multi[1:] |= same
    multi[:-1] |= same
    pos = multi.nonzero().squeeze(1)
    # a new group starts where the key changes (the first multi entry always starts one)
    start = torch.ones_like(pos, dtype=torch.bool)
    start[1:] = ks[pos[1:]] != ks[pos[:-1]]
    return order[pos], torch.cumsum(start, 0) - 1


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
    n_c = a_c.shape[1]
    has_parent = parent >= 0  # none (no forest yet): every term but t1 is empty, with no host read
    par = parent.clamp_min(0)
    has_child = a_p.new_zeros(n_p).index_add_(0, par, has_parent.to(a_p.dtype)) > 0
    # The support's entries as flat indices: 1-D gathers and scatters are the cheapest there are.
    flat = (support_c & has_parent).view(-1).nonzero().squeeze(1)
    cols = flat % n_c
    pflat = (flat // n_c) * n_p + parent[cols]
    sib, group = sibling_groups(pflat)  # entries of one (input, parent) group of two or more
    total = _Constraint.apply(a_p.contiguous(), a_c.contiguous(), W_p, W_c, par, has_child.to(a_p.dtype),
                              flat, pflat, cols, sib, group)
    return total / B
