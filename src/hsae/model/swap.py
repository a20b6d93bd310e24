"""The swap of PAPER.md section 3 as a correction to a level's plain decode, over columns.

With S the swapped parents that have children and C(S) their children,

  x~_l = a_l W_l + b_l  +  a_{l+1}[:, C] W_{l+1}[C] - a_l[:, S] W_l[S]

so the level's own decode stays the dense product of an unswapped level, and the correction is
two small dense products over the ~r of the columns that are swapped (PAPER.md section 8). In
the backward, the swapped parents' own gradient is zeroed in their columns (their two terms
cancel), and the swapped columns get their products (model/couple.py adds them into the dense
gradients in place). Per support entry, one scaled decoder row each, was measured slower at
the demo's density (bench/RESULTS.md); it wins only below ~1% density, where the step is
dominated by its products anyway. That was in torch; on a CPU, model/kernel.py's compiled loops
add one scaled decoder row per active entry of a swapped column (`EntrySwap`), with no
temporaries, which is faster there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import kernel


@dataclass
class SwapPlan:
    """One level pair's swapped columns for one step (see `swap_plan`)."""

    C: torch.Tensor  # the children of the swapped parents, ascending
    S: torch.Tensor  # the swapped parents that have children, ascending


@dataclass
class EntrySwap:
    """One level pair's swap for one step as model/kernel.py's loops run it (a CPU, numba): over the
    support entries of the swapped columns, so no [B, n] pass and no product over zeros."""

    child: np.ndarray  # [n_c] bool: the children of a swapped parent
    parent: np.ndarray  # [n_p] bool: the swapped parents that have children
    sup_c: tuple  # (flat indices, activations) of the child level's support entries, as numpy views
    sup_p: tuple  # and of the parent level's


def swap_plan(parent, swap, n_p: int, sup_p=None, sup_c=None) -> SwapPlan | EntrySwap | None:
    """The columns the swap touches (the torch form: None when no swapped parent has a child).

    parent [n_c]: level l+1's parent array (-1 = none); swap [n_p] bool: the parents swapped this step.
    sup_p, sup_c: both levels' support entries with their activations where model/kernel.py's loops
    are to run, as numpy views (`kernel.view`; the activations' gradients are then exact on the
    supports only: the JumpReLU discards the rest).
    """
    if sup_c is not None:
        child, par_on = kernel.swap_columns(kernel.view(parent.contiguous()), kernel.view(swap.contiguous()))
        return EntrySwap(child, par_on, sup_c, sup_p)
    par = parent.clamp_min(0)
    hit = (parent >= 0) & swap[par]  # children of a swapped parent
    C = hit.nonzero().squeeze(1)
    if C.numel() == 0:
        return None
    S = torch.zeros(n_p, dtype=torch.bool, device=parent.device).index_fill_(0, parent.index_select(0, C), True)
    return SwapPlan(C, S.nonzero().squeeze(1))


def swap_add_(s: SwapPlan | EntrySwap, y, a_p, a_c, W_p, W_c):
    """y += a_c[:, C] W_c[C] - a_p[:, S] W_p[S] in place; returns what the backward needs."""
    if isinstance(s, EntrySwap):
        (fc, vc), (fp, vp), y = s.sup_c, s.sup_p, kernel.view(y)
        hit_c = kernel.swap_forward(fc, vc, a_c.shape[1], s.child, kernel.view(W_c), y, 1.0)
        hit_p = kernel.swap_forward(fp, vp, a_p.shape[1], s.parent, kernel.view(W_p), y, -1.0)
        return a_p.shape[1], a_c.shape[1], W_p, W_c, hit_p, hit_c
    Ac, Ap = a_c.index_select(1, s.C), a_p.index_select(1, s.S)
    Wc, Wp = W_c.index_select(0, s.C), W_p.index_select(0, s.S)
    y.addmm_(Ac, Wc).addmm_(Ap, Wp, alpha=-1)
    return Ac, Ap, Wc


def swap_cancel_(s: SwapPlan | EntrySwap, saved, ga_p) -> None:
    """Zero the swapped parents' gradient from their level's own decode, which the swap cancels
    exactly; call it on the dense gradient before anything else is added into it."""
    if isinstance(s, EntrySwap):
        kernel.swap_cancel(saved[4], s.sup_p[0], kernel.view(ga_p.view(-1)))
        return
    ga_p.index_fill_(1, s.S, 0)


def swap_backward(s: SwapPlan | EntrySwap, saved, g, ga_c, gW_p, gW_c) -> None:
    """Add the rest of <g, the swap>'s gradient into the buffers, in place (products in g's dtype): ga_c
    is the child level's dense [B, n_c] gradient, or for an EntrySwap its gradient at its support
    entries (one per entry)."""
    if isinstance(s, EntrySwap):
        n_p, n_c, W_p, W_c, hit_p, hit_c = saved
        v = kernel.view
        (fc, vc), (fp, vp), g = s.sup_c, s.sup_p, v(g.contiguous())
        kernel.swap_backward(hit_c, fc, vc, n_c, v(W_c), g, v(ga_c), v(gW_c), 1.0, True)
        kernel.swap_backward(hit_p, fp, vp, n_p, v(W_p), g, v(ga_c), v(gW_p), -1.0, False)
        return
    Ac, Ap, Wc = saved
    ga_c.index_add_(1, s.C, (g @ Wc.t()).to(ga_c.dtype))
    gW_c.index_add_(0, s.C, (Ac.t() @ g).to(gW_c.dtype))
    # the parents' rows: their decode's gradient, taken back out
    gW_p.index_add_(0, s.S, (Ap.t() @ g).to(gW_p.dtype), alpha=-1)
