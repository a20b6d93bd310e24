"""The swap of PAPER.md section 3 as a correction to a level's plain decode.

With S the swapped parents that have children and C(S) their children,

  x~_l = a_l W_l + b_l  +  a_{l+1}[:, C] W_{l+1}[C] - a_l[:, S] W_l[S]

so the level's own decode stays the dense product of an unswapped level, and the swap is one
more product over ~r of the columns, added into it in place. In the backward, the swapped
parents' two terms cancel: their columns of the activations' gradient and rows of the
decoder's are zeroed instead of computed twice, and only the children's blocks need products
(model/couple.py adds them into the dense gradients in place).
"""

from __future__ import annotations

import torch


def swap_columns(parent: torch.Tensor, swap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(S, C), sorted and distinct: the swapped parents with children and those children (None: none).

    parent [n_c]: level l+1's parent array; swap [n_p] bool: the parents swapped this step.
    """
    has_parent = parent >= 0
    hit = has_parent & swap[parent.clamp_min(0)]
    C = hit.nonzero().squeeze(1)
    if C.numel() == 0:
        return None
    S = torch.zeros_like(swap).index_fill_(0, parent[C], True).nonzero().squeeze(1)
    return S, C


def swap_add_(cols, y, a_p, a_c, W_p, W_c):
    """y += a_c[:, C] W_c[C] - a_p[:, S] W_p[S] in place, one product; returns what the backward needs."""
    S, C = cols
    AC, WC = a_c.index_select(1, C), W_c.index_select(0, C)
    y.addmm_(torch.cat([AC, a_p.index_select(1, S)], 1), torch.cat([WC, -W_p.index_select(0, S)]))
    return AC, WC


def swap_cancel_(cols, ga_p, gW_p) -> None:
    """Zero the swapped parents' gradient from their level's own decode, which the swap cancels
    exactly; call it on the dense gradients before anything else is added into them."""
    S, _ = cols
    ga_p.index_fill_(1, S, 0)
    gW_p.index_fill_(0, S, 0)


def swap_backward(cols, saved, g, ga_c, gW_c) -> None:
    """Add the children's gradient of <g, the swap> into the dense buffers, in place (products in the blocks' dtype)."""
    _, C = cols
    AC, WC = saved
    g = g.to(WC.dtype)
    ga_c.index_add_(1, C, (g @ WC.t()).to(ga_c.dtype))
    gW_c.index_add_(0, C, (AC.t() @ g).to(gW_c.dtype))
