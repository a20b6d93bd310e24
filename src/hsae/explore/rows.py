"""Per-row text of an activation store: token ids and the id of the context each row came from.

The collector (data/collect.py) stores, next to `acts`, per-row `tokens`, `doc` and `pos`
(read with `Store.read_extra`), and writes each shard as whole contexts of ctx - 1 rows
(position 0 is dropped). A row's window of
neighbouring tokens must stay inside its own context: the model never saw the others.
"""

from __future__ import annotations

import numpy as np

from ..config import UserError
from ..data.store import Store


def row_text(store: Store, rows: range) -> tuple[np.ndarray, np.ndarray]:
    """(token id [R] int64, context id [R] int64) of the store rows `rows`."""
    src = store.meta.get("source", {})
    shards = store.meta.get("shards")
    if src.get("kind") != "model" or not shards:
        raise UserError(f"{store.path}: contexts need a store collected from a language model "
                        "(`hsae collect`), with per-row tokens; this one has none")
    per_ctx = int(src["ctx"]) - 1
    toks, ctxs = [], []
    next_ctx = 0
    for i in range(len(shards)):
        a, b = int(store.offsets[i]), int(store.offsets[i + 1])
        lo, hi = max(a, rows.start), min(b, rows.stop)
        n = b - a
        if lo < hi:
            t = store.read_extra("tokens", lo, hi)
            if n % per_ctx == 0:
                c = np.arange(lo - a, hi - a) // per_ctx
            else:
                # Rows were dropped (non-finite) in a store from before the collector dropped
                # whole contexts: start a new context wherever document or position stop being
                # consecutive.
                doc, pos = store.read_extra("doc", a, b), store.read_extra("pos", a, b)
                brk = np.r_[True, (doc[1:] != doc[:-1]) | (pos[1:] != pos[:-1] + 1)]
                c = (np.cumsum(brk) - 1)[lo - a:hi - a]
            toks.append(t.astype(np.int64))
            ctxs.append(c.astype(np.int64) + next_ctx)
        next_ctx += n  # more than the shard's contexts: ids of different shards never collide
    return np.concatenate(toks), np.concatenate(ctxs)
