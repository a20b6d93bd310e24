"""Shuffled training batches as a pure function of the step, so a resumed run sees the same data.

Each epoch permutes fixed blocks of rows, groups consecutive permuted blocks into windows of
about WINDOW_BYTES, and permutes the rows inside each window. Windows stay in the store's dtype
(16-bit for a collected store: half the memory and copying); a batch becomes float32 and is
normalised only when it is cut from its window. Only one window is in memory
(two while the next is read ahead); its blocks are contiguous reads, so a store much larger
than RAM streams fine. `Prefetcher` computes the batches of the coming steps in a background
thread and reads the next window while the current one is consumed, so training waits on
neither.

Everything here runs in numpy, never in torch: a thread that runs a large torch op starts an
OpenMP team of its own, and once a process has more OpenMP threads than cores, libgomp stops
spinning between parallel regions. Every parallel op of the training thread then pays a
wake-up; on 2 cores that made a whole training step ~25% slower (bench/RESULTS.md).
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from .store import Store

BLOCK_ROWS = 4096
WINDOW_BYTES = 256 << 20
READ_THREADS = min(4, os.cpu_count() or 1)  # blocks of a window read in parallel when reading ahead


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([k & 0xFFFFFFFF for k in keys])


class BatchStream:
    """batch(step) -> [batch_size, d] normalised float32 rows drawn from `rows` of the store.

    keep: bool [len(rows)], the rows that may be drawn (None: all); the others are skipped
    when a window is read, so blocks and windows keep their places in the store."""

    def __init__(self, store: Store, rows: range, batch_size: int, seed: int, keep: np.ndarray | None = None):
        self.store, self.rows, self.B, self.seed, self.keep = store, rows, batch_size, seed, keep
        self.nblocks = -(-len(rows) // BLOCK_ROWS)
        starts = np.arange(self.nblocks) * BLOCK_ROWS
        # rows each block contributes: its length, or its kept rows
        self.block_sizes = (np.minimum(BLOCK_ROWS, len(rows) - starts) if keep is None
                            else np.add.reduceat(keep.astype(np.int64), starts) if len(rows) else starts)
        self.n = int(self.block_sizes.sum())
        if self.n == 0:
            raise ValueError("no rows to draw batches from")
        item = np.dtype(store.meta.get("dtype", "float32")).itemsize if store.path.is_dir() else 4
        self.window_blocks = max(1, WINDOW_BYTES // (store.d * item * BLOCK_ROWS))
        self._epoch_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._window_cache: tuple[tuple[int, int], np.ndarray] | None = None
        self._pool: ThreadPoolExecutor | None = None  # set by read_ahead()
        self._readers: ThreadPoolExecutor | None = None
        self._ahead: tuple[tuple[int, int], Future] | None = None
        self._end_row: int | None = None  # set by read_ahead()

    @property
    def d(self) -> int:
        """Row width."""
        return self.store.d

    @property
    def scale(self) -> float:
        """The normalisation applied to every row."""
        return self.store.scale

    def _epoch(self, e: int):
        """(block order, window start offsets within the epoch) for epoch e."""
        if self._epoch_cache is None or self._epoch_cache[0] != e:
            order = _rng(self.seed, e).permutation(self.nblocks)
            sizes = self.block_sizes[order]
            wsizes = np.add.reduceat(sizes, np.arange(0, self.nblocks, self.window_blocks))
            self._epoch_cache = (e, order, np.concatenate([[0], np.cumsum(wsizes)]))
        return self._epoch_cache[1], self._epoch_cache[2]

    def read_ahead(self, end_step: int | None = None) -> None:
        """From now on, read the window after the one in use in a background thread, unless it
        starts at or past the batch of end_step."""
        self._end_row = None if end_step is None else end_step * self.B
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="hsae-window")
            # reading and converting a block releases the GIL for most of its time
            self._readers = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="hsae-read")

    def close(self) -> None:
        """Stop reading ahead and release its threads (batch() keeps working, serially)."""
        for pool in (self._pool, self._readers):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._readers = self._ahead = None

    def _load(self, e: int, w: int, order: np.ndarray) -> np.ndarray:
        """Read and permute window w of epoch e (block order `order`); touches no cache."""
        blocks = order[w * self.window_blocks:(w + 1) * self.window_blocks]

        def read(b):
            a, z = b * BLOCK_ROWS, min(len(self.rows), (b + 1) * BLOCK_ROWS)
            x = self.store.read(self.rows.start + a, self.rows.start + z, native=True)
            return x if self.keep is None else x[self.keep[a:z]]

        if self._readers is None:
            data = np.concatenate([read(b) for b in blocks])
        else:
            # Shards are checksummed on first read; do it here, once, not in several readers at a time.
            for b in blocks:
                a, z = self.rows.start + b * BLOCK_ROWS, self.rows.start + min(len(self.rows), (b + 1) * BLOCK_ROWS)
                i0, i1 = np.searchsorted(self.store.offsets, [a, z - 1], side="right") - 1
                for i in range(int(i0), int(i1) + 1):
                    self.store.verify(i)
            data = np.concatenate(list(self._readers.map(read, blocks)))
        return data[_rng(self.seed, e, w + 1).permutation(len(data))]

    def _window(self, e: int, w: int) -> np.ndarray:
        """Rows of window w of epoch e, already permuted."""
        if self._window_cache is None or self._window_cache[0] != (e, w):
            if self._ahead is not None and self._ahead[0] == (e, w):
                data = self._ahead[1].result()
            else:
                data = self._load(e, w, self._epoch(e)[0])
            self._ahead = None
            self._window_cache = ((e, w), data)
            starts = self._epoch(e)[1]
            n_windows = len(starts) - 1
            ne, nw = (e, w + 1) if w + 1 < n_windows else (e + 1, 0)
            nrow = e * self.n + int(starts[w + 1])  # the run's row where (ne, nw) starts
            if self._pool is not None and (self._end_row is None or nrow < self._end_row):
                # the next epoch's block order is computed here, so the pool touches no cache
                order = self._epoch(e)[0] if ne == e else _rng(self.seed, ne).permutation(self.nblocks)
                self._ahead = ((ne, nw), self._pool.submit(self._load, ne, nw, order))
        return self._window_cache[1]

    def batch(self, step: int, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """Rows [lo, hi) of the step's batch (a data-parallel rank's part; default all), normalised
        float32; identical for the same (store, rows, batch size, seed, step)."""
        pos, need, out = step * self.B, self.B, []
        while need:
            e, off = divmod(pos, self.n)
            _, starts = self._epoch(e)
            w = int(np.searchsorted(starts, off, side="right")) - 1
            take = min(need, int(starts[w + 1]) - off)
            a = off - int(starts[w])
            out.append(self._window(e, w)[a:a + take])
            pos, need = pos + take, need - take
        x = (out[0] if len(out) == 1 else np.concatenate(out))[lo:hi]
        # a new array (never a view of the window), float32 like torch's x.float() * scale
        return torch.from_numpy(np.multiply(x, np.float32(self.store.scale), dtype=np.float32))


class Prefetcher:
    """Batches of the coming steps, computed in a background thread.

    get(step) returns rows [lo, hi) (this data-parallel rank's part) of stream.batch(step),
    pinned for a fast copy to the GPU when pin=True. Steps are produced in order from the
    first one asked for; asking for another step restarts the thread there. Errors in the
    thread (a corrupt shard) are raised by get(). The stream must not be used by anyone else
    once get() has been called. With `end`, no step from `end` on is prepared (nor a window
    that only such steps would use); get() reads such a step itself.
    """

    def __init__(self, stream: BatchStream, lo: int = 0, hi: int | None = None, depth: int = 4, pin: bool = False,
                 end: int | None = None):
        self.stream, self.lo, self.hi = stream, lo, stream.B if hi is None else hi
        self.depth, self.pin, self.end = max(1, depth), pin, end
        self._next: int | None = None
        self._q: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        stream.read_ahead(end)

    def _work(self, start: int, q: queue.Queue, stop: threading.Event) -> None:
        step = start
        while not stop.is_set() and (self.end is None or step < self.end):
            try:
                x = self.stream.batch(step, self.lo, self.hi)
                item = (step, x.pin_memory() if self.pin else x)
            except BaseException as e:  # handed to get(), which raises it in the training thread
                item = (step, e)
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    pass
            if isinstance(item[1], BaseException):
                return
            step += 1

    def _start(self, step: int) -> None:
        self._stop_thread()
        self._stop = threading.Event()
        self._q = queue.Queue(self.depth)
        self._thread = threading.Thread(target=self._work, args=(step, self._q, self._stop), daemon=True,
                                        name="hsae-batches")
        self._thread.start()
        self._next = step

    def get(self, step: int) -> torch.Tensor:
        """This rank's part of the batch of `step`."""
        if self.end is not None and step >= self.end:  # past the planned steps: read it here
            self._stop_thread()
            self._next = None
            return self.stream.batch(step, self.lo, self.hi)
        if self._next != step:
            self._start(step)
        s, x = self._q.get()
        if isinstance(x, BaseException):
            self._next = None  # the next get() retries from scratch
            raise x
        assert s == step, (s, step)
        self._next = step + 1
        return x

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self._next = None

    def close(self) -> None:
        """Stop the threads (the queued batches are dropped)."""
        stop_soon = getattr(self.stream, "stop_soon", None)  # a live stream: do not finish a window first
        if stop_soon is not None:
            stop_soon()
        self._stop_thread()
        self.stream.close()
