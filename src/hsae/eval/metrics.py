"""Per-level and hierarchy metrics on held-out activations (PAPER.md section 5).

Definitions, used identically for every model:
- l0: mean number of active features per input.
- var_explained: 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (unperturbed x_hat).
- dead_fraction: features that never fire on the held-out rows.
- hamming: for one input and one parent level, the number of parents-with-children whose
  "is active" differs from "is any child active"; mean over inputs, then over the L-1
  parent levels (the DECISION of PAPER.md section 5).
- p_parent_given_child / p_child_given_parent: per assigned pair, co-firing count over the
  conditioning feature's firing count; mean over the pairs whose conditioning feature fires
  at least once on the held-out rows.
- children_per_parent[l-1][k]: number of level-(l-1) features with exactly k children (k >= 1).
"""

from __future__ import annotations

from typing import Iterable

import torch

from ..model import HSAE


HIST_BINS = 20


def _hist(v: torch.Tensor) -> list[int]:
    """Counts of v in HIST_BINS equal bins of [0, 1]."""
    return torch.histc(v.float(), bins=HIST_BINS, min=0.0, max=1.0).long().tolist() if v.numel() else [0] * HIST_BINS


@torch.no_grad()
def evaluate(model: HSAE, batches: Iterable[torch.Tensor]) -> dict:
    """Metrics dict over normalised batches [B, d] (see module docstring)."""
    L = len(model.levels)
    n_rows = 0
    sq_err = [0.0] * L
    sum_x = torch.zeros(model.d, dtype=torch.float64)
    sum_x2 = 0.0
    fires = [torch.zeros(n, dtype=torch.float64) for n in model.sizes]
    both = [torch.zeros(n, dtype=torch.float64) for n in model.sizes[1:]]
    hamming = [0.0] * (L - 1)
    for x in batches:
        acts = model.encode(x)
        active = [a > 0 for a in acts]
        n_rows += x.shape[0]
        sum_x += x.double().sum(0)
        sum_x2 += float(x.double().square().sum())
        for l, lv in enumerate(model.levels):
            sq_err[l] += float((lv.decode(acts[l]) - x).double().square().sum())
            fires[l] += active[l].sum(0).double()
        for l in range(1, L):
            parent = model.parent(l)
            has_p = parent >= 0
            pa = active[l - 1][:, parent.clamp_min(0)] & has_p
            both[l - 1] += (pa & active[l]).sum(0).double()
            # "is any child active" per parent, via a scatter over the children
            any_child = torch.zeros_like(active[l - 1], dtype=torch.float32)
            any_child.index_add_(1, parent[has_p], active[l][:, has_p].float())
            has_child = torch.zeros(model.sizes[l - 1], dtype=torch.bool)
            has_child[parent[has_p]] = True
            hamming[l - 1] += float(((any_child > 0) != active[l - 1])[:, has_child].sum())
    if n_rows == 0:
        raise ValueError("no evaluation rows")
    total_var = sum_x2 - float(sum_x.square().sum()) / n_rows
    levels = []
    for l in range(L):
        levels.append({
            "n_features": model.sizes[l],
            "l0": float(fires[l].sum()) / n_rows,
            "var_explained": 1 - sq_err[l] / total_var,
            "dead_fraction": float((fires[l] == 0).double().mean()),
        })
    pairs_pc, pairs_cp, n_pairs = [], [], 0
    for l in range(1, L):
        parent = model.parent(l)
        has_p = parent >= 0
        n_pairs += int(has_p.sum())
        fc, fp = fires[l][has_p], fires[l - 1][parent[has_p]]
        b = both[l - 1][has_p]
        pairs_pc.append((b / fc)[fc > 0])
        pairs_cp.append((b / fp)[fp > 0])
    pc, cp = torch.cat(pairs_pc), torch.cat(pairs_cp)
    # children per parent (parents with >= 1 child), per parent level: the forest's shape
    children = [torch.bincount(model.parent(l)[model.parent(l) >= 0], minlength=model.sizes[l - 1])
                for l in range(1, L)]
    return {
        "n_rows": n_rows,
        "levels": levels,
        "l0": sum(v["l0"] for v in levels) / L,
        "var_explained": sum(v["var_explained"] for v in levels) / L,
        "hierarchy": {
            "hamming": sum(h / n_rows for h in hamming) / max(1, L - 1),
            "hamming_per_level": [h / n_rows for h in hamming],
            "p_parent_given_child": float(pc.mean()) if pc.numel() else float("nan"),
            "p_child_given_parent": float(cp.mean()) if cp.numel() else float("nan"),
            "n_pairs": n_pairs,
            # distributions over pairs, for plots: counts in HIST_BINS equal bins of [0, 1]
            "p_parent_given_child_hist": _hist(pc),
            "p_child_given_parent_hist": _hist(cp),
            "children_per_parent": [torch.bincount(c[c > 0]).tolist() for c in children],
        },
    }
