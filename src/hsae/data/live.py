"""Training batches from a live model's forward passes: no activation store on disk.

The corpus's packed contexts are cut into n chunks of `buffer_rows // (ctx - 1)` contexts.
Each chunk's rows (the same rows `hsae collect` would store, rounded to the same dtype, minus
the rows kept out of training: special tokens, massive activations, non-finite rows) are
permuted and split in two halves. A pass over the corpus is n + 1 windows: window k is the
second half of chunk k-1 plus the first half of chunk k (window 0 and window n have one half
each), permuted again; batches are cut from the windows in order. So the shuffle buffer holds
about two chunks (2 x buffer_rows rows), a batch mixes rows of about 2 x buffer_rows / (ctx - 1)
contexts, like SAELens's activation buffer (refilled by half and shuffled), and one pass runs
every chunk's forward passes exactly once: a run of one pass costs the model what `hsae
collect` costs it. The next pass starts the corpus again with new permutations.

Everything is a function of (source, seed, chunk index), so a resumed run needs only the
position of its next batch (window, offset: saved in the checkpoint) and recomputes the two
chunks of that window. The next window is computed in a background thread while the current
one is consumed (`read_ahead`), beside the training step.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .batches import _rng
from .ordinary import ordinary_mask

BUFFER_ROWS = 65536  # rows per chunk: the buffer holds about twice this many
PIECE = 64  # contexts per call of rows_of: a closing stream stops between two of them
ONE_PASS = 0.95  # of a run's training tokens, as rows: one pass holds ~4% fewer ordinary rows (default --steps)


class _Closed(Exception):
    """Raised in a window's computation when the stream is closed meanwhile."""


@dataclass
class StreamSource:
    """What a streaming run trains on (RUN/stream.json): with the TrainConfig it fixes the data."""

    model: str = ""  # embedded name, local directory or local Hugging Face cache name
    layer: int = 0  # residual stream after this block
    corpus: str = ""  # a corpus name or path (see data/corpus.py)
    tokens: int = 0  # tokens of the corpus used: held-out first, then training
    heldout_tokens: int = 0  # the first tokens, written to RUN/heldout/ and never trained on
    ctx: int = 128  # tokens per context (position 0 is dropped, as in `hsae collect`)
    seed: int = 0  # corpus order seed (as `hsae collect --seed`)
    dtype: str = "float16"  # rows are rounded to this, as a collected store would hold them
    buffer_rows: int = BUFFER_ROWS  # rows per chunk of the shuffle buffer

    def to_dict(self) -> dict:
        """Plain JSON-able fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StreamSource":
        """Build from a dict with exactly these fields, of these types (UserError otherwise)."""
        from ..config import UserError

        fields = {f.name: type(f.default) for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) != set(fields) or any(
                type(d[k]) is not t for k, t in fields.items()):
            raise UserError(f"a stream source must have exactly the fields {', '.join(fields)} with their types")
        return cls(**d)

    @property
    def heldout_contexts(self) -> int:
        """Contexts of the held-out store (the corpus's first ones)."""
        return math.ceil(self.heldout_tokens / (self.ctx - 1))

    @property
    def train_contexts(self) -> int:
        """Contexts trained on (those after the held-out ones), at most."""
        return max(1, math.ceil((self.tokens - self.heldout_tokens) / (self.ctx - 1)))


class RowFilter:
    """Which live rows are ordinary, by the rule of data/ordinary.py with the held-out store's numbers."""

    def __init__(self, special_ids: list[int], outlier_norm: float, dtype: str):
        self.special = np.asarray(special_ids, dtype=np.int64)
        self.outlier_norm, self.dtype = outlier_norm, np.dtype(dtype)

    def __call__(self, x: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """The ordinary rows of x [rows, d] (float32 in, self.dtype out); tokens [rows]."""
        with np.errstate(over="ignore"):  # overflow of the dtype is one of the things dropped
            y = x.astype(self.dtype)
        n = np.linalg.norm(y.astype(np.float64), axis=1)
        return y[np.isfinite(n) & ordinary_mask(n, np.isin(tokens, self.special), self.outlier_norm)]


class LiveStream:
    """batch(step, lo, hi) -> normalised float32 rows, as BatchStream's, from a live model.

    rows_of(contexts) -> (acts float32 [rows, d], tokens [rows]) runs the model (positions >= 1);
    contexts(start) iterates the packed training contexts from index `start` (0 = the first one
    after the held-out store). Steps must be asked for in order from a start set by seek()
    (the Prefetcher does); position(step) is what a checkpoint saves.
    """

    def __init__(self, rows_of, contexts, src: StreamSource, keep: RowFilter, batch_size: int, seed: int,
                 scale: float, d: int):
        self.rows_of, self.contexts, self.keep = rows_of, contexts, keep
        self.B, self.seed, self.scale, self.d = batch_size, seed, scale, d
        self.ctx = src.ctx
        self.per_chunk = max(1, src.buffer_rows // (src.ctx - 1))
        self.n_chunks = -(-src.train_contexts // self.per_chunk)
        self.n_contexts = src.train_contexts
        self._ctx_iter: tuple[int, object] | None = None  # (next context index, iterator)
        self._halves: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._window: tuple[int, torch.Tensor] | None = None
        self._ahead: tuple[int, Future] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pos: dict[int, tuple[int, int]] = {0: (0, 0)}
        self._end_row: int | None = None  # no window starting at or past this row is read ahead
        self._lock = threading.Lock()
        self._closing = threading.Event()

    # ---- chunks and windows ---------------------------------------------------------------
    def _chunk_contexts(self, g: int) -> list:
        """The contexts of chunk g (the corpus restarts after the last chunk)."""
        a = (g % self.n_chunks) * self.per_chunk
        b = min(self.n_contexts, a + self.per_chunk)
        if self._ctx_iter is None or self._ctx_iter[0] != a:
            self._ctx_iter = (a, self.contexts(a))
        it = self._ctx_iter[1]
        out = list(itertools.islice(it, b - a))
        if len(out) < b - a:
            from ..config import UserError

            have = (a + len(out)) * (self.ctx - 1)
            raise UserError(f"the corpus ran out after about {have} training tokens; use a smaller --tokens")
        self._ctx_iter = (b, it) if b < self.n_contexts else None
        return out

    def _halves_of(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunk c's ordinary rows (c counts on over passes), permuted, as (first half, second half)."""
        if c not in self._halves:
            contexts = self._chunk_contexts(c)
            x = self._rows(contexts)
            x = torch.from_numpy(x)[torch.from_numpy(_rng(self.seed, 1, c).permutation(len(x)))]
            h = len(x) // 2
            self._halves = {k: v for k, v in self._halves.items() if k >= c - 1}  # c-1's second half is in use
            self._halves[c] = (x[:h], x[h:])
        return self._halves[c]

    def _rows(self, contexts: list) -> np.ndarray:
        """The ordinary rows of the contexts, PIECE contexts per forward call (so closing is quick)."""
        out = [np.zeros((0, self.d), self.keep.dtype)]
        for k in range(0, len(contexts), PIECE):
            if self._closing.is_set():
                raise _Closed()
            out.append(self.keep(*self.rows_of(contexts[k:k + PIECE])))
        return np.concatenate(out)

    def _load(self, g: int) -> torch.Tensor:
        """Window g, k-th of its pass: chunk k-1's second half and chunk k's first half, permuted."""
        p, k = divmod(g, self.n_chunks + 1)
        c = p * self.n_chunks + k
        parts = ([self._halves_of(c - 1)[1]] if k else []) + ([self._halves_of(c)[0]] if k < self.n_chunks else [])
        x = torch.cat(parts)  # may be empty (a chunk of special tokens only): batch() moves on
        return x[torch.from_numpy(_rng(self.seed, 2, g).permutation(len(x)))]

    def _get_window(self, g: int, start_row: int) -> torch.Tensor:
        """Window g, which starts at row start_row of the run; the next one (starting len(window)
        rows later) is read ahead unless that is past the end."""
        if self._window is None or self._window[0] != g:
            if self._ahead is not None and self._ahead[0] == g:
                x = self._ahead[1].result()
            else:
                if self._ahead is not None:
                    self._ahead[1].result()  # let it finish: it shares the chunk cache
                x = self._load(g)
            self._ahead = None
            self._window = (g, x)
            if self._pool is not None and (self._end_row is None or start_row + len(x) < self._end_row):
                self._ahead = (g + 1, self._pool.submit(self._load, g + 1))
        return self._window[1]

    # ---- the BatchStream interface -------------------------------------------------------
    def read_ahead(self, end_step: int | None = None) -> None:
        """From now on, compute the next window in a background thread, unless it would start at
        or past the batch of end_step (a run's last window costs no forward passes it never uses)."""
        self._end_row = None if end_step is None else end_step * self.B
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="hsae-live")

    def stop_soon(self) -> None:
        """Make a window being computed give up at its next piece (a run ending or stopped does
        not wait for a chunk's forward passes); close() then returns at once."""
        self._closing.set()

    def close(self) -> None:
        """Stop the background thread (batch() keeps working, serially)."""
        self._closing.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._ahead = None
        self._closing.clear()

    def seek(self, step: int, window: int, offset: int) -> None:
        """Continue at `step`, whose batch starts at row `offset` of window `window`."""
        with self._lock:
            self._pos = {step: (window, offset)}

    def position(self, step: int) -> tuple[int, int]:
        """(window, offset) where the batch of `step` starts (step must have been reached)."""
        with self._lock:
            return self._pos[step]

    def batch(self, step: int, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """Rows [lo, hi) of the step's batch, normalised float32."""
        with self._lock:
            if step not in self._pos:
                raise ValueError(f"live stream: step {step} asked for out of order")
            g, off = self._pos[step]
        need, out, empty = self.B, [], 0
        while need:
            w = self._get_window(g, step * self.B + (self.B - need) - off)
            empty = empty + 1 if len(w) == 0 else 0
            if empty > self.n_chunks:  # a whole pass of windows without one row
                from ..config import UserError

                raise UserError("the live stream has no ordinary rows (every row is a special token or massive)")
            take = min(need, len(w) - off)
            out.append(w[off:off + take])
            need -= take
            g, off = (g + 1, 0) if off + take == len(w) else (g, off + take)
        with self._lock:
            self._pos[step + 1] = (g, off)
            for s in [s for s in self._pos if s < step - 64]:  # a checkpoint asks for a recent step
                del self._pos[s]
        x = (out[0] if len(out) == 1 else torch.cat(out))[lo:hi]
        return x.to(torch.float32, copy=True).mul_(self.scale)


LIVE_GPU_BATCH = 64  # contexts per forward pass on a GPU (the training step needs the rest of its memory)


def open_live(lm, tok, src: StreamSource, heldout_dir, batch_size: int, seed: int, progress: bool = True) -> LiveStream:
    """Write (or finish) the held-out store from the corpus's first contexts, then return the live
    stream of the contexts after them, normalised and filtered with the held-out store's numbers."""
    from pathlib import Path

    from .collect import CPU_BATCH, collect_with, contexts_of, shard_rows_of
    from .store import MANIFEST, Store

    heldout_dir = Path(heldout_dir)
    fwd = CPU_BATCH if lm.device.type == "cpu" else LIVE_GPU_BATCH
    if not (heldout_dir / MANIFEST).is_file():
        collect_with(lm, tok, src.model, src.layer, src.corpus, src.heldout_tokens, heldout_dir, src.ctx, fwd,
                     src.seed, src.dtype, progress=progress, heldout=True)
    held = Store(heldout_dir)
    keep = RowFilter(held.meta["source"].get("special_ids", []), held.excluded["outlier_norm"], src.dtype)
    d = held.d

    def rows_of(contexts):
        return shard_rows_of(lm, src.layer, contexts, fwd, d)[:2]

    def contexts(start):
        return itertools.islice(contexts_of(tok, src.corpus, src.ctx, src.seed), src.heldout_contexts + start, None)

    return LiveStream(rows_of, contexts, src, keep, batch_size, seed, held.scale, d)
