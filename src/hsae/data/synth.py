"""Synthetic activations generated from a known forest (ground truth for the learning code).

Generative story, for branching (b_0, b_1, ..., b_{L-1}) with every option off:
- The forest has b_0 roots; every node at depth l < L-1 has b_{l+1} children, so depth l
  holds n_l = b_0 * ... * b_l nodes (node j at depth l+1 has parent j // b_{l+1}).
- Every node v has a direction u_v: an independent uniformly random unit vector in R^d.
- For each input, every root fires independently with probability `active / b_0`. A firing
  node fires exactly one of its children, chosen uniformly, down to depth L-1: an input is a
  set of root-to-leaf paths, one node per depth each.
- x = sum over firing nodes v of m_v u_v + noise, with m_v ~ Uniform(0.5, 1.5)
  independent per node and input, and isotropic Gaussian noise of expected norm `noise`.

Harder options (`SynthOptions`, each off by default; with all off the output is bit-identical
to the story above, and `PRESETS` names combinations of all of them):
- branching_range (lo, hi): every node at depth l < L-1 gets its own number of children,
  uniform on {lo, ..., hi} (drawn from a stream of its own, seed [seed, 2]), instead of
  b_{l+1}. b_0 stays the number of roots and len(branching) the depth; b_1.. are ignored.
  Siblings are contiguous: depth l+1 lists node 0's children first, then node 1's, ...
- p_no_child: a firing non-leaf node fires no child with this probability (its path stops
  there); otherwise it fires exactly one child, as before. Siblings never fire together.
- child_zipf s_c: that child is the k-th sibling (k from 0) with probability proportional to
  1 / (k+1)^s_c instead of uniformly (0 = uniform).
- zipf s: root i fires with probability p_i = min(1, c / (i+1)^s), with c set so that
  sum_i p_i = active. If the clip binds, the head roots fire on every row and c grows until
  the expected count is `active` again: the tail keeps the exact 1/(i+1)^s law, the clipped
  head is flatter. With active >= b_0 every root fires on every row (as without zipf, where
  p_i = min(1, active / b_0)).
- magnitude_sigma: m_v ~ LogNormal(-sigma^2 / 2, sigma) (mean exactly 1, log-sd sigma)
  instead of Uniform(0.5, 1.5).
- root_correlation c with root_group g: the roots form G = ceil(b_0 / g) groups, root i in
  group i mod G (so every group mixes frequent and rare roots). Per row, each group draws a
  shared z_k ~ N(0, 1) and each root its own e_i ~ N(0, 1); root i fires iff
  sqrt(c) z_k + sqrt(1 - c) e_i < Phi^{-1}(p_i). That sum is N(0, 1), so every root's
  marginal stays exactly p_i (a Gaussian copula); roots of one group have latent correlation
  c (their firing indicators correlate positively, less than c), different groups are
  independent. Descendants are drawn as before, given the firing roots.

Ideal features. Given that node v at depth l fires, E[x's part from v's tree] is
  sum_{a on v's path, v included} u_a + sum_{w below v} P(w | v) u_w
(E[m] = 1 under both magnitude laws, so they do not enter). P(w | v) is the product over the
edges a -> a' on the path from v down to w of (1 - p_no_child) * q(a' | a), where q is
1 / n_children(a) (uniform, the regular case giving 1 / (product of the branchings)) or the
child-Zipf weight. Root frequencies and root correlation only change which *other* trees fire
alongside v; other roots' trees are not part of v's tree, so they do not enter either. The
reconstruction-optimal level-l feature for v is that vector normalised, so level l of an
ideal HSAE has n_l features, one per depth-l node. `truth.safetensors` holds
levels.{l}.directions [n_l, d] and levels.{l}.parent (l >= 1); the manifest's source dict
records every option and the level sizes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch

from ..config import UserError
from ..files import save_tensors
from .store import StoreWriter

SHARD_ROWS = 65536


@dataclass(frozen=True)
class SynthOptions:
    """The harder generator's options (module docstring); the defaults give the regular forest."""

    branching_range: tuple[int, int] | None = None  # children per non-leaf node, uniform in [lo, hi]
    p_no_child: float = 0.0  # P(a firing non-leaf node fires no child)
    zipf: float = 0.0  # root-frequency exponent s (0: every root equally likely)
    child_zipf: float = 0.0  # child-choice exponent among siblings (0: uniform)
    magnitude_sigma: float | None = None  # log-normal magnitudes with this sigma (None: Uniform(0.5, 1.5))
    root_correlation: float = 0.0  # Gaussian-copula correlation c within a root group (0: independent)
    root_group: int = 4  # roots per correlated group (about)

    def check(self) -> "SynthOptions":
        """Raise UserError with a one-line reason for an impossible value; returns self."""
        r = self.branching_range
        if r is not None and not (len(r) == 2 and 1 <= r[0] <= r[1] and all(int(v) == v for v in r)):
            raise UserError(f"--branching-range needs integers 1 <= LO <= HI, got {r}")
        _in_range("--p-no-child", self.p_no_child, 0.0, 1.0, hi_open=True)
        _in_range("--zipf", self.zipf, 0.0, 10.0)  # beyond 10 the tail probabilities underflow
        _in_range("--child-zipf", self.child_zipf, 0.0, 10.0)
        if self.magnitude_sigma is not None:
            _in_range("--magnitude-sigma", self.magnitude_sigma, 0.0, 5.0)
        _in_range("--root-correlation", self.root_correlation, 0.0, 1.0)
        if int(self.root_group) != self.root_group or self.root_group < 1:
            raise UserError(f"--root-group must be a positive integer, got {self.root_group}")
        return self

    def to_dict(self) -> dict:
        """JSON-ready values (the store manifest records them)."""
        d = dataclasses.asdict(self)
        d["branching_range"] = None if self.branching_range is None else [int(v) for v in self.branching_range]
        return d


# Named harder configurations: every option on. With branching_range, `branching` only gives
# the roots and the depth. Level sizes at seed 0 are in README.md (`hsae synth` prints them).
PRESETS = {
    "hard": {"d": 64, "branching": [6, 5, 5], "active": 2.0, "branching_range": (2, 5), "p_no_child": 0.2,
             "zipf": 1.0, "magnitude_sigma": 0.3, "root_correlation": 0.3},
    "hard-wide": {"d": 128, "branching": [10, 5, 5], "active": 2.5, "branching_range": (2, 5), "p_no_child": 0.2,
                  "zipf": 1.0, "child_zipf": 0.5, "magnitude_sigma": 0.5, "root_correlation": 0.3},
}


def _in_range(flag: str, v: float, lo: float, hi: float, hi_open: bool = False) -> None:
    """Raise UserError unless v is finite and in [lo, hi] (or [lo, hi))."""
    if not (math.isfinite(v) and lo <= v and (v < hi if hi_open else v <= hi)):
        raise UserError(f"{flag} must be in [{lo:g}, {hi:g}{')' if hi_open or hi == math.inf else ']'}, got {v}")


def check_args(d: int, branching: list[int], active: float, noise: float) -> None:
    """Raise UserError for a dimension, branching, active count or noise that cannot generate."""
    if d < 1 or not branching or min(branching) < 1:
        raise UserError("--d and every --branching value must be positive")
    _in_range("--active", active, 0.0, math.inf)
    if active == 0:
        raise UserError("--active must be > 0")
    _in_range("--noise", noise, 0.0, math.inf)


def _child_counts(branching: list[int], o: SynthOptions, seed: int) -> list[np.ndarray]:
    """Children of every node, per non-leaf depth: b_{l+1} each, or drawn from the range."""
    rng = np.random.default_rng([seed, 2])  # its own stream: the rows' stream is [seed, 1]
    counts, n = [], branching[0]
    for b in branching[1:]:
        if o.branching_range is None:
            c = np.full(n, b, dtype=np.int64)
        else:
            c = rng.integers(o.branching_range[0], o.branching_range[1] + 1, size=n)
        counts.append(c)
        n = int(c.sum())
    return counts


def _choice_cdf(parents: np.ndarray, first: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Child-Zipf choice: q(child | parent) per node and parent + cumulative q (for searchsorted)."""
    rank = np.arange(len(parents)) - first[parents]
    w = 1.0 / (rank + 1.0) ** s
    q = w / np.bincount(parents, weights=w)[parents]
    cum = np.cumsum(q)
    cum -= np.concatenate([[0.0], cum])[first[parents]] - parents  # restart at the parent's index
    last = np.append(parents[1:] != parents[:-1], True)
    cum[last] = parents[last] + 1.0  # exact group ends: a target in [v, v + 1) stays in group v
    return q, cum


def _ideal(u: list, parents: list, counts: list, q: list, stay: float) -> list[np.ndarray]:
    """Normalised E[x's part from v's tree | v fires] for every node v of every depth."""
    sizes = [len(v) for v in u]
    ideal = []
    for l, n in enumerate(sizes):
        vec = u[l].copy()
        idx = np.arange(n)
        for a in range(l, 0, -1):  # ancestors fire whenever v does
            idx = parents[a][idx]
            vec += u[a - 1][idx]
        reach, anc = np.ones(n), np.arange(n)  # P(w | v) and v, for w at depth k below v
        for k in range(l + 1, len(sizes)):
            par = parents[k]
            # division (not a stored 1/b) keeps the regular case bit-identical to the old code
            reach = (reach[par] / counts[k - 1][par] if q[k] is None else reach[par] * q[k]) * stay
            anc = anc[par]
            np.add.at(vec, anc, reach[:, None] * u[k])
        ideal.append(vec / np.linalg.norm(vec, axis=1, keepdims=True))
    return ideal


def forest(branching: list[int], d: int, seed: int, options: SynthOptions | None = None) -> dict:
    """Directions u [n_l, d], parents and children per depth, plus the ideal features."""
    o = (options or SynthOptions()).check()
    counts = _child_counts(branching, o, seed)
    sizes = [branching[0]] + [int(c.sum()) for c in counts]
    rng = np.random.default_rng(seed)
    u = []
    for n in sizes:
        v = rng.standard_normal((n, d))
        u.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    parents = [None] + [np.repeat(np.arange(len(c)), c) for c in counts]
    first = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(np.int64) for c in counts]
    q, cdf = [None] * len(sizes), [None] * len(sizes)
    if o.child_zipf > 0:
        for k in range(1, len(sizes)):
            q[k], cdf[k] = _choice_cdf(parents[k], first[k - 1], o.child_zipf)
    ideal = _ideal(u, parents, counts, q, 1.0 - o.p_no_child)
    return {"sizes": sizes, "u": u, "parents": parents, "counts": counts, "first": first, "q": q, "cdf": cdf,
            "ideal": ideal, "options": o}


def root_probs(b0: int, active: float, zipf: float = 0.0) -> np.ndarray:
    """P(root i fires): min(1, active / b_0), or c / (i+1)^zipf clipped at 1 with sum `active`."""
    if zipf == 0:
        return np.full(b0, min(1.0, active / b0))
    w = 1.0 / np.arange(1, b0 + 1) ** zipf
    for k in range(b0):  # k head roots clipped at 1; the smallest k that leaves the rest below 1
        c = (active - k) / w[k:].sum()
        if c * w[k] <= 1.0:
            p = c * w
            p[:k] = 1.0
            return p
    return np.ones(b0)  # active >= b_0: every root always fires


def _probit(p: np.ndarray) -> np.ndarray:
    """Phi^{-1}(p) per entry, +-inf at 1 and 0."""
    nd = NormalDist()
    return np.array([math.inf if v >= 1 else -math.inf if v <= 0 else nd.inv_cdf(float(v)) for v in p])


def _fire_roots(p: np.ndarray, rows: int, o: SynthOptions, rng: np.random.Generator):
    """(row, root) index pairs of the firing roots: independent, or through the group copula."""
    b0 = len(p)
    if o.root_correlation == 0:
        return (rng.random((rows, b0)) < p).nonzero()
    groups = -(-b0 // o.root_group)
    c = o.root_correlation
    z = math.sqrt(c) * rng.standard_normal((rows, groups))[:, np.arange(b0) % groups]
    z += math.sqrt(1.0 - c) * rng.standard_normal((rows, b0))
    return (z < _probit(p)).nonzero()


def _children(f: dict, l: int, row: np.ndarray, node: np.ndarray, rng: np.random.Generator):
    """Rows and depth-l nodes fired by the firing depth-(l-1) nodes: one child each, or none."""
    o = f["options"]
    if o.p_no_child > 0:
        go = rng.random(node.shape) >= o.p_no_child
        row, node = row[go], node[go]
    first, count = f["first"][l - 1][node], f["counts"][l - 1][node]
    if f["cdf"][l] is None:
        return row, first + rng.integers(0, count)  # == node * b + integers(0, b) when regular
    pick = np.searchsorted(f["cdf"][l], node + rng.random(node.shape), side="right")
    return row, np.minimum(pick, first + count - 1)


def _magnitudes(n: int, sigma: float | None, rng: np.random.Generator) -> np.ndarray:
    """Firing magnitudes, mean 1: Uniform(0.5, 1.5) or log-normal with log-sd sigma."""
    if sigma is None:
        return rng.uniform(0.5, 1.5, size=n)
    return rng.lognormal(-sigma * sigma / 2, sigma, size=n)


def _draw(f: dict, rows: int, active: float, noise: float, rng: np.random.Generator):
    """x [rows, d] (float64) and per depth the firing records (row, node, magnitude)."""
    o = f["options"]
    d = f["u"][0].shape[1]
    x = np.zeros((rows, d))
    row, node = _fire_roots(root_probs(f["sizes"][0], active, o.zipf), rows, o, rng)
    records = []
    for l in range(len(f["sizes"])):
        if l > 0:
            row, node = _children(f, l, row, node, rng)
        m = _magnitudes(node.shape, o.magnitude_sigma, rng)
        np.add.at(x, row, m[:, None] * f["u"][l][node])
        records.append((row, node, m))
    x += rng.standard_normal((rows, d)) * (noise / math.sqrt(d))
    return x, records


def sample(f: dict, branching: list[int], rows: int, active: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Draw [rows, d] activations from the forest's generative story (f defines the structure)."""
    assert branching[0] == f["sizes"][0] and len(branching) == len(f["sizes"]), "branching is not f's"
    return _draw(f, rows, active, noise, rng)[0].astype(np.float32)


def write_synth(out: str | Path, d: int, branching: list[int], tokens: int, seed: int = 0,
                active: float = 3.0, noise: float = 0.1, progress=None, options: SynthOptions | None = None) -> dict:
    """Generate a synthetic store with truth.safetensors in `out`; returns its manifest."""
    check_args(d, branching, active, noise)
    f = forest(branching, d, seed, options)
    out = Path(out)
    w = StoreWriter(out, d, "float32", meta={"source": {
        "kind": "synth", "branching": branching, "seed": seed, "active": active, "noise": noise,
        **f["options"].to_dict(), "sizes": f["sizes"]}})
    rng = np.random.default_rng([seed, 1])
    for a in range(0, tokens, SHARD_ROWS):
        w.write(sample(f, branching, min(SHARD_ROWS, tokens - a), active, noise, rng))
        if progress:
            progress(min(SHARD_ROWS, tokens - a))
    truth = {f"levels.{l}.directions": torch.from_numpy(v).float() for l, v in enumerate(f["ideal"])}
    truth.update({f"levels.{l}.parent": torch.from_numpy(p).long() for l, p in enumerate(f["parents"]) if p is not None})
    save_tensors(truth, out / "truth.safetensors")
    return w.finish(truth="truth.safetensors")


def load_truth(path: str | Path) -> dict:
    """{'directions': [[n_l, d] per level], 'parents': [None, [n_1], ...]} from truth.safetensors."""
    from safetensors.torch import load_file

    t = load_file(str(path))
    L = sum(1 for k in t if k.endswith(".directions"))
    return {"directions": [t[f"levels.{l}.directions"] for l in range(L)],
            "parents": [None] + [t[f"levels.{l}.parent"] for l in range(1, L)]}
