"""One streaming pass over store rows that keeps, per feature of every level, what the explorer shows.

Per chunk of rows the codes of one level ([chunk + window, n]) are computed, reduced into
running per-feature buffers of fixed size, and dropped: memory is O(n * k * window), never
O(rows * n). Kept per feature:
- top-k rows by activation, and k activation-weighted random rows without replacement
  (Efraimidis-Spirakis A-Res: keep the k largest log(u) / a). u is a hash of (seed, level,
  row, feature), so the result does not depend on the chunk size or the order of chunks.
  Samples are drawn from all firing rows, so they may repeat top-k rows (as in the paper's judge).
- for each kept row, the feature's activation on every token of its window
  (`before` tokens, the row, `after` tokens; NaN outside the row's context);
- firing count, activation sum, and a histogram with log-spaced bins relative to the
  feature's threshold (JumpReLU activations are >= threshold): edges threshold * 2^(i / 4);
- on the `edge_rows` only (held-out rows): firing count and, for levels >= 1, the count of
  rows where the feature and its parent both fire (the browser's edge statistics).
Rows that training never sees (data/ordinary.py: special tokens, massive activations) count as
firing nowhere, so they are never examples and never enter the statistics.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ..data.store import Store
from ..model import HSAE

BINS_PER_OCTAVE = 4
N_BINS = 32  # up to 256x the threshold; larger activations land in the last bin
_M32 = np.uint64(0xFFFFFFFF)


def _hash32(x: np.ndarray) -> np.ndarray:
    """lowbias32 integer hash of uint64 values in [0, 2^32) (numpy: torch's int64 elementwise ops were ~100x slower here)."""
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & _M32
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & _M32
    return x ^ (x >> np.uint64(16))


def uniforms(seed: int, level: int, rows: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """Deterministic U(0, 1) float64 per (row, feature) pair: a counter-based generator."""
    salt = np.uint64((seed * 0x9E3779B9 + level * 0x632BE5AB) & 0xFFFFFFFF)
    h = _hash32((rows.numpy().astype(np.uint64) + salt) & _M32)
    h = _hash32((h + feats.numpy().astype(np.uint64) * np.uint64(0x85EBCA6B)) & _M32)
    return torch.from_numpy((h.astype(np.float64) + 0.5) / 2.0**32)


class _Kept:
    """k (row, act, key, window values) slots per feature, merged chunk by chunk by largest key."""

    def __init__(self, n: int, k: int, w: int):
        self.key = torch.full((n, k), -torch.inf)
        self.row = torch.full((n, k), -1, dtype=torch.long)
        self.act = torch.zeros(n, k)
        self.values = torch.full((n, k, w), torch.nan)

    def merge(self, key, row, act, values) -> None:
        """Keep the k largest keys among the current slots and the new candidates ([n, c] each)."""
        k = self.key.shape[1]
        key, row = torch.cat([self.key, key], 1), torch.cat([self.row, row], 1)
        act, values = torch.cat([self.act, act], 1), torch.cat([self.values, values], 1)
        # equal keys (identical activations recur for repeated text) are broken by the lower row
        by_row = torch.sort(torch.where(row < 0, torch.iinfo(torch.long).max, row), dim=1, stable=True).indices
        order = by_row.gather(1, torch.sort(key.gather(1, by_row), dim=1, descending=True, stable=True).indices[:, :k])
        self.key, self.row = key.gather(1, order), row.gather(1, order)
        self.act = act.gather(1, order)
        self.values = values.gather(1, order[..., None].expand(-1, -1, values.shape[2]))


class _LevelScan:
    """One level's running statistics and kept windows over the scanned rows."""

    def __init__(self, n: int, k: int, w: int, threshold: torch.Tensor):
        self.n, self.k, self.threshold = n, k, threshold
        self.top, self.smp = _Kept(n, k, w), _Kept(n, k, w)
        self.fires = torch.zeros(n, dtype=torch.long)
        self.total = torch.zeros(n, dtype=torch.float64)
        self.hist = torch.zeros(n * N_BINS, dtype=torch.long)
        self.e_fires = torch.zeros(n, dtype=torch.long)
        self.e_both = torch.zeros(n, dtype=torch.long)

    def count(self, r_i, f_i, vals, held, both=None) -> None:
        """Add one chunk's firings (row, feature, value lists; held: on an edge row) to the counts."""
        n = self.n
        self.fires += torch.bincount(f_i, minlength=n)
        self.total += torch.bincount(f_i, weights=vals.double(), minlength=n)
        bins = (torch.log2(vals / self.threshold[f_i]) * BINS_PER_OCTAVE).floor().long().clamp(0, N_BINS - 1)
        self.hist += torch.bincount(f_i * N_BINS + bins, minlength=n * N_BINS)
        self.e_fires += torch.bincount(f_i[held], minlength=n)
        if both is not None:
            self.e_both += torch.bincount(f_i[both], minlength=n)

    def keep(self, padded, codes, active, r_i, f_i, vals, keys_u, a, win, same) -> None:
        """Merge the chunk's top-k rows per feature and its top-k sampling keys into the kept slots."""
        c, n = codes.shape
        kk = min(self.k, c)
        key_s = torch.full((c, n), -torch.inf)
        key_s[r_i, f_i] = (torch.log(keys_u) / vals.double()).float()
        key_t = torch.where(active, codes, -torch.inf)
        feat = torch.arange(n)[:, None]
        for kept, key in ((self.top, key_t), (self.smp, key_s)):
            kv, ki = key.topk(kk, dim=0)  # [kk, n]
            kv, ki = kv.t(), ki.t()  # [n, kk]
            ok = torch.isfinite(kv)
            vals_w = padded.t()[feat[..., None], win[ki]]  # [n, kk, w]
            vals_w = torch.where(same[ki], vals_w, torch.nan)
            kept.merge(kv, torch.where(ok, ki + a, -1), torch.where(ok, codes[ki, feat], 0.0), vals_w)

    def arrays(self, edges: bool) -> dict:
        """The level's numpy arrays (see the module docstring); edge_both only for levels with parents."""
        d = {"fires": self.fires.numpy(), "act_sum": self.total.numpy(),
             "hist": self.hist.view(-1, N_BINS).numpy(), "edge_fires": self.e_fires.numpy()}
        if edges:
            d["edge_both"] = self.e_both.numpy()
        for name, kept in (("top", self.top), ("sample", self.smp)):
            d[f"{name}_row"] = kept.row.numpy()
            d[f"{name}_act"] = kept.act.numpy()
            d[f"{name}_values"] = kept.values.half().numpy()
        return d


def _windows(ctx: torch.Tensor, c: int, before: int, w: int):
    """([c, w] padded indices of each chunk row's window, [c, w] which lie in the row's context)."""
    win = torch.arange(c)[:, None] + torch.arange(w)
    return win, ctx[win] == ctx[torch.arange(c) + before][:, None]


@torch.no_grad()
def scan(model: HSAE, store: Store, rows: range, context: np.ndarray, edge_rows: range, k: int = 20,
         before: int = 12, after: int = 4, seed: int = 0, chunk: int = 2048, progress: bool = True,
         encode=None) -> list[dict]:
    """Per level, a dict of numpy arrays (see module docstring) over the store rows `rows`.

    context[i] is the context id of row rows.start + i (windows never cross contexts).
    `encode(level_module, x)` computes codes (default: the level's own encode); tests hook it.
    """
    encode = encode or (lambda lv, x: lv.encode(x))
    w = before + 1 + after
    ctx_all = torch.from_numpy(np.asarray(context, dtype=np.int64))
    levels = [_LevelScan(n, k, w, lv.threshold.detach()) for n, lv in zip(model.sizes, model.levels)]
    bar = tqdm(total=len(rows), unit="row", desc="contexts", disable=not progress)
    for a in range(rows.start, rows.stop, chunk):
        b = min(rows.stop, a + chunk)
        lo, hi = max(rows.start, a - before), min(rows.stop, b + after)
        x = store.batch(lo, hi)
        ordinary = torch.from_numpy(store.ordinary[lo:hi]).float()
        pad0 = lo - (a - before)  # rows of zero padding before lo, so padded row i is store row a - before + i
        P = before + (b - a) + after
        ctx = torch.full((P,), -1, dtype=torch.long)
        ctx[pad0:pad0 + hi - lo] = ctx_all[lo - rows.start:hi - rows.start]
        win, same = _windows(ctx, b - a, before, w)
        e_mask = torch.zeros(b - a, dtype=torch.bool)
        e_lo, e_hi = max(a, edge_rows.start), min(b, edge_rows.stop)
        if e_lo < e_hi:
            e_mask[e_lo - a:e_hi - a] = True
        act_prev = None
        for l, (lv, st) in enumerate(zip(model.levels, levels)):
            padded = torch.zeros(P, lv.n)
            # rows never trained on (special tokens, massive activations) show no activation
            padded[pad0:pad0 + hi - lo] = encode(lv, x) * ordinary[:, None]
            codes = padded[before:before + b - a]  # [c, n]: the chunk's own rows
            active = codes > 0
            # per-feature counts from the sparse (row, feature) list: the dense [c, n] reductions cost more
            r_i, f_i = active.nonzero(as_tuple=True)
            vals = codes[r_i, f_i]
            held, both = e_mask[r_i], None
            if l:
                p_i = model.parent(l)[f_i]
                both = held & (p_i >= 0) & act_prev[r_i, p_i.clamp_min(0)]
            st.count(r_i, f_i, vals, held, both)
            st.keep(padded, codes, active, r_i, f_i, vals, uniforms(seed, l, r_i + a, f_i), a, win, same)
            act_prev = active
        bar.update(b - a)
    bar.close()
    return [st.arrays(l > 0) for l, st in enumerate(levels)]
