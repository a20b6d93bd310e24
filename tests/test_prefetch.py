"""The prefetching batch stream returns exactly the plain stream's batches, windows read ahead."""

import os
import threading

import numpy as np
import pytest
import torch

import hsae.data.batches as batches_mod
from hsae.config import UserError
from hsae.data import BatchStream, Store, StoreWriter
from hsae.data.batches import Prefetcher


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(batches_mod, "BLOCK_ROWS", 64)
    monkeypatch.setattr(batches_mod, "WINDOW_BYTES", 64 * 5 * 4 * 3)  # 3 blocks per window
    rng = np.random.default_rng(0)
    w = StoreWriter(tmp_path / "s", 5)
    for r in (700, 500, 300):
        w.write(rng.standard_normal((r, 5)).astype(np.float32))
    w.finish()
    return Store(tmp_path / "s")


def test_prefetched_batches_equal_the_stream(store):
    rows = range(0, 1300)
    plain = BatchStream(store, rows, 100, seed=3)
    fast = Prefetcher(BatchStream(store, rows, 100, seed=3), lo=25, hi=75, depth=3)
    ahead = []
    try:
        # three epochs (every window boundary), then a jump back (the thread restarts there)
        for step in [*range(40), 5, 6, 30]:
            assert torch.equal(fast.get(step), plain.batch(step)[25:75]), step
            ahead.append(fast.stream._ahead is not None)
    finally:
        fast.close()
    assert any(ahead)  # the next window was being read while this one was in use


def test_a_corrupt_shard_is_raised_by_get(store, tmp_path):
    f = tmp_path / "s" / "shard_00001.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-8:] = b"\0" * 8  # same size, wrong content: only the checksum notices
    f.write_bytes(bytes(raw))
    fast = Prefetcher(BatchStream(Store(tmp_path / "s"), range(0, 1300), 100, seed=3))
    try:
        with pytest.raises(UserError, match="shard_00001"):
            for step in range(13):
                fast.get(step)
    finally:
        fast.close()


def test_a_16_bit_store_is_windowed_in_16_bits_and_batched_exactly(tmp_path, monkeypatch):
    """Windows keep the store's float16 (half the memory); each batch equals the rows read as
    float32 and normalised, row for row."""
    monkeypatch.setattr(batches_mod, "BLOCK_ROWS", 64)
    rng = np.random.default_rng(1)
    w = StoreWriter(tmp_path / "h", 6, "float16")
    w.write(rng.standard_normal((900, 6)).astype(np.float16))
    w.finish()
    store = Store(tmp_path / "h")
    s = BatchStream(store, range(0, 900), 50, seed=2)
    seen = []
    for step in range(18):  # one epoch: every row once
        x = s.batch(step)
        assert x.dtype == torch.float32
        seen.append(x)
    assert s._window_cache[1].dtype == np.float16
    got = torch.cat(seen)
    want = store.batch(0, 900)
    # the same multiset of rows (in the stream's order): sort both by their first two columns
    key = lambda t: t[np.lexsort((t[:, 1].numpy(), t[:, 0].numpy()))]  # noqa: E731
    assert torch.equal(key(got), key(want))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts the process's threads in /proc")
def test_the_prefetching_threads_start_no_openmp_workers(tmp_path, monkeypatch):
    """Batches and windows are formed in numpy: a background thread running large torch ops gets
    an OpenMP team of its own, and with more OpenMP threads than cores every parallel op of the
    training thread slows down (bench/RESULTS.md)."""
    monkeypatch.setattr(batches_mod, "BLOCK_ROWS", 1024)
    monkeypatch.setattr(batches_mod, "WINDOW_BYTES", 1024 * 64 * 2 * 2)  # 2 blocks per window
    rng = np.random.default_rng(0)
    w = StoreWriter(tmp_path / "big", 64, "float16")
    w.write(rng.standard_normal((8192, 64)).astype(np.float16))
    w.finish()
    torch.ones(1 << 20).mul_(2)  # the training thread's own team exists before we count

    def native_threads():  # OS threads that are not Python threads: OpenMP (and other) workers
        return len(os.listdir("/proc/self/task")) - threading.active_count()

    before = native_threads()
    fast = Prefetcher(BatchStream(Store(tmp_path / "big"), range(0, 8192), 2048, seed=0), depth=2)
    try:
        for step in range(8):  # two epochs: windows read ahead, batches of 2048 x 64 (> torch's grain)
            fast.get(step)
        during = native_threads()
    finally:
        fast.close()
    assert during == before
