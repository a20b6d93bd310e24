"""The swap of PAPER.md section 3 as a correction to a level's plain decode.

With S the swapped parents that have children and C(S) their children,

  x~_l = a_l W_l + b_l  +  a_{l+1}[:, C] W_{l+1}[C] - a_l[:, S] W_l[S]

so the level's own decode stays the dense product of an unswapped level, and the swap costs
two products over ~r of the columns. Its backward touches only the columns S and C of the
activations' gradients and the rows S and C of the decoders', added in place
(model/couple.py).
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


def swap_delta(cols, a_p, a_c, W_p, W_c):
    """(a_c[:, C] W_c[C] - a_p[:, S] W_p[S] [B, d], the gathered blocks its backward needs)."""
    S, C = cols
    AC, WC = a_c.index_select(1, C), W_c.index_select(0, C)
    AS, WS = a_p.index_select(1, S), W_p.index_select(0, S)
    return AC @ WC - AS @ WS, (AC, WC, AS, WS)


def swap_backward(cols, saved, g, ga_p, ga_c, gW_p, gW_c) -> None:
    """Add the gradient of <g, swap_delta> into the dense buffers, in place (products in the blocks' dtype)."""
    S, C = cols
    AC, WC, AS, WS = saved
    g = g.to(WC.dtype)
    _add_columns(ga_c, C, (g @ WC.t()).to(ga_c.dtype))
    _add_columns(ga_p, S, (g @ WS.t()).to(ga_p.dtype), alpha=-1)
    gW_c.index_add_(0, C, (AC.t() @ g).to(gW_c.dtype))
    gW_p.index_add_(0, S, (AS.t() @ g).to(gW_p.dtype), alpha=-1)


def _add_columns(buf: torch.Tensor, cols: torch.Tensor, src: torch.Tensor, alpha: float = 1) -> None:
    """buf[:, cols] += alpha * src, as one 1-D index_add over flat indices (on a CPU, index_add_
    along dim 1 walks the columns one strided slice at a time)."""
    B, n = buf.shape
    flat = (torch.arange(B, device=cols.device)[:, None] * n + cols[None, :]).view(-1)
    buf.view(-1).index_add_(0, flat, src.reshape(-1), alpha=alpha)
