"""How well a trained HSAE recovers a known forest (synthetic ground truth).

Per level, learned decoder rows are matched one-to-one to the ideal directions by the
Hungarian algorithm on cosine similarity. A learned edge child -> parent is correct when
both ends are matched and the matched truth nodes are truth parent and child.
- feature_match: mean over truth nodes of the best cosine to any learned decoder row.
- feature_match_hungarian: mean cosine of the one-to-one matching.
- edge_precision: correct learned edges / learned edges whose ends are both matched.
- edge_recall: correct learned edges / truth edges.
Two scores split an edge error between the dictionary and the forest (a feature is
*recovered* when its matched cosine is at least RECOVERED):
- edges_recoverable: truth edges whose two ends are both recovered (the dictionary's part).
- edge_precision_recovered: edge_precision over the learned edges whose two ends are both
  recovered (the forest's part: how often the links are right where the features are).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..model import HSAE

RECOVERED = 0.9  # matched cosine from which a learned feature counts as the truth node's


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def tree_recovery(model: HSAE, truth: dict) -> dict:
    """Matching and edge scores against truth = load_truth(...) (see module docstring)."""
    dirs = truth["directions"]
    if len(dirs) != len(model.levels):
        raise ValueError(f"truth has {len(dirs)} levels, model has {len(model.levels)}")
    best, hung, match, mcos, rec_t = [], [], [], [], []  # match[l]: learned index -> truth index (or -1)
    for l, lv in enumerate(model.levels):
        cos = (_unit(dirs[l].float()) @ _unit(lv.W_dec.float()).t()).numpy()  # [n_true, n_learned]
        best.append(cos.max(1))
        r, c = linear_sum_assignment(-cos)
        hung.append(cos[r, c])
        m = torch.full((lv.n,), -1, dtype=torch.long)
        m[torch.as_tensor(c)] = torch.as_tensor(r, dtype=torch.long)
        match.append(m)
        q = torch.zeros(lv.n)  # learned side: matched cosine (0 if unmatched)
        q[torch.as_tensor(c)] = torch.as_tensor(cos[r, c], dtype=torch.float32)
        mcos.append(q)
        t = torch.zeros(len(cos), dtype=torch.bool)  # truth side: recovered
        t[torch.as_tensor(r)] = torch.as_tensor(cos[r, c] >= RECOVERED)
        rec_t.append(t)
    n = dict(correct=0, learned=0, true=0, recoverable=0, correct_rec=0, learned_rec=0)
    for l in range(1, len(model.levels)):
        parent, tparent = model.parent(l), truth["parents"][l]
        n["true"] += tparent.numel()
        n["recoverable"] += int((rec_t[l] & rec_t[l - 1][tparent]).sum())
        ok = (parent >= 0) & (match[l] >= 0)
        ok &= match[l - 1][parent.clamp_min(0)] >= 0
        right = tparent[match[l][ok]] == match[l - 1][parent[ok]]
        rec = (mcos[l][ok] >= RECOVERED) & (mcos[l - 1][parent[ok]] >= RECOVERED)
        n["learned"] += int(ok.sum())
        n["correct"] += int(right.sum())
        n["learned_rec"] += int(rec.sum())
        n["correct_rec"] += int((right & rec).sum())
    p = n["correct"] / n["learned"] if n["learned"] else 0.0
    r = n["correct"] / n["true"] if n["true"] else 0.0
    return {
        "feature_match": float(np.concatenate(best).mean()),
        "feature_match_hungarian": float(np.concatenate(hung).mean()),
        "feature_match_per_level": [float(b.mean()) for b in best],
        "feature_match_hungarian_per_level": [float(h.mean()) for h in hung],
        "edge_precision": p,
        "edge_recall": r,
        "edge_f1": 2 * p * r / (p + r) if p + r else 0.0,
        "n_true_edges": n["true"],
        "edges_recoverable": n["recoverable"] / n["true"] if n["true"] else 0.0,
        "edge_precision_recovered": n["correct_rec"] / n["learned_rec"] if n["learned_rec"] else float("nan"),
    }
