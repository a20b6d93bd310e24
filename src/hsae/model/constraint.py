"""The structural constraint of PAPER.md section 2, computed without [B, n, d] tensors.

Per input and per parent i with children C(i), with unit-norm decoder rows w:

  ||a_i w_i - sum_c a_c w_c||^2 = a_i^2 - 2 sum_c a_i a_c (w_i . w_c) + ||sum_c a_c w_c||^2

The first term is one pass over the parent level's [B, n_p] activations. The others need only
the child level's entries in the JumpReLU's support (active, or inside the threshold kernel,
where the threshold's pseudo-gradient lives), as flat indices. The middle one uses each child's
cosine to its parent (n_c * d, a fraction of one decode; its backward two sparse-dense
products), the last one's diagonal is sum_c a_c^2, and its off-diagonal part is computed per
(input, parent) group with at least two such children, as one sparse-dense product per chunk
(kept for the backward when they fit one).

The backward is hand-written and adds into gradient buffers it is given, in place
(model/couple.py gives it each level's one dense gradient): a separate autograd node would
hand the engine one more full-size tensor to sum per input, an allocation and a pass each.

That torch form is what a GPU runs. On a CPU, it all runs as model/kernel.py's compiled loops over
both levels' support entries, one pass forward and one backward, which gives the activations'
gradients at those entries (the JumpReLU's backward adds them in).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from . import kernel

# Entries per chunk times d stays under this many floats (4 MB in fp32): temporaries this
# small are recycled by the allocator, larger ones cost page faults on every step.
_CHUNK_FLOATS = 1 << 20


def _rows_per_chunk(d: int) -> int:
    """Rows of d floats that fit one chunk of _CHUNK_FLOATS."""
    return max(1, _CHUNK_FLOATS // max(d, 1))


def _row_chunks(n: int, d: int, like: torch.Tensor):
    """Yield (r0, r1, buffer) over n rows of d floats: row ranges of about _CHUNK_FLOATS floats, and
    an [r1 - r0, d] slice of one buffer (like's dtype and device) reused for every chunk."""
    step = _rows_per_chunk(d)
    buf = like.new_empty(min(n, step), d)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        yield r0, r1, buf[:r1 - r0]


def _chunks(group: torch.Tensor, d: int):
    """Yield (e0, e1) entry ranges, aligned to group starts, of bounded size."""
    m = group.numel()
    step = _rows_per_chunk(d)
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


def _csr(crow, col, vals, shape):
    """A CSR matrix, without torch's beta warning (these products use its plainest form)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, vals, shape, check_invariants=False)


def _by_column(rows, cols, vals, n: int, m: int):
    """The CSR [n, m] transpose of the entries (rows[e], cols[e]) -> vals[e]: entries ordered by column."""
    order = _sort(cols)[1]
    crow = torch.zeros(n + 1, dtype=cols.dtype, device=cols.device).index_add_(0, cols + 1, torch.ones_like(cols))
    return _csr(crow.cumsum(0), rows.take(order), vals.take(order), (n, m))


def _chunk_sums(vals, W, cols, group):
    """Per chunk: (e0, e1, local group index, S the CSR [entries // 2, n] group matrix, V = S W its groups' sums).

    Row g of S holds group g's entries (v_e at column c_e), rows past the last group are empty:
    every group has two entries or more, so half a row per entry bounds the groups without
    reading the last group index on the host."""
    for e0, e1 in _chunks(group, W.shape[1]):
        gi = group[e0:e1] - group[e0]
        rows = (e1 - e0) // 2
        crow = torch.searchsorted(gi, torch.arange(rows + 1, device=gi.device))
        S = _csr(crow, cols[e0:e1], vals[e0:e1], (rows, W.shape[0]))
        yield e0, e1, gi, S, S @ W


def _sq(t: torch.Tensor) -> torch.Tensor:
    """Sum of squares, as one dot product (no temporary)."""
    return torch.dot(t.view(-1), t.view(-1))


def _masked_sq(a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum of (a * mask)^2 for a [B, n] and mask [n], row chunk by row chunk in one reused buffer
    (a full-size temporary is a fresh allocation: 10 ms at [1024, 8192], 4x the arithmetic)."""
    total = a.new_zeros(())
    for r0, r1, b in _row_chunks(*a.shape, a):
        total = total + _sq(torch.mul(a[r0:r1], mask, out=b))
    return total


def sibling_cross(vals, W, cols, group, keep: list | None = None) -> torch.Tensor:
    """sum over groups g of ||sum_{e in g} v_e w_{c_e}||^2 - sum_e v_e^2.

    Entries must be sorted by group. With unit-norm rows w (the module's premise) that is
    2 * sum over same-group pairs e < e' of v_e v_e' (w_c_e . w_c_e'): the sibling-sibling cross
    term. keep: a list that receives the chunk's sums when there is one chunk (a few MB), so the
    backward need not rebuild them.
    """
    chunks = list(_chunk_sums(vals, W, cols, group))
    total = -_sq(vals)
    for *_, V in chunks:
        total = total + _sq(V)
    if keep is not None and len(chunks) == 1:
        keep.extend(chunks)
    return total


def _sibling_cross_backward(vals, W, cols, group, g, gv, gW, kept: list | None = None) -> None:
    """Add g times sibling_cross's gradient to gv (per entry) and gW (rows of W)."""
    for e0, e1, gi, S, V in kept or _chunk_sums(vals, W, cols, group):
        # d/dv_e = 2 (w_e . V_g - v_e), sampled at the entries only; d/dw_c = 2 sum_{e: c_e = c} v_e V_g
        u = torch.sparse.sampled_addmm(S, V, W.t(), beta=0.0).values()
        v = vals[e0:e1]
        gv[e0:e1] += (2 * g) * (u - v)
        gW.addmm_(_by_column(gi, cols[e0:e1], (2 * g) * v, W.shape[0], V.shape[0]), V)


def _cosines(W_p, W_c, par) -> torch.Tensor:
    """s[c] = W_p[par[c]] . W_c[c], gathered chunk by chunk into one small reused buffer: an
    [n_c, d] temporary is a fresh allocation per step, which costs more than the products
    (at the paper's dims 200 ms against 27 ms; bench/RESULTS.md)."""
    s = W_c.new_empty(W_c.shape[0])
    for r0, r1, b in _row_chunks(*W_c.shape, W_c):
        torch.index_select(W_p, 0, par[r0:r1], out=b)
        torch.sum(b.mul_(W_c[r0:r1]), 1, out=s[r0:r1])
    return s


def _cosines_backward(ds, par, W_p, W_c, gW_p, gW_c) -> None:
    """Add the gradient of sum_c ds[c] s[c] into gW_p and gW_c: two sparse-dense products with the
    one-hot parent matrix scaled by ds, in place (no [n_c, d] temporary, no gather)."""
    n_c, n_p = W_c.shape[0], W_p.shape[0]
    gW_c.addmm_(_csr(torch.arange(n_c + 1, device=par.device), par, ds, (n_c, n_p)), W_p)  # ds[c] W_p[par[c]]
    # row p: the sum over its children of ds[c] W_c[c] (the transpose as CSR too, the layout every backend multiplies)
    gW_p.addmm_(_by_column(torch.arange(n_c, device=par.device), par, ds, n_p, n_c), W_c)


@dataclass
class ConstraintPlan:
    """The index sets of one level pair's constraint for one batch (see `constraint_plan`)."""

    par: torch.Tensor  # [n_c] parent, -1 replaced by 0 (masked by `keep`)
    flat: torch.Tensor  # flat [B * n_c] indices of the child level's support entries
    keep: torch.Tensor  # per entry, 1.0 where its feature has a parent (0: outside the constraint)
    pflat: torch.Tensor  # flat [B * n_p] index of each entry's parent
    cols: torch.Tensor  # each entry's child column
    sib: torch.Tensor  # entries of one (input, parent) group of two or more, sorted by group
    group: torch.Tensor  # their group index
    has_child: torch.Tensor  # [n_p] 1.0 where the parent has a child


@dataclass
class KernelPlan:
    """One level pair's constraint for one batch, for model/kernel.py's loops (a CPU, numba)."""

    parent: np.ndarray  # [n_c] int64, -1 = none
    child: tuple  # (flat indices, activations) of the child level's support entries, as numpy views
    par_entries: tuple  # and of the parent level's


def constraint_plan(entries_c, n_c: int, parent, n_p: int, dtype, entries_p=None) -> ConstraintPlan | KernelPlan:
    """The index sets of the constraint from the child level's support entries (`support_entries`
    of its [B, n_c] mask of where a is active or its threshold gradient is nonzero, a superset of
    a != 0), parent [n_c] int64 (-1 = none). Features outside the forest are masked, not
    filtered: a filter would be one more data-dependent shape (a host read on a GPU) per level pair.
    entries_p: the parent level's support entries where model/kernel.py's loops are to run, both levels'
    as numpy views (`kernel.view`) then (the activations' gradients are exact on the supports only:
    the JumpReLU discards the rest)."""
    if entries_p is not None:
        return KernelPlan(kernel.view(parent.contiguous()), entries_c, entries_p)
    has_parent = parent >= 0
    par = parent.clamp_min(0)
    has_child = torch.zeros(n_p, dtype=dtype, device=parent.device).index_add_(0, par, has_parent.to(dtype)).clamp_max_(1)
    entries_c = entries_c[0]
    rows, cols = _divmod(entries_c, n_c)
    keep = has_parent.take(cols)
    pc = par.take(cols)
    pflat = rows * n_p + pc
    # (input, parent) keys in row order; an orphan's key (input, n_p + its column) is unique, so
    # it is in no sibling group
    sib, group = sibling_groups(rows * (n_p + n_c) + torch.where(keep, pc, n_p + cols))
    return ConstraintPlan(par, entries_c, keep.to(dtype), pflat, cols, sib, group, has_child)


def constraint_sum(c: ConstraintPlan | KernelPlan, a_p, a_c, W_p, W_c):
    """(t1 - 2 t2 + t3 of the module docstring summed over the batch, what its backward needs)."""
    if isinstance(c, KernelPlan):
        (fc, vc), (fp, vp), Wp, Wc = c.child, c.par_entries, kernel.view(W_p), kernel.view(W_c)
        s, ap = np.empty(Wc.shape[0], Wc.dtype), np.empty_like(vc)
        t1, t2, t3, *gram = kernel.constraint_forward(fc, vc, a_c.shape[1], fp, vp, a_p.shape[1], c.parent, Wp, Wc,
                                                      s, ap, kernel.GRAM_FAMILY)
        return a_p.new_tensor(t1 - 2 * t2 + t3), (s, ap, gram)
    # flat gathers as `take`: ~5x a 1-D index_select on a CPU
    vals = a_c.take(c.flat) * c.keep  # an orphan's value counts for nothing
    ap = a_p.take(c.pflat)
    se = _cosines(W_p, W_c, c.par).take(c.cols)
    # t1 densely, so the parent level needs no support scan
    total = _masked_sq(a_p, c.has_child) - 2 * torch.dot(ap * vals, se) + _sq(vals)
    kept: list = []
    if c.sib.numel():
        total += sibling_cross(vals.take(c.sib), W_c, c.cols.take(c.sib), c.group, kept)
    return total, (vals, ap, se, kept)


def constraint_backward(c: ConstraintPlan | KernelPlan, saved, g, a_p, W_p, W_c, ga_p, ga_c, gW_p, gW_c) -> None:
    """Add g times constraint_sum's gradient into the buffers ga_p, ga_c, gW_p, gW_c, in place: ga_p and
    ga_c are the levels' dense [B, n] gradients, or for a KernelPlan their gradients at the support
    entries (one per entry)."""
    if isinstance(c, KernelPlan):
        (s, ap, gram), v = saved, kernel.view
        (fc, vc), (fp, vp) = c.child, c.par_entries
        kernel.constraint_backward(fc, vc, ap, W_c.shape[0], fp, vp, W_p.shape[0], c.parent, s, v(W_p),
                                   v(W_c), v((2 * g).reshape(1)), v(ga_c), v(ga_p), v(gW_p), v(gW_c), *gram)
        return
    vals, ap, se, kept = saved
    gv = (2 * g) * (vals - ap * se)
    if c.sib.numel():
        vs = vals.take(c.sib)
        gs = torch.zeros_like(vs)
        _sibling_cross_backward(vs, W_c, c.cols.take(c.sib), c.group, g, gs, gW_c, kept)
        gv.index_add_(0, c.sib, gs)
    ga_c.view(-1).index_add_(0, c.flat, gv * c.keep)
    ga_p.addcmul_(a_p, (2 * g) * c.has_child)
    ga_p.view(-1).index_add_(0, c.pflat, (-2 * g) * vals * se)
    # d/dW of t2 through each child's cosine to its parent
    ds = W_c.new_zeros(W_c.shape[0]).index_add_(0, c.cols, (-2 * g) * ap * vals)  # an orphan's is 0
    _cosines_backward(ds, c.par, W_p, W_c, gW_p, gW_c)


def flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Ascending flat indices of a bool tensor's True entries, found word by word when it is sparse.

    A support mask is ~99% zero: the nonzero 8-byte words are found first, then the set bytes
    inside them, so the slow scan runs over 8x fewer elements (~2x faster on a CPU).
    """
    f = mask.reshape(-1)
    if f.device.type != "cpu" or f.numel() % 8 or f.storage_offset() % 8:  # on a GPU: one scan, one sync
        return f.nonzero().squeeze(1)
    words = f.view(torch.int64).nonzero().squeeze(1)
    inner = f.view(-1, 8).index_select(0, words).view(-1).nonzero().squeeze(1)
    return (words.take(inner >> 3) << 3) | (inner & 7)  # shifts: an int64 division is ~10x an add


def support_entries(mask: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ascending flat indices of a bool [B, n] mask's True entries, a [B, n] at them where
    model/kernel.py's loops run, else None): the couplings' view of a level's support."""
    f = mask.reshape(-1)
    if (kernel.takes(a) and a.is_contiguous()
            and f.numel() % 8 == 0 and f.storage_offset() % 8 == 0):
        flat, vals = kernel.support_entries(f.numpy().view(np.int64), kernel.view(a.reshape(-1)))
        return torch.from_numpy(flat), torch.from_numpy(vals)
    return flat_nonzero(mask), None


def _divmod(e: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(e // n, e % n) of non-negative int64 indices; numpy divides by a constant ~2x faster on a CPU."""
    if e.device.type != "cpu":
        return e // n, e % n
    q, r = np.divmod(e.numpy(), n)
    return torch.from_numpy(q), torch.from_numpy(r)


def _sort(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted keys, order) of non-negative int64 keys, stable: the entries come row-major, so a
    group's children stay in column order (the CSR matrices built from them have sorted columns,
    as cuSPARSE expects). On a CPU each key carries its position in its low bits, so the keys are
    unique and numpy's vectorised value sort (~3x its argsort) is stable; order and key come
    back out with a mask and a shift."""
    n = key.numel()
    bits = max(n - 1, 1).bit_length()
    k = key.numpy() if key.device.type == "cpu" else None  # numpy: on a CPU there is no device to wait for
    if k is None or n == 0 or k.max() >= 1 << (62 - bits):
        return torch.sort(key, stable=True)
    packed = np.sort((k << bits) | np.arange(n, dtype=np.int64))
    return torch.from_numpy(packed >> bits), torch.from_numpy(packed & ((1 << bits) - 1))


def sibling_groups(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(entries, group index) of the entries whose key is shared with another, sorted by key.

    Sorting once and comparing neighbours finds the groups of two or more without `unique`.
    """
    ks, order = _sort(key)
    same = ks[1:] == ks[:-1]
    multi = torch.zeros_like(ks, dtype=torch.bool)
    multi[1:] |= same
    multi[:-1] |= same
    pos = multi.nonzero().squeeze(1)
    # a new group starts where the key changes (the first multi entry always starts one)
    start = torch.ones_like(pos, dtype=torch.bool)
    kp = ks.take(pos)
    start[1:] = kp[1:] != kp[:-1]
    return order.take(pos), torch.cumsum(start, 0) - 1
