"""Probe-based edges: the hierarchy measure of Tree SAE (Cao et al. 2026), as hsae computes it.

Definition (`hsae eval --probe`):
- On the held-out rows (at most MAX_ROWS), every child-level feature gets a linear probe for
  "the feature fires" (activation > 0) from the normalised input x: Fisher's linear
  discriminant w = (S + r I)^-1 (mean of x where it fires - mean where it does not), S the
  inputs' covariance (shared by every probe: the positives of one feature are a small part of
  the rows), r = RIDGE x trace(S) / d. Closed form, balanced between the classes by
  construction, and one product for a whole level (a logistic regression per feature costs
  hundreds of such products).
- An edge parent -> child is *hierarchical* when, among the decoder rows of the parent's level
  and the child's level together, the TOP_K rows most similar (cosine) to the child's probe
  include both the child's row and the parent's row: the direction that predicts the child
  lies close to both the child and its parent.
- Reported per child level and overall: the hierarchical fraction of edges whose child fires
  on at least MIN_FIRES held-out rows, and the same fraction for chance forests
  (eval/chance.py: the same families under random firing parents), mean over draws.
"""

from __future__ import annotations

import numpy as np
import torch

from .chance import chance_placements, forest_parents

MAX_ROWS, RIDGE, TOP_K, MIN_FIRES = 20000, 1e-3, 5, 5  # RIDGE: of the mean variance, so S is invertible


def fit_probes(x: torch.Tensor, fires: torch.Tensor) -> torch.Tensor:
    """Fisher-discriminant probe directions [d, n] of each column of fires [R, n] on x [R, d]."""
    x = x.double()
    y = fires.double()
    R, d = x.shape
    pos = y.sum(0)
    mean = x.mean(0)
    mu_pos = (y.t() @ x) / pos.clamp_min(1)[:, None]  # [n, d]
    mu_neg = (R * mean[None] - pos[:, None] * mu_pos) / (R - pos).clamp_min(1)[:, None]
    xc = x - mean
    S = xc.t() @ xc / max(R - 1, 1)
    S += RIDGE * torch.trace(S) / d * torch.eye(d, dtype=S.dtype)
    return torch.linalg.solve(S, (mu_pos - mu_neg).t()).float()


def hierarchical_edges(probes: torch.Tensor, W_p: torch.Tensor, W_c: torch.Tensor, parent: torch.Tensor,
                       top_k: int = TOP_K) -> torch.Tensor:
    """bool [n_c]: children whose probe's top_k decoder rows (both levels) hold them and their parent."""
    rows = torch.cat([W_p, W_c])
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-8)
    pr = probes / probes.norm(dim=0, keepdim=True).clamp_min(1e-8)
    top = (rows @ pr).topk(min(top_k, len(rows)), dim=0).indices  # [k, n_c], rows of W_p then W_c
    n_p, c = W_p.shape[0], torch.arange(W_c.shape[0])
    has_child = (top == (n_p + c)[None]).any(0)
    has_parent = (top == parent.clamp_min(0)[None]).any(0)
    return has_child & has_parent & (parent >= 0)


def _count(hier: torch.Tensor, parent: torch.Tensor, ok: torch.Tensor) -> tuple[int, int]:
    """(edges whose child fires enough, hierarchical ones among them)."""
    edges = (parent >= 0) & ok
    return int(edges.sum()), int((hier & edges).sum())


def _frac(counts: list[tuple[int, int]]) -> float:
    n = sum(c for c, _ in counts)
    return sum(h for _, h in counts) / n if n else float("nan")


def probe_eval(model, x: torch.Tensor, chance_draws: int = 5, seed: int = 0) -> dict:
    """The measure of the module docstring on normalised held-out rows x [R, d]."""
    with torch.no_grad():
        fires = [lv.encode(x) > 0 for lv in model.levels]
    parents = [model.parent(l) for l in range(1, len(model.levels))]
    draws = list(zip(*chance_placements(parents, [f.any(0) for f in fires[:-1]], chance_draws, seed)))
    real, chance = [], [[] for _ in draws]  # per level: (edges, hierarchical); per draw, the same
    for l in range(1, len(model.levels)):
        probes = fit_probes(x, fires[l])
        W_p, W_c = model.levels[l - 1].W_dec.detach(), model.levels[l].W_dec.detach()
        ok = fires[l].sum(0) >= MIN_FIRES
        real.append(_count(hierarchical_edges(probes, W_p, W_c, parents[l - 1]), parents[l - 1], ok))
        for k, pl in enumerate(draws):
            fp = forest_parents(parents[l - 1], pl[l - 1])
            chance[k].append(_count(hierarchical_edges(probes, W_p, W_c, fp), fp, ok))

    def mean_chance(pick):
        v = [f for f in (_frac(pick(c)) for c in chance) if f == f]
        return float(np.mean(v)) if v else float("nan")

    levels = [{"edges": real[i][0], "hierarchical_fraction": _frac([real[i]]),
               "chance_hierarchical_fraction": mean_chance(lambda c, i=i: [c[i]])} for i in range(len(real))]
    return {"rows": len(x), "top_k": TOP_K, "levels": levels, "edges": sum(n for n, _ in real),
            "hierarchical_fraction": _frac(real), "chance_hierarchical_fraction": mean_chance(lambda c: c)}


def probe_store(store, rows: range, model, chance_draws: int = 5, seed: int = 0) -> dict:
    """probe_eval on (at most MAX_ROWS of) a store's ordinary held-out rows."""
    xs, have = [], 0
    for x in store.ordinary_batches(rows, 4096):
        xs.append(x[: MAX_ROWS - have])
        have += len(xs[-1])
        if have >= MAX_ROWS:
            break
    return probe_eval(model, torch.cat(xs), chance_draws, seed)
