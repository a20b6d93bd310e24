"""Hierarchy assignment: link each level-(l+1) feature to its most similar level-l feature.

Similarities (PAPER.md section 4): cosine of encoder vectors, cosine of decoder rows, or
co-activation P(parent fires | child fires) from an exponential moving average of counts.
Tree shapes: partial (orphan the children whose best similarity is in the bottom q of the
level), full (q = 0), binary (at most two children per parent, then the partial cut),
fixed (partial, assigned once and never updated; the trainer enforces "once").

DECISIONS (PAPER.md section 7): a child with no candidate parent (co-activation: it never
fired in the window) is an orphan and is left out of the quantile; a level with no
candidates at all gets no edges.
"""

from __future__ import annotations

import torch

SIMILARITIES = ("encoder", "decoder", "coactivation")
TREES = ("partial", "full", "binary", "fixed")
_CHUNK_FLOATS = 1 << 24


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


def cosine_topk(child: torch.Tensor, parent: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine similarities of each child row [n_c, d] to parent rows [n_p, d], chunked."""
    c, p = _unit(child), _unit(parent)
    k = min(k, p.shape[0])
    step = max(1, _CHUNK_FLOATS // p.shape[0])
    out = [torch.topk(c[i:i + step] @ p.t(), k, dim=1) for i in range(0, c.shape[0], step)]
    return torch.cat([o.values for o in out]), torch.cat([o.indices for o in out])


class CoActivation:
    """EMA of co-firing counts between two adjacent levels, for P(parent | child)."""

    def __init__(self, n_parent: int, n_child: int, momentum: float = 0.999, device: str | torch.device = "cpu"):
        self.momentum = momentum
        self.both = torch.zeros(n_child, n_parent, device=device)
        self.child = torch.zeros(n_child, device=device)

    def update(self, active_p: torch.Tensor, active_c: torch.Tensor, rows: int | None = None) -> None:
        """Fold in one batch of bool activity [B, n_p], [B, n_c].

        rows: the global batch size when this is one data-parallel rank's slice of it (the EMA
        is linear, so the sum over ranks of their statistics is the global one).
        """
        B = rows or active_p.shape[0]
        both = pair_counts(active_p, active_c)
        self.both.mul_(self.momentum).add_(both, alpha=(1 - self.momentum) / B)
        self.child.mul_(self.momentum).add_(active_c.sum(0).float(), alpha=(1 - self.momentum) / B)

    def topk(self, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k P(parent | child) per child; -inf where the child never fired."""
        p = self.both / self.child[:, None].clamp_min(1e-12)
        p[self.child <= 0] = -float("inf")
        out = torch.topk(p, min(k, p.shape[1]), dim=1)
        return out.values, out.indices

    def state_dict(self) -> dict:
        """Tensors to checkpoint."""
        return {"both": self.both, "child": self.child}

    def load_state_dict(self, s: dict) -> None:
        """Restore from state_dict()."""
        self.both.copy_(s["both"])
        self.child.copy_(s["child"])


def pair_counts(active_p: torch.Tensor, active_c: torch.Tensor, max_pairs: int = 1 << 24) -> torch.Tensor:
    """[n_c, n_p] counts of inputs where child c and parent p both fire.

    Sparse batches are joined row by row (cost ~ B * L0_c * L0_p); dense ones, as early in
    training, fall back to one matmul so memory stays bounded.
    """
    n_c, n_p = active_c.shape[1], active_p.shape[1]
    rc, cc = active_c.nonzero(as_tuple=True)
    rp, cp = active_p.nonzero(as_tuple=True)
    kp = torch.bincount(rp, minlength=active_p.shape[0])
    reps = kp[rc]
    total = int(reps.sum())
    if total > max_pairs:
        return active_c.t().float() @ active_p.float()
    start = torch.cumsum(kp, 0) - kp
    ci = cc.repeat_interleave(reps)
    base = (torch.cumsum(reps, 0) - reps).repeat_interleave(reps)
    pi = cp[start[rc].repeat_interleave(reps) + torch.arange(total, device=cc.device) - base]
    out = torch.zeros(n_c * n_p, device=cc.device)
    out.index_add_(0, ci * n_p + pi, torch.ones(total, device=cc.device))
    return out.view(n_c, n_p)


def assign(sim: torch.Tensor, idx: torch.Tensor, tree: str = "partial", orphan_quantile: float = 0.2) -> torch.Tensor:
    """Parent array [n_c] from top-k candidates sim/idx [n_c, k] (best first); -1 = orphan."""
    if tree not in TREES:
        raise ValueError(f"unknown tree shape {tree!r}; choose from {TREES}")
    n_c = sim.shape[0]
    parent = torch.full((n_c,), -1, dtype=torch.long)
    best = torch.full((n_c,), -float("inf"))
    if tree == "binary":
        # Greedy by similarity: each child takes its best candidate that has room left.
        load: dict[int, int] = {}
        order = torch.argsort(sim.flatten(), descending=True, stable=True).tolist()
        k = sim.shape[1]
        flat_sim, flat_idx = sim.flatten().tolist(), idx.flatten().tolist()
        for o in order:
            c, s, p = o // k, flat_sim[o], flat_idx[o]
            if parent[c] >= 0 or s == -float("inf") or load.get(p, 0) >= 2:
                continue
            parent[c], best[c] = p, s
            load[p] = load.get(p, 0) + 1
    else:
        ok = sim[:, 0] > -float("inf")
        parent[ok], best[ok] = idx[ok, 0], sim[ok, 0]
    q = 0.0 if tree == "full" else orphan_quantile
    has = parent >= 0
    if q > 0 and bool(has.any()):
        cut = torch.quantile(best[has].double(), q).item()
        parent[has & (best.double() < cut)] = -1
    return parent


def _vectors(level, similarity: str) -> torch.Tensor:
    return level.W_enc.detach().t() if similarity == "encoder" else level.W_dec.detach()


@torch.no_grad()
def update_forest(model, similarity: str = "encoder", tree: str = "partial", orphan_quantile: float = 0.2,
                  coact: list[CoActivation] | None = None) -> None:
    """Reassign every level's parents from the current weights (or co-activation statistics)."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity {similarity!r}; choose from {SIMILARITIES}")
    k = 8 if tree == "binary" else 1  # binary needs fall-back candidates when a parent is full
    for l in range(1, len(model.levels)):
        if similarity == "coactivation":
            if coact is None:
                raise ValueError("co-activation similarity needs co-activation statistics")
            sim, idx = coact[l - 1].topk(k)
        else:
            sim, idx = cosine_topk(_vectors(model.levels[l], similarity), _vectors(model.levels[l - 1], similarity), k)
        model.set_parent(l, assign(sim.cpu(), idx.cpu(), tree, orphan_quantile))
