"""The HSAE loss written the plain, obviously-correct way, with [B, n, d] feature outputs.

Used only to check the fast loss (tests) and to time against it (bench/step.py).
"""

import torch

from hsae.model.jumprelu import jumprelu, step


def dense_loss(model, x, lambdas, rho, swap=None, bandwidth=1e-3):
    """PAPER.md section 2 literally: f_{l,i}(x) = d_{l,i} a_{l,i}(x) for every feature."""
    L = len(model.levels)
    swap = swap or [None] * L
    f, acts = [], []
    for lv in model.levels:
        h = lv.pre(x)
        a = jumprelu(h, lv.threshold, bandwidth)
        acts.append((h, a))
        f.append(a[:, :, None] * lv.W_dec[None])  # [B, n, d]
    total = x.new_zeros(())
    for l, lv in enumerate(model.levels):
        parts = f[l]
        if l < L - 1:
            children = [[] for _ in range(lv.n)]
            for j, p in enumerate(model.parent(l + 1).tolist()):
                if p >= 0:
                    children[p].append(j)
            # Perturbation: a swapped parent's output is replaced by its children's sum.
            if swap[l] is not None:
                cols = []
                for i in range(lv.n):
                    if bool(swap[l][i]) and children[i]:
                        cols.append(f[l + 1][:, children[i]].sum(1))
                    else:
                        cols.append(f[l][:, i])
                parts = torch.stack(cols, 1)
        x_t = parts.sum(1) + lv.b_dec
        total = total + (x_t - x).square().sum(1).mean()
        total = total + lambdas[l] * step(acts[l][0], lv.threshold, bandwidth).sum(1).mean()
        if l < L - 1 and rho > 0:
            c = x.new_zeros(())
            for i in range(lv.n):
                if children[i]:
                    diff = f[l][:, i] - f[l + 1][:, children[i]].sum(1)
                    c = c + diff.square().sum(1).mean()
            total = total + rho * c
    return total
