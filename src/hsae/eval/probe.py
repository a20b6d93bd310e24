"""Probe-based edges: the hierarchy measure of Tree SAE (Cao et al. 2026), as hsae computes it.

Definition (`hsae eval --probe`):
- On the held-out rows (at most MAX_ROWS), every child-level feature gets a linear probe: a
  logistic regression from the normalised input x to "the feature fires" (activation > 0),
  classes weighted to balance, STEPS full-batch Adam steps from zero, all of a level's
  probes fitted together (they are independent).
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

MAX_ROWS, STEPS, LR, TOP_K, MIN_FIRES = 20000, 200, 0.05, 5, 5


def fit_probes(x: torch.Tensor, fires: torch.Tensor, steps: int = STEPS) -> torch.Tensor:
    """Logistic-regression weights [d, n] (no bias returned) of each column of fires [R, n] on x [R, d]."""
    R, n = fires.shape
    y = fires.float()
    pos = y.sum(0).clamp_min(1)
    pos_weight = ((R - pos) / pos).clamp(max=1e3)  # balanced classes: a rare feature is not "never"
    W = torch.zeros(x.shape[1], n, requires_grad=True)
    b = torch.zeros(n, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=LR)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(x @ W + b, y).backward()
        opt.step()
    return W.detach()


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
