"""The swap of PAPER.md section 3 as a correction to a level's plain decode, over support entries.

With S the swapped parents that have children and C(S) their children,

  x~_l = a_l W_l + b_l  +  a_{l+1}[:, C] W_{l+1}[C] - a_l[:, S] W_l[S]

so the level's own decode stays the dense product of an unswapped level. The correction is
sparse: a is zero outside the JumpReLU's support, so it is one scaled decoder row per support
entry in the columns C and S (~r of the entries: a few thousand rows, not two [B, |C|] x
[|C|, d] products). In the backward, the swapped parents' own gradient is zeroed at their
entries (their two terms cancel), and the children's entries get the products they need
(model/couple.py adds them into the dense gradients in place).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SwapPlan:
    """One level pair's swapped support entries for one step (see `swap_plan`)."""

    ec: torch.Tensor  # flat [B * n_c] indices of the swapped children's support entries
    rows_c: torch.Tensor  # their input
    cols_c: torch.Tensor  # their child
    ep: torch.Tensor  # flat [B * n_p] indices of the swapped parents' support entries
    rows_p: torch.Tensor
    cols_p: torch.Tensor


def swap_plan(parent, swap, entries_p, n_p: int, entries_c, n_c: int) -> SwapPlan | None:
    """The entries the swap touches (None: no swapped parent has a child or a support entry).

    parent [n_c]: level l+1's parent array; swap [n_p] bool: the parents swapped this step;
    entries_p / entries_c: ascending flat indices of the levels' support entries (`flat_nonzero`).
    """
    has_parent = parent >= 0
    par = parent.clamp_min(0)
    hit = has_parent & swap[par]  # children of a swapped parent
    swapped = torch.zeros(n_p, dtype=torch.int32, device=parent.device).index_add_(0, par, hit.int()) > 0
    # explicit nonzero, not a boolean index: the same data-dependent shape, but one the sync-count test sees
    ec = entries_c.index_select(0, hit[entries_c % n_c].nonzero().squeeze(1))
    ep = entries_p.index_select(0, swapped[entries_p % n_p].nonzero().squeeze(1))
    if ec.numel() == 0 and ep.numel() == 0:
        return None
    return SwapPlan(ec, ec // n_c, ec % n_c, ep, ep // n_p, ep % n_p)


def swap_add_(s: SwapPlan, y, a_p, a_c, W_p, W_c):
    """y += a_c[:, C] W_c[C] - a_p[:, S] W_p[S] in place, one decoder row per entry; returns what the backward needs."""
    vc = a_c.reshape(-1).index_select(0, s.ec)
    vp = a_p.reshape(-1).index_select(0, s.ep)
    Wc = W_c.index_select(0, s.cols_c)
    y.index_add_(0, s.rows_c, Wc * vc[:, None])
    y.index_add_(0, s.rows_p, W_p.index_select(0, s.cols_p) * vp[:, None], alpha=-1)
    return vc, vp, Wc


def swap_cancel_(s: SwapPlan, ga_p) -> None:
    """Zero the swapped parents' gradient from their level's own decode at their entries, which the
    swap cancels exactly; call it on the dense gradient before anything else is added into it."""
    ga_p.view(-1).index_fill_(0, s.ep, 0)


def swap_backward(s: SwapPlan, saved, g, ga_c, gW_p, gW_c) -> None:
    """Add the rest of <g, the swap>'s gradient into the dense buffers, in place (products in the rows' dtype)."""
    vc, vp, Wc = saved
    g = g.to(Wc.dtype)
    gc = g.index_select(0, s.rows_c)
    ga_c.view(-1).index_add_(0, s.ec, torch.linalg.vecdot(gc, Wc).to(ga_c.dtype))
    gW_c.index_add_(0, s.cols_c, (gc * vc[:, None]).to(gW_c.dtype))
    # the parents' rows: their decode's gradient, taken back out
    gW_p.index_add_(0, s.cols_p, (g.index_select(0, s.rows_p) * vp[:, None]).to(gW_p.dtype), alpha=-1)
