"""Hierarchy assignment: link each level-(l+1) feature to its most similar level-l feature.

Similarities (PAPER.md section 4): cosine of encoder vectors, cosine of decoder rows, or
co-activation P(parent fires | child fires) from decayed co-firing counts.
Tree shapes: partial (orphan the children whose best similarity is in the bottom q of the
level), full (q = 0), binary (at most two children per parent, then the partial cut),
fixed (partial, assigned once and never updated; the trainer enforces "once").

Dead and rare features (`live` masks, the trainer's firing criterion) are never parents and
never children, and they do not take part in the quantile cut: a dead parent would turn the
constraint into a pure shrinkage penalty on its children, and dead children (whose encoders
cluster) pile onto one parent as a hub.

Hub resistance (`hub`): "none" is the paper's argmax of the similarity. "csls" ranks by
cross-domain similarity local scaling (Lample et al. 2018): 2 s(c, p) - r_c - r_p, where r_x
is x's mean similarity to its k nearest neighbours on the other level, so a parent that is
close to everything (a hub) is discounted by its own neighbourhood density.

DECISIONS (PAPER.md section 7): a child with no candidate parent (dead, rare, or with no
live parent) is an orphan and is left out of the quantile; a level with no candidates gets
no edges.
"""

from __future__ import annotations

import torch

SIMILARITIES = ("encoder", "decoder", "coactivation")
TREES = ("partial", "full", "binary", "fixed")
HUBS = ("none", "csls")
CSLS_K = 10  # neighbours whose mean similarity is a feature's "density" (Lample et al. use 10)
_CHUNK_FLOATS = 1 << 24
_NEG = -float("inf")


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _score_chunks(child: torch.Tensor, parent: torch.Tensor):
    """Yield (row offset, cosine block [rows, n_p]) of unit child rows against unit parent rows."""
    c, p = _unit(child), _unit(parent)
    step = max(1, _CHUNK_FLOATS // p.shape[0])
    for i in range(0, c.shape[0], step):
        yield i, c[i:i + step] @ p.t()


def _masked(s: torch.Tensor, i: int, live_c, live_p) -> torch.Tensor:
    """Similarity block with dead parents' columns and dead children's rows at -inf."""
    if live_p is not None:
        s = s.masked_fill(~live_p[None, :], _NEG)
    if live_c is not None:
        s = s.masked_fill(~live_c[i:i + s.shape[0], None], _NEG)
    return s


def _topk_rows(blocks, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise top-k over an iterable of (offset, block) pairs."""
    out = [torch.topk(b, min(k, b.shape[1]), dim=1) for _, b in blocks]
    return torch.cat([o.values for o in out]), torch.cat([o.indices for o in out])


def _finite_mean(v: torch.Tensor) -> torch.Tensor:
    """Row means over the finite entries (0 for a row with none)."""
    return v.masked_fill(~torch.isfinite(v), float("nan")).nanmean(1).nan_to_num(0.0)


def _density(blocks, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_c [n_c], r_p [n_p]): mean of the k largest finite similarities per row and per column."""
    r_c, top_p = [], None
    for _, b in blocks:
        r_c.append(_finite_mean(torch.topk(b, min(k, b.shape[1]), dim=1).values))
        cand = b.t() if top_p is None else torch.cat([top_p, b.t()], 1)
        top_p = torch.topk(cand, min(k, cand.shape[1]), dim=1).values
    return torch.cat(r_c), _finite_mean(top_p)


def candidates(blocks_fn, k: int = 1, hub: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k parent candidates per child from similarity blocks (best first; -inf = none).

    blocks_fn() yields (offset, [rows, n_p]) blocks of the masked similarity; it is called twice
    for CSLS (once for the neighbourhood densities, once for the scores)."""
    if hub not in HUBS:
        raise ValueError(f"unknown hub rule {hub!r}; choose from {HUBS}")
    if hub == "none":
        return _topk_rows(blocks_fn(), k)
    r_c, r_p = _density(blocks_fn(), CSLS_K)
    return _topk_rows(((i, 2 * b - r_c[i:i + b.shape[0], None] - r_p[None, :]) for i, b in blocks_fn()), k)


def cosine_topk(child: torch.Tensor, parent: torch.Tensor, k: int = 1, live_c: torch.Tensor | None = None,
                live_p: torch.Tensor | None = None, hub: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (CSLS-)cosine similarities of each child row [n_c, d] to parent rows [n_p, d], chunked."""
    def blocks():
        return ((i, _masked(s, i, live_c, live_p)) for i, s in _score_chunks(child, parent))
    return candidates(blocks, k, hub)


class CoActivation:
    """Co-firing counts between two adjacent levels, for a smoothed P(parent | child).

    Counts are raw and decayed only at hierarchy updates (decay()), so a training step costs
    O(co-firing pairs in the batch), not O(n_c * n_p). The estimate shrinks towards the
    parent's base rate with `alpha` pseudo-counts, so a child that fired a handful of times
    does not get P(p|c) = 1 from one coincidence; children with fewer than `min_count` fires
    get no candidate at all.
    """

    def __init__(self, n_parent: int, n_child: int, device: str | torch.device = "cpu", alpha: float = 10.0,
                 min_count: float = 10.0):
        self.alpha, self.min_count = alpha, min_count
        # float64: a float32 count stops growing at 2^24
        self.both = torch.zeros(n_child, n_parent, device=device, dtype=torch.float64)
        self.child = torch.zeros(n_child, device=device, dtype=torch.float64)
        self.parent = torch.zeros(n_parent, device=device, dtype=torch.float64)
        self.rows = torch.zeros((), device=device, dtype=torch.float64)

    def update(self, active_p: torch.Tensor, active_c: torch.Tensor) -> None:
        """Add one batch of bool activity [B, n_p], [B, n_c] (a data-parallel rank adds its slice)."""
        add_pair_counts(self.both, active_p, active_c)
        self.child += active_c.sum(0)
        self.parent += active_p.sum(0)
        self.rows += active_p.shape[0]

    def decay(self, factor: float) -> None:
        """Scale every count: older batches weigh less (called once per hierarchy update)."""
        for t in (self.both, self.child, self.parent, self.rows):
            t.mul_(factor)

    def estimate(self) -> torch.Tensor:
        """Smoothed P(parent | child) [n_c, n_p] (float32); -inf for children below min_count."""
        base = self.parent / self.rows.clamp_min(1)
        p = ((self.both + self.alpha * base[None, :]) / (self.child[:, None] + self.alpha)).float()
        return p.masked_fill((self.child < self.min_count)[:, None], _NEG)

    def topk(self, k: int = 1, live_c=None, live_p=None, hub: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k smoothed P(parent | child) per child (or its CSLS score); -inf where there is none."""
        p = _masked(self.estimate(), 0, live_c, live_p)
        step = max(1, _CHUNK_FLOATS // max(1, p.shape[1]))
        return candidates(lambda: ((i, p[i:i + step]) for i in range(0, p.shape[0], step)), k, hub)

    def tensors(self) -> list[torch.Tensor]:
        """The count tensors (linear in the data: data-parallel ranks sum them)."""
        return [self.both, self.child, self.parent, self.rows]

    def state_dict(self) -> dict:
        """Tensors to checkpoint."""
        return {"both": self.both, "child": self.child, "parent": self.parent, "rows": self.rows}

    def load_state_dict(self, s: dict) -> None:
        """Restore from state_dict()."""
        for name, t in self.state_dict().items():
            t.copy_(s[name])


def add_pair_counts(out: torch.Tensor, active_p: torch.Tensor, active_c: torch.Tensor,
                    max_pairs: int = 1 << 24) -> torch.Tensor:
    """Add to out [n_c, n_p] the counts of inputs where child c and parent p both fire.

    Sparse batches are joined row by row (cost ~ B * L0_c * L0_p, touching only those
    entries); dense ones, as early in training, fall back to one matmul so memory stays bounded.
    """
    n_p = active_p.shape[1]
    # enumerated child by child, so index_add_ writes one [n_p] row of `out` at a time (cache-friendly)
    cc, rc = active_c.t().contiguous().nonzero(as_tuple=True)
    rp, cp = active_p.nonzero(as_tuple=True)
    kp = torch.bincount(rp, minlength=active_p.shape[0])
    reps = kp[rc]
    total = int(reps.sum())
    if total > max_pairs:
        return out.add_((active_c.t().float() @ active_p.float()).to(out.dtype))
    start = torch.cumsum(kp, 0) - kp
    # output_size: the total is already on the host, so no repeat_interleave reads it again
    ci = cc.repeat_interleave(reps, output_size=total)
    base = (torch.cumsum(reps, 0) - reps).repeat_interleave(reps, output_size=total)
    pi = cp[start[rc].repeat_interleave(reps, output_size=total) + torch.arange(total, device=cc.device) - base]
    out.view(-1).index_add_(0, ci * n_p + pi, torch.ones(total, device=out.device, dtype=out.dtype))
    return out


def pair_counts(active_p: torch.Tensor, active_c: torch.Tensor, max_pairs: int = 1 << 24) -> torch.Tensor:
    """[n_c, n_p] counts of inputs where child c and parent p both fire."""
    out = torch.zeros(active_c.shape[1], active_p.shape[1], device=active_c.device)
    return add_pair_counts(out, active_p, active_c, max_pairs)


def assign(sim: torch.Tensor, idx: torch.Tensor, tree: str = "partial", orphan_quantile: float = 0.2) -> torch.Tensor:
    """Parent array [n_c] from top-k candidates sim/idx [n_c, k] (best first); -1 = orphan."""
    if tree not in TREES:
        raise ValueError(f"unknown tree shape {tree!r}; choose from {TREES}")
    n_c = sim.shape[0]
    parent = torch.full((n_c,), -1, dtype=torch.long)
    best = torch.full((n_c,), _NEG)
    if tree == "binary":
        # Greedy by similarity: each child takes its best candidate that has room left.
        load: dict[int, int] = {}
        order = torch.argsort(sim.flatten(), descending=True, stable=True).tolist()
        k = sim.shape[1]
        flat_sim, flat_idx = sim.flatten().tolist(), idx.flatten().tolist()
        for o in order:
            c, s, p = o // k, flat_sim[o], flat_idx[o]
            if parent[c] >= 0 or s == _NEG or load.get(p, 0) >= 2:
                continue
            parent[c], best[c] = p, s
            load[p] = load.get(p, 0) + 1
    else:
        ok = sim[:, 0] > _NEG
        parent[ok], best[ok] = idx[ok, 0], sim[ok, 0]
    q = 0.0 if tree == "full" else orphan_quantile
    has = parent >= 0
    if q > 0 and bool(has.any()):
        cut = torch.quantile(best[has].double(), q).item()
        parent[has & (best.double() < cut)] = -1
    return parent


def family_stats(new: torch.Tensor, old: torch.Tensor, n_parent: int) -> dict:
    """Shape of one level's forest: family sizes (max, p99, mean over parents with children),
    edges, and churn (fraction of children with a parent before or after whose parent changed)."""
    sizes = torch.bincount(new[new >= 0], minlength=n_parent).float()
    fam = sizes[sizes > 0]
    either = (new >= 0) | (old >= 0)
    churn = float((new != old)[either].float().mean()) if bool(either.any()) else 0.0
    return {"edges": int((new >= 0).sum()), "parents": int(fam.numel()),
            "max": int(fam.max()) if fam.numel() else 0,
            "p99": float(torch.quantile(fam, 0.99)) if fam.numel() else 0.0,
            "mean": float(fam.mean()) if fam.numel() else 0.0, "churn": churn}


def _vectors(level, similarity: str) -> torch.Tensor:
    return level.W_enc.detach().t() if similarity == "encoder" else level.W_dec.detach()


@torch.no_grad()
def update_forest(model, similarity: str = "encoder", tree: str = "partial", orphan_quantile: float = 0.2,
                  coact: list[CoActivation] | None = None, live: list[torch.Tensor] | None = None,
                  hub: str = "none") -> list[dict]:
    """Reassign every level's parents from the current weights (or co-activation counts).

    live[l]: bool [n_l], the features allowed in the forest (None: all). Returns the
    family_stats of every child level."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity {similarity!r}; choose from {SIMILARITIES}")
    if similarity == "coactivation" and coact is None:
        raise ValueError("co-activation similarity needs co-activation statistics")
    k = 8 if tree == "binary" else 1  # binary needs fall-back candidates when a parent is full
    stats = []
    for l in range(1, len(model.levels)):
        lc, lp = (live[l], live[l - 1]) if live is not None else (None, None)
        if similarity == "coactivation":
            sim, idx = coact[l - 1].topk(k, lc, lp, hub)
        else:
            sim, idx = cosine_topk(_vectors(model.levels[l], similarity), _vectors(model.levels[l - 1], similarity),
                                   k, lc, lp, hub)
        old = model.parent(l).cpu().clone()
        new = assign(sim.cpu(), idx.cpu(), tree, orphan_quantile)
        model.set_parent(l, new)
        stats.append(family_stats(new, old, model.levels[l - 1].n))
    return stats
