"""How well a trained HSAE recovers a known forest (synthetic ground truth).

Per level, learned decoder rows are matched one-to-one to the ideal directions by the
Hungarian algorithm on cosine similarity. A learned edge child -> parent is correct when
both ends are matched and the matched truth nodes are truth parent and child.
- feature_match: mean over truth nodes of the best cosine to any learned decoder row.
- feature_match_hungarian: mean cosine of the one-to-one matching.
- edge_precision: correct learned edges / learned edges whose ends are both matched.
- edge_recall: correct learned edges / truth edges.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..model import HSAE


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def tree_recovery(model: HSAE, truth: dict) -> dict:
    """Matching and edge scores against truth = load_truth(...) (see module docstring)."""
    dirs = truth["directions"]
    if len(dirs) != len(model.levels):
        raise ValueError(f"truth has {len(dirs)} levels, model has {len(model.levels)}")
    best, hung, match = [], [], []  # match[l]: learned index -> truth index (or -1)
    for l, lv in enumerate(model.levels):
        cos = (_unit(dirs[l].float()) @ _unit(lv.W_dec.float()).t()).numpy()  # [n_true, n_learned]
        best.append(cos.max(1))
        r, c = linear_sum_assignment(-cos)
        hung.append(cos[r, c])
        m = torch.full((lv.n,), -1, dtype=torch.long)
        m[torch.as_tensor(c)] = torch.as_tensor(r, dtype=torch.long)
        match.append(m)
    correct = learned = true_edges = 0
    for l in range(1, len(model.levels)):
        parent, tparent = model.parent(l), truth["parents"][l]
        true_edges += tparent.numel()
        ok = (parent >= 0) & (match[l] >= 0)
        ok &= match[l - 1][parent.clamp_min(0)] >= 0
        learned += int(ok.sum())
        tc, tp = match[l][ok], match[l - 1][parent[ok]]
        correct += int((tparent[tc] == tp).sum())
    p = correct / learned if learned else 0.0
    r = correct / true_edges if true_edges else 0.0
    return {
        "feature_match": float(np.concatenate(best).mean()),
        "feature_match_hungarian": float(np.concatenate(hung).mean()),
        "feature_match_per_level": [float(b.mean()) for b in best],
        "edge_precision": p,
        "edge_recall": r,
        "edge_f1": 2 * p * r / (p + r) if p + r else 0.0,
        "n_true_edges": true_edges,
    }
