"""The swap of PAPER.md section 3 as a correction to a level's plain decode, over columns.

With S the swapped parents that have children and C(S) their children,

  x~_l = a_l W_l + b_l  +  a_{l+1}[:, C] W_{l+1}[C] - a_l[:, S] W_l[S]

so the level's own decode stays the dense product of an unswapped level, and the correction is
two small dense products over the ~r of the columns that are swapped (PAPER.md section 8). In
the backward, the swapped parents' own gradient is zeroed in their columns (their two terms
cancel), and the swapped columns get their products (model/couple.py adds them into the dense
gradients in place). Per support entry, one scaled decoder row each, was measured slower at
the demo's density (bench/RESULTS.md); it wins only below ~1% density, where the step is
dominated by its products anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SwapPlan:
    """One level pair's swapped columns for one step (see `swap_plan`)."""

    C: torch.Tensor  # the children of the swapped parents, ascending
    S: torch.Tensor  # the swapped parents that have children, ascending


def swap_plan(parent, swap, n_p: int) -> SwapPlan | None:
    """The columns the swap touches (None: no swapped parent has a child).

    parent [n_c]: level l+1's parent array (-1 = none); swap [n_p] bool: the parents swapped this step.
    """
    hit = (parent >= 0) & swap[parent.clamp_min(0)]  # children of a swapped parent
    C = hit.nonzero().squeeze(1)
    if C.numel() == 0:
        return None
    S = torch.zeros(n_p, dtype=torch.bool, device=parent.device).index_fill_(0, parent.index_select(0, C), True)
    return SwapPlan(C, S.nonzero().squeeze(1))


def swap_add_(s: SwapPlan, y, a_p, a_c, W_p, W_c):
    """y += a_c[:, C] W_c[C] - a_p[:, S] W_p[S] in place; returns what the backward needs."""
    Ac, Ap = a_c.index_select(1, s.C), a_p.index_select(1, s.S)
    Wc, Wp = W_c.index_select(0, s.C), W_p.index_select(0, s.S)
    y.addmm_(Ac, Wc).addmm_(Ap, Wp, alpha=-1)
    return Ac, Ap, Wc


def swap_cancel_(s: SwapPlan, ga_p) -> None:
    """Zero the swapped parents' gradient from their level's own decode, which the swap cancels
    exactly; call it on the dense gradient before anything else is added into it."""
    ga_p.index_fill_(1, s.S, 0)


def swap_backward(s: SwapPlan, saved, g, ga_c, gW_p, gW_c) -> None:
    """Add the rest of <g, the swap>'s gradient into the dense buffers, in place (products in g's dtype)."""
    Ac, Ap, Wc = saved
    ga_c.index_add_(1, s.C, (g @ Wc.t()).to(ga_c.dtype))
    gW_c.index_add_(0, s.C, (Ac.t() @ g).to(gW_c.dtype))
    # the parents' rows: their decode's gradient, taken back out
    gW_p.index_add_(0, s.S, (Ap.t() @ g).to(gW_p.dtype), alpha=-1)
