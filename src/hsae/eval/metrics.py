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
- chance: the same three hierarchy metrics of random forests with the model's families
  (definition in chance.py), scored in the same pass over the same rows.
"""

from __future__ import annotations

import warnings
from typing import Callable, Iterable, Iterator

import torch

from ..model import HSAE
from .chance import chance_placements, families, summarize

HIST_BINS = 20


def _hist(v: torch.Tensor) -> list[int]:
    """Counts of v in HIST_BINS equal bins of [0, 1]."""
    return torch.histc(v.float(), bins=HIST_BINS, min=0.0, max=1.0).long().tolist() if v.numel() else [0] * HIST_BINS


def _nonzero(active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, features) of the active entries of a bool [B, n] mask, row-major.

    Activity is sparse (L0 << n), so counting over these coordinates is much cheaper than
    reducing or gathering dense [B, n] masks."""
    return active.nonzero(as_tuple=True)


class _Totals:
    """Running sums for L0, variance explained and firing counts per level."""

    def __init__(self, model: HSAE):
        self.n_rows, self.sq_err, self.sum_x2 = 0, [0.0] * len(model.levels), 0.0
        self.sum_x = torch.zeros(model.d, dtype=torch.float64)
        self.fires = [torch.zeros(n, dtype=torch.float64) for n in model.sizes]

    def update(self, model: HSAE, x: torch.Tensor, acts: list[torch.Tensor], nz: list[tuple]) -> None:
        """Add one batch (nz: _nonzero of each level's activity)."""
        self.n_rows += x.shape[0]
        self.sum_x += x.double().sum(0)
        self.sum_x2 += float(x.double().square().sum())
        for l, lv in enumerate(model.levels):
            self.sq_err[l] += float((lv.decode(acts[l]) - x).double().square().sum())
            self.fires[l] += torch.bincount(nz[l][1], minlength=lv.n).double()

    def levels(self, model: HSAE) -> list[dict]:
        """The per-level entries of the eval dict."""
        total_var = self.sum_x2 - float(self.sum_x.square().sum()) / self.n_rows
        return [{"n_features": model.sizes[l], "l0": float(self.fires[l].sum()) / self.n_rows,
                 "var_explained": 1 - self.sq_err[l] / total_var,
                 "dead_fraction": float((self.fires[l] == 0).double().mean())} for l in range(len(model.levels))]


class HierarchyCounts:
    """Hamming and parent-child co-firing counts of K forests sharing the model's families.

    placements[l-1] is [K, F_l]: the parent of each level-l family in each forest. Per family
    f under parent p, the rows where "p active" and "any child of f active" differ number
    fires(p) + fires(f) - 2 cofires(p, f), so only co-firing needs counting per forest."""

    def __init__(self, model: HSAE, placements: list[torch.Tensor]):
        self.fam_of = [families(model.parent(l))[1] for l in range(1, len(model.levels))]
        self.place = placements
        k = placements[0].shape[0] if placements else 1
        self.fam_fires = [torch.zeros(p.shape[1], dtype=torch.float64) for p in placements]
        self.cofire = torch.zeros(len(placements), k, dtype=torch.float64)  # family with its parent, summed
        self.both = [torch.zeros(k, len(f), dtype=torch.float64) for f in self.fam_of]

    def update(self, active: list[torch.Tensor], nz: list[tuple]) -> None:
        """Add one batch: activity masks (bool [B, n_l] per level) and their _nonzero coordinates."""
        for l in range(1, len(active)):
            fam_of, place = self.fam_of[l - 1], self.place[l - 1]
            rows, child = nz[l]
            keep = fam_of[child] >= 0  # orphans belong to no family
            rows, child = rows[keep], child[keep]
            fam = fam_of[child]
            # (row, family) where any child of the family is active, each once
            code = torch.unique(rows * place.shape[1] + fam)
            f_rows, f_fam = code // place.shape[1], code % place.shape[1]
            self.fam_fires[l - 1] += torch.bincount(f_fam, minlength=place.shape[1]).double()
            par = active[l - 1].reshape(-1)  # [B * n_{l-1}]: is parent j active on row i, at i * n + j
            n_par = active[l - 1].shape[1]
            for k, pk in enumerate(place):
                hit = par[rows * n_par + pk[fam]]
                self.both[l - 1][k] += torch.bincount(child, weights=hit.double(), minlength=len(fam_of))
                self.cofire[l - 1, k] += float(par[f_rows * n_par + pk[f_fam]].sum())

    def scores(self, fires: list[torch.Tensor], n_rows: int) -> list[dict]:
        """Per forest: hamming, hamming_per_level, P(p|c), P(c|p) and the per-pair values pc, cp."""
        out = []
        for k in range(self.cofire.shape[1]):
            pcs, cps, per = [], [], []
            for l, fam_of in enumerate(self.fam_of, start=1):
                pk, kids = self.place[l - 1][k], fam_of >= 0
                mismatch = fires[l - 1][pk].sum() + self.fam_fires[l - 1].sum() - 2 * self.cofire[l - 1, k]
                per.append(float(mismatch) / n_rows)
                fc, fp, b = fires[l][kids], fires[l - 1][pk[fam_of[kids]]], self.both[l - 1][k, kids]
                pcs.append((b / fc)[fc > 0])
                cps.append((b / fp)[fp > 0])
            pc, cp = (torch.cat(v) if v else torch.zeros(0) for v in (pcs, cps))
            out.append({"hamming": sum(per) / max(1, len(per)), "hamming_per_level": per, "pc": pc, "cp": cp,
                        "p_parent_given_child": float(pc.mean()) if pc.numel() else float("nan"),
                        "p_child_given_parent": float(cp.mean()) if cp.numel() else float("nan")})
        return out


def _fresh(batches) -> Callable[[], Iterable[torch.Tensor]] | None:
    """A zero-argument callable giving a new pass over `batches`, or None for a one-shot iterator."""
    if callable(batches):
        return batches
    if iter(batches) is batches:
        return None
    return lambda: batches


def _parent_fires(model: HSAE, batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Firing counts of every parent level (all but the last): the first, cheaper pass."""
    fires = [torch.zeros(n, dtype=torch.float64) for n in model.sizes[:-1]]
    for x in batches:
        for lv, f in zip(model.levels, fires):
            # pre > threshold is exactly encode(x) > 0 (thresholds are > 0), without forming the activations
            f += torch.bincount(_nonzero(lv.pre(x) > lv.threshold)[1], minlength=len(f)).double()
    return fires


def _placements(model: HSAE, draws: int, seed: int, fresh) -> list[torch.Tensor]:
    """Per child level: [1 + draws, F] family parents, row 0 the model's own, then the chance forests."""
    parents = [model.parent(l) for l in range(1, len(model.levels))]
    own = [families(p)[0][None] for p in parents]
    if not draws:
        return own
    eligible = [f > 0 for f in _parent_fires(model, fresh())]
    return [torch.cat([o, c]) for o, c in zip(own, chance_placements(parents, eligible, draws, seed))]


@torch.no_grad()
def evaluate(model: HSAE, batches: Iterable[torch.Tensor] | Callable[[], Iterator[torch.Tensor]],
             chance_draws: int = 5, chance_seed: int = 0) -> dict:
    """Metrics dict over normalised batches [B, d] (see module docstring).

    batches: a re-iterable (list) or a zero-argument callable returning a fresh iterator; the
    chance level needs two passes (firing counts first), so a one-shot iterator gets none."""
    fresh, L = _fresh(batches), len(model.levels)
    if fresh is None and chance_draws and L > 1:
        warnings.warn("evaluate: batches is a one-shot iterator, so no chance level; pass a list or a callable")
    draws = chance_draws if fresh is not None and L > 1 else 0
    counts = HierarchyCounts(model, _placements(model, draws, chance_seed, fresh))
    totals = _Totals(model)
    for x in fresh() if fresh is not None else batches:
        acts = model.encode(x)
        active = [a > 0 for a in acts]
        nz = [_nonzero(a) for a in active]
        totals.update(model, x, acts, nz)
        counts.update(active, nz)
    if totals.n_rows == 0:
        raise ValueError("no evaluation rows")
    levels = totals.levels(model)
    scores = counts.scores(totals.fires, totals.n_rows)
    out = {"n_rows": totals.n_rows, "levels": levels, "l0": sum(v["l0"] for v in levels) / L,
           "var_explained": sum(v["var_explained"] for v in levels) / L, "hierarchy": _hierarchy(model, scores[0])}
    if draws:
        out["hierarchy"]["chance"] = summarize(scores[1:], chance_seed)
    return out


def _hierarchy(model: HSAE, own: dict) -> dict:
    """The eval dict's hierarchy entry from the model's own forest's scores."""
    parents = [model.parent(l) for l in range(1, len(model.levels))]
    # children per parent (parents with >= 1 child), per parent level: the forest's shape
    children = [torch.bincount(p[p >= 0], minlength=model.sizes[l]) for l, p in enumerate(parents)]
    return {
        "hamming": own["hamming"],
        "hamming_per_level": own["hamming_per_level"],
        "p_parent_given_child": own["p_parent_given_child"],
        "p_child_given_parent": own["p_child_given_parent"],
        "n_pairs": sum(int((p >= 0).sum()) for p in parents),
        # distributions over pairs, for plots: counts in HIST_BINS equal bins of [0, 1]
        "p_parent_given_child_hist": _hist(own["pc"]),
        "p_child_given_parent_hist": _hist(own["cp"]),
        "children_per_parent": [torch.bincount(c[c > 0]).tolist() for c in children],
    }
