"""Activation stores and the batch stream."""

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import hsae.data.batches as batches_mod
from hsae.config import UserError
from hsae.data import BatchStream, Store, StoreWriter


def _store(tmp_path, rows=(700, 500, 300), d=5):
    rng = np.random.default_rng(0)
    w = StoreWriter(tmp_path / "s", d)
    data = [rng.standard_normal((r, d)).astype(np.float32) for r in rows]
    for x in data:
        w.write(x)
    w.finish()
    return Store(tmp_path / "s"), np.concatenate(data)


def test_store_reads_across_shards_and_normalises(tmp_path):
    s, X = _store(tmp_path)
    assert s.rows == 1500 and s.d == 5
    assert np.array_equal(s.read(650, 1250), X[650:1250])
    x = s.batch(0, 1500)
    assert x.norm(dim=1).mean().item() == pytest.approx(5 ** 0.5, rel=1e-4)
    train, held = s.split(0.1)
    assert (train.stop, held.start, held.stop) == (1350, 1350, 1500)


@pytest.mark.parametrize("kind", ["npy", "safetensors"])
def test_single_matrix_files(tmp_path, kind):
    X = np.random.default_rng(1).standard_normal((100, 7)).astype(np.float32)
    p = tmp_path / f"x.{kind}"
    np.save(p, X) if kind == "npy" else save_file({"whatever": X}, str(p))
    s = Store(p)
    assert (s.rows, s.d) == (100, 7)
    assert np.array_equal(s.read(10, 20), X[10:20])
    X[3, 2] = np.nan
    X[50, 0] = np.inf
    np.save(p, X) if kind == "npy" else save_file({"whatever": X}, str(p))
    assert Store(p).count_nonfinite() == 2


def test_corrupt_shard_names_the_shard(tmp_path):
    _store(tmp_path)
    shard = tmp_path / "s" / "shard_00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(UserError, match="shard_00001"):
        Store(tmp_path / "s")


def test_writer_refuses_nonfinite(tmp_path):
    w = StoreWriter(tmp_path / "s", 3)
    with pytest.raises(ValueError):
        w.write(np.array([[0.0, np.nan, 1.0]], np.float32))


def test_batches_are_a_function_of_the_step_and_cover_each_epoch(tmp_path, monkeypatch):
    monkeypatch.setattr(batches_mod, "BLOCK_ROWS", 64)
    monkeypatch.setattr(batches_mod, "WINDOW_BYTES", 64 * 5 * 4 * 3)  # 3 blocks per window
    s, X = _store(tmp_path)
    X = torch.from_numpy(X) * s.scale
    rows = range(0, 1300)
    a, b = BatchStream(s, rows, 100, seed=3), BatchStream(s, rows, 100, seed=3)
    first_epoch = torch.cat([a.batch(i) for i in range(13)])
    # every training row exactly once per epoch, never a held-out one
    key = lambda t: sorted(map(tuple, t.numpy().round(5).tolist()))
    assert key(first_epoch) == key(X[:1300])
    assert torch.equal(b.batch(7), a.batch(7))  # random access equals sequential
    assert not torch.equal(a.batch(13), a.batch(0))  # the next epoch is reshuffled
    assert not torch.equal(BatchStream(s, rows, 100, seed=4).batch(0), a.batch(0))
