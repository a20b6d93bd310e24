"""Synthetic activations generated from a known forest (ground truth for the learning code).

Generative story, for branching (b_0, b_1, ..., b_{L-1}):
- The forest has b_0 roots; every node at depth l < L-1 has b_{l+1} children, so depth l
  holds n_l = b_0 * ... * b_l nodes (node j at depth l+1 has parent j // b_{l+1}).
- Every node v has a direction u_v: an independent uniformly random unit vector in R^d.
- For each input, every root fires independently with probability `active / b_0`. A firing
  node fires exactly one of its children, chosen uniformly, down to depth L-1: an input is a
  set of root-to-leaf paths, one node per depth each.
- x = sum over firing nodes v of m_v u_v + noise, with m_v ~ Uniform(0.5, 1.5)
  independent per node and input, and isotropic Gaussian noise of expected norm `noise`.

Ideal features. Given that node v at depth l fires, E[x's part from v's tree] is
  sum_{a on v's path, v included} u_a + sum_{w below v} P(w | v) u_w
(E[m] = 1; P(w | v) = 1 / (product of the branchings between them)). The reconstruction-
optimal level-l feature for v is that vector normalised, so level l of an ideal HSAE has
n_l features, one per depth-l node, and L0 = the number of firing paths at every level.
`truth.safetensors` holds levels.{l}.directions [n_l, d] and levels.{l}.parent (l >= 1).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from .store import StoreWriter

SHARD_ROWS = 65536


def forest(branching: list[int], d: int, seed: int) -> dict:
    """Directions u [n_l, d] and parents per depth, plus the ideal features."""
    rng = np.random.default_rng(seed)
    sizes = np.cumprod(branching).tolist()
    u = []
    for n in sizes:
        v = rng.standard_normal((n, d))
        u.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    parents = [None] + [np.arange(sizes[l]) // branching[l] for l in range(1, len(sizes))]
    ideal = []
    for l, n in enumerate(sizes):
        vec = u[l].copy()
        idx = np.arange(n)
        for a in range(l, 0, -1):  # ancestors
            idx = parents[a][idx]
            vec += u[a - 1][idx]
        below, weight = np.arange(n), 1.0
        for k in range(l + 1, len(sizes)):  # descendants, weighted by P(w | v)
            weight /= branching[k]
            anc = np.arange(sizes[k])
            for a in range(k, l, -1):
                anc = parents[a][anc]
            np.add.at(vec, anc, weight * u[k])
        ideal.append(vec / np.linalg.norm(vec, axis=1, keepdims=True))
    return {"sizes": sizes, "u": u, "parents": parents, "ideal": ideal}


def sample(f: dict, branching: list[int], rows: int, active: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Draw [rows, d] activations from the forest's generative story."""
    d = f["u"][0].shape[1]
    p_root = min(1.0, active / branching[0])
    x = np.zeros((rows, d))
    r, c = (rng.random((rows, branching[0])) < p_root).nonzero()
    node = c
    for l in range(len(branching)):
        if l > 0:
            node = node * branching[l] + rng.integers(0, branching[l], size=node.shape)
        m = rng.uniform(0.5, 1.5, size=node.shape)
        np.add.at(x, r, m[:, None] * f["u"][l][node])
    x += rng.standard_normal((rows, d)) * (noise / math.sqrt(d))
    return x.astype(np.float32)


def write_synth(out: str | Path, d: int, branching: list[int], tokens: int, seed: int = 0,
                active: float = 3.0, noise: float = 0.1, progress=None) -> dict:
    """Generate a synthetic store with truth.safetensors in `out`; returns its manifest."""
    f = forest(branching, d, seed)
    out = Path(out)
    w = StoreWriter(out, d, "float32", meta={"source": {
        "kind": "synth", "branching": branching, "seed": seed, "active": active, "noise": noise}})
    rng = np.random.default_rng([seed, 1])
    for a in range(0, tokens, SHARD_ROWS):
        w.write(sample(f, branching, min(SHARD_ROWS, tokens - a), active, noise, rng))
        if progress:
            progress(min(SHARD_ROWS, tokens - a))
    truth = {f"levels.{l}.directions": torch.from_numpy(v).float() for l, v in enumerate(f["ideal"])}
    truth.update({f"levels.{l}.parent": torch.from_numpy(p).long() for l, p in enumerate(f["parents"]) if p is not None})
    save_file(truth, str(out / "truth.safetensors"))
    return w.finish(truth="truth.safetensors")


def load_truth(path: str | Path) -> dict:
    """{'directions': [[n_l, d] per level], 'parents': [None, [n_1], ...]} from truth.safetensors."""
    from safetensors.torch import load_file

    t = load_file(str(path))
    L = sum(1 for k in t if k.endswith(".directions"))
    return {"directions": [t[f"levels.{l}.directions"] for l in range(L)],
            "parents": [None] + [t[f"levels.{l}.parent"] for l in range(1, L)]}
