"""Streaming throughput: rows/s the training batch stream delivers from a store on disk.

Writes a float16 store of `--windows` read windows at d=2304 (the paper's), then drops it
from the page cache (posix_fadvise DONTNEED) so reads come from the disk as they would for a
store larger than RAM, and runs the plain and the prefetching stream (Prefetcher: batches
ahead, next window read in the background) over every window once, with a consumer that
"trains" for --step-s seconds per batch (a sleep: it leaves the CPU to the reader, as a GPU
step does). Reported: rows/s and the mean seconds per step spent waiting for data; with
prefetching the wait is ~0 while the reader keeps up. Prints one JSON object.

  python bench/stream.py                   # 2 windows (~270 MB) in a temporary directory
  python bench/stream.py --dir /data/tmp   # on the disk you will train from
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import hsae.data.batches as batches
from hsae.data import BatchStream, Store, StoreWriter
from hsae.data.batches import Prefetcher


def _drop_cache(path: Path) -> None:
    for f in path.glob("*.safetensors"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _run(get, steps: int, step_s: float) -> tuple[float, float]:
    """(seconds in total, seconds waiting for batches) over `steps` simulated training steps."""
    t0, wait = time.perf_counter(), 0.0
    for s in range(steps):
        t = time.perf_counter()
        get(s)
        wait += time.perf_counter() - t
        time.sleep(step_s)
    return time.perf_counter() - t0, wait


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=2304, help="activation dimension")
    p.add_argument("--windows", type=int, default=2, help="read windows in the store")
    p.add_argument("--batch", type=int, default=1024, help="rows per batch")
    p.add_argument("--dir", help="where to write the store (default: a temporary directory)")
    p.add_argument("--step-s", type=float, default=0.02, help="simulated seconds of training per batch")
    a = p.parse_args()
    window_rows = max(1, batches.WINDOW_BYTES // (a.d * 4 * batches.BLOCK_ROWS)) * batches.BLOCK_ROWS
    rows = a.windows * window_rows
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        path = Path(tmp) / "s"
        w = StoreWriter(path, a.d, "float16")
        rng = np.random.default_rng(0)
        for start in range(0, rows, 65536):
            w.write(rng.standard_normal((min(65536, rows - start), a.d), dtype=np.float32).astype(np.float16))
        w.finish()
        steps = rows // a.batch
        out = {"d": a.d, "rows": rows, "store_gib": rows * a.d * 2 / 2**30, "batch": a.batch, "step_s": a.step_s}
        for name, make in [("plain", lambda s: BatchStream(s, range(rows), a.batch, 0).batch),
                           ("prefetch", lambda s: Prefetcher(BatchStream(s, range(rows), a.batch, 0)).get)]:
            _drop_cache(path)
            store = Store(path)
            store._verified.update(range(len(store.shard_rows)))  # time reads, not the one-off checksum
            get = make(store)
            total, wait = _run(get, steps, a.step_s)
            out[name] = {"rows_per_s": steps * a.batch / total, "wait_per_step_s": wait / steps}
            if name == "prefetch":
                get.__self__.close()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
