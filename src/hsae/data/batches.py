"""Shuffled training batches as a pure function of the step, so a resumed run sees the same data.

Each epoch permutes fixed blocks of rows, groups consecutive permuted blocks into windows of
about WINDOW_BYTES, and permutes the rows inside each window. Only one window is in memory;
its blocks are contiguous reads, so a store much larger than RAM streams fine.
"""

from __future__ import annotations

import numpy as np
import torch

from .store import Store

BLOCK_ROWS = 4096
WINDOW_BYTES = 256 << 20


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([k & 0xFFFFFFFF for k in keys])


class BatchStream:
    """batch(step) -> [batch_size, d] normalised float32 rows drawn from `rows` of the store."""

    def __init__(self, store: Store, rows: range, batch_size: int, seed: int):
        self.store, self.rows, self.B, self.seed = store, rows, batch_size, seed
        self.n = len(rows)
        self.nblocks = -(-self.n // BLOCK_ROWS)
        self.window_blocks = max(1, WINDOW_BYTES // (store.d * 4 * BLOCK_ROWS))
        self._epoch_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._window_cache: tuple[tuple[int, int], torch.Tensor] | None = None

    def _epoch(self, e: int):
        """(block order, window start offsets within the epoch) for epoch e."""
        if self._epoch_cache is None or self._epoch_cache[0] != e:
            order = _rng(self.seed, e).permutation(self.nblocks)
            sizes = np.minimum(BLOCK_ROWS, self.n - order * BLOCK_ROWS)
            wsizes = np.add.reduceat(sizes, np.arange(0, self.nblocks, self.window_blocks))
            self._epoch_cache = (e, order, np.concatenate([[0], np.cumsum(wsizes)]))
        return self._epoch_cache[1], self._epoch_cache[2]

    def _window(self, e: int, w: int) -> torch.Tensor:
        """Rows of window w of epoch e, already permuted."""
        if self._window_cache is None or self._window_cache[0] != (e, w):
            order, _ = self._epoch(e)
            blocks = order[w * self.window_blocks:(w + 1) * self.window_blocks]
            parts = [self.store.batch(self.rows.start + b * BLOCK_ROWS,
                                      self.rows.start + min(self.n, (b + 1) * BLOCK_ROWS)) for b in blocks]
            data = torch.cat(parts)
            perm = torch.from_numpy(_rng(self.seed, e, w + 1).permutation(len(data)))
            self._window_cache = ((e, w), data[perm])
        return self._window_cache[1]

    def batch(self, step: int) -> torch.Tensor:
        """The step's batch; identical for the same (store, rows, batch size, seed, step)."""
        pos, need, out = step * self.B, self.B, []
        while need:
            e, off = divmod(pos, self.n)
            _, starts = self._epoch(e)
            w = int(np.searchsorted(starts, off, side="right")) - 1
            take = min(need, int(starts[w + 1]) - off)
            a = off - int(starts[w])
            out.append(self._window(e, w)[a:a + take])
            pos, need = pos + take, need - take
        return out[0] if len(out) == 1 else torch.cat(out)
