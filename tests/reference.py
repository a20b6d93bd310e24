"""The HSAE loss written the plain, obviously-correct way, with [B, n, d] feature outputs.

Used only to check the fast loss (tests) and to time against it (bench/step.py).
"""

import torch

from hsae.model.jumprelu import jumprelu, step


def dense_loss(model, x, lambdas, rho, swap=None, bandwidth=1e-3):
    """PAPER.md sections 2-3 literally: f_{l,i}(x) = d_{l,i} a_{l,i}(x) for every feature."""
    L = len(model.levels)
    swap = swap or [None] * L
    f, hs = [], []
    for lv in model.levels:
        h = lv.pre(x)
        hs.append(h)
        f.append(jumprelu(h, lv.threshold, bandwidth)[:, :, None] * lv.W_dec[None])  # [B, n, d]
    total = x.new_zeros(())
    for l, lv in enumerate(model.levels):
        parts = f[l]
        if l < L - 1:
            parent = model.parent(l + 1)
            # M[i, j] = 1 if child j's parent is i; children_sum[:, i] = sum of f over C(i)
            M = torch.zeros(lv.n, len(parent), dtype=x.dtype)
            M[parent[parent >= 0], (parent >= 0).nonzero().squeeze(1)] = 1
            children_sum = torch.einsum("pc,bcd->bpd", M, f[l + 1])
            has_children = M.sum(1) > 0
            if swap[l] is not None:  # a swapped parent's output is replaced by its children's sum
                z = (swap[l] & has_children).to(x.dtype)[None, :, None]
                parts = f[l] * (1 - z) + children_sum * z
        x_t = parts.sum(1) + lv.b_dec
        total = total + (x_t - x).square().sum(1).mean()
        total = total + lambdas[l] * step(hs[l], lv.threshold, bandwidth).sum(1).mean()
        if l < L - 1 and rho > 0:
            diff = (f[l] - children_sum)[:, has_children]
            total = total + rho * diff.square().sum((1, 2)).mean()
    return total
