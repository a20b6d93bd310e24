"""Chance level of the hierarchy metrics: the same families under randomly chosen parents.

Definition (used by `hsae.eval.evaluate` for every model):
- A level-l *family* is the set of level-l children of one level-(l-1) parent; orphans
  (parent -1) belong to no family.
- A *chance forest* keeps every family (so every family size and every orphan exactly) and
  moves each family of parent level l-1 to a parent drawn uniformly, without replacement,
  from that level's *eligible* features: those that fire at least once on the held-out rows.
  Dead features are left out because a family parked on a parent that never fires scores
  a Hamming distance of its own firing rate and P(c|p) undefined, which would make chance
  look worse than it is. Only when a level has more families than eligible features do the
  remaining families go to dead features (drawn uniformly as well); the model's own forest
  then has to use dead parents too.
- `draws` chance forests (default 5) are drawn from one torch.Generator seeded with `seed`,
  level by level, so they depend only on (forest, eligible features, draws, seed).
- Each chance forest is scored with exactly the model's definitions (metrics.py: Hamming,
  P(p|c), P(c|p)) on the same held-out rows, in the same pass; the chance level is the mean
  over draws, its spread the standard deviation over draws (ddof=1; 0 for one draw).
"""

from __future__ import annotations

import math

import torch


def families(parent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(parent of each family, ascending; family index of every child, -1 for orphans)."""
    has_p = parent >= 0
    fam_parent, inverse = torch.unique(parent[has_p], sorted=True, return_inverse=True)
    fam_of = torch.full_like(parent, -1)
    fam_of[has_p] = inverse
    return fam_parent, fam_of


def draw_placements(n_families: int, eligible: torch.Tensor, draws: int, generator: torch.Generator) -> torch.Tensor:
    """[draws, n_families] distinct parents per draw, uniform over `eligible` (bool [n_parents]) first."""
    good = eligible.nonzero().squeeze(1)
    dead = (~eligible).nonzero().squeeze(1)
    rows = []
    for _ in range(draws):
        # eligible parents in random order, then dead ones: dead only once eligible run out
        order = torch.cat([good[torch.randperm(len(good), generator=generator)],
                           dead[torch.randperm(len(dead), generator=generator)]])
        rows.append(order[:n_families])
    return torch.stack(rows) if rows else torch.zeros(0, n_families, dtype=torch.long)


def chance_placements(parents: list[torch.Tensor], eligible: list[torch.Tensor], draws: int = 5,
                      seed: int = 0) -> list[torch.Tensor]:
    """Per child level l >= 1: [draws, F_l] parents of its families (F_l = number of families)."""
    g = torch.Generator().manual_seed(seed)
    return [draw_placements(len(families(p)[0]), e, draws, g) for p, e in zip(parents, eligible)]


def forest_parents(parent: torch.Tensor, placement: torch.Tensor) -> torch.Tensor:
    """The child -> parent array of `parent`'s families moved to `placement` [F] (orphans stay -1)."""
    _, fam_of = families(parent)
    return torch.where(fam_of >= 0, placement[fam_of.clamp_min(0)], fam_of)


def _mean_std(v: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    m = sum(v) / len(v)
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0


def summarize(scores: list[dict], seed: int) -> dict:
    """The eval dict's hierarchy.chance entry from per-draw scores (hamming, per level, P(p|c), P(c|p))."""
    out: dict = {}
    for key in ("hamming", "p_parent_given_child", "p_child_given_parent"):
        out[key], out[f"{key}_std"] = _mean_std([s[key] for s in scores])
    per = [_mean_std([s["hamming_per_level"][l] for s in scores]) for l in range(len(scores[0]["hamming_per_level"]))]
    out["hamming_per_level"] = [m for m, _ in per]
    out["hamming_per_level_std"] = [s for _, s in per]
    out["draws"], out["seed"] = len(scores), seed
    return out
