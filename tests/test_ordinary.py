"""Special tokens and massive activations stay in the store but out of training and metrics."""

import json

import numpy as np
import pytest
import torch

import hsae.data.batches as batches_mod
from hsae.data import BatchStream, Store
from hsae.data.ordinary import OUTLIER_FACTOR

from tiny import build_tiny, collect_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny"))


def _planted(tmp_path, rows=6000, d=8, every=97):
    """A matrix whose every `every`-th row is a massive activation (50x the others' norm)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, d)).astype(np.float32)
    big = np.arange(0, rows, every)
    x[big] *= 50
    np.save(tmp_path / "x.npy", x)
    return Store(tmp_path / "x.npy"), big


def test_massive_rows_are_excluded_and_do_not_set_the_scale(tmp_path):
    s, big = _planted(tmp_path)
    keep = s.ordinary
    assert not keep[big].any() and keep.sum() == s.rows - len(big)
    assert s.excluded["outlier"] == len(big) and s.excluded["special"] == 0
    # the scale comes from ordinary rows: they have mean norm sqrt(d), not a fraction of it
    ordinary = s.batch(0, s.rows)[torch.from_numpy(keep)]
    assert ordinary.norm(dim=1).mean().item() == pytest.approx(np.sqrt(8), rel=0.02)
    assert s.excluded["outlier_factor"] == OUTLIER_FACTOR


def test_batches_draw_only_kept_rows_each_once_per_epoch(tmp_path, monkeypatch):
    monkeypatch.setattr(batches_mod, "BLOCK_ROWS", 256)
    s, big = _planted(tmp_path)
    rows = range(0, 5000)
    keep = s.ordinary[:5000]
    stream = BatchStream(s, rows, 100, seed=1, keep=keep)
    n = int(keep.sum())
    seen = torch.cat([stream.batch(i) for i in range(n // 100)])
    allx = s.batch(0, 5000)
    # every drawn row is a kept row, and no kept row is drawn twice within the epoch
    match = torch.cdist(seen, allx).argmin(1).numpy()
    assert keep[match].all() and len(set(match.tolist())) == len(match)
    assert stream.n == n


def test_collected_store_records_and_excludes_special_tokens(tiny, tmp_path):
    store = collect_tiny(tiny, out="s")
    m = json.loads((store / "manifest.json").read_text())
    eos = 2  # the tiny tokenizer: [UNK]=0, <s>=1, </s>=2
    assert eos in m["source"]["special_ids"]
    s = Store(store)
    toks = s.read_extra("tokens", 0, s.rows)
    assert (toks == eos).sum() > 0  # documents end inside contexts
    assert m["excluded"]["special"] == int(np.isin(toks, m["source"]["special_ids"]).sum())
    assert not s.ordinary[toks == eos].any()
    assert m["excluded"]["ordinary"] == int(s.ordinary.sum())


def test_training_never_sees_an_excluded_row(tiny, tmp_path):
    from hsae.config import TrainConfig
    from hsae.train.trainer import Trainer

    s = Store(collect_tiny(tiny, out="s2"))
    tr = Trainer(TrainConfig(levels=[4, 8], l0=[2.0], steps=10, batch_size=64), s, tmp_path / "run")
    try:
        train_rows = tr.stream.rows
        allx = s.batch(train_rows.start, train_rows.stop)
        keep = s.ordinary[train_rows.start:train_rows.stop]
        for step in range(5):
            idx = torch.cdist(tr.stream.batch(step), allx).argmin(1).numpy()
            assert keep[idx].all()
    finally:
        tr.batches.close()


def test_collected_store_keeps_its_classification_and_checks_it(tiny, tmp_path):
    from hsae.config import UserError
    from hsae.data.ordinary import FILE, norms, outlier_threshold, special_rows

    path = collect_tiny(tiny, out="s3")
    s = Store(path)
    assert (path / FILE).is_file() and s.meta["excluded"]["file"] == FILE
    # what was saved equals a fresh classification of the rows
    sp = special_rows(s)
    n = norms(s)
    fresh = ~(sp | (n > outlier_threshold(n, sp)))
    assert np.array_equal(s.ordinary, fresh)
    (path / FILE).write_bytes(b"garbage")
    with pytest.raises(UserError, match="checksum"):
        Store(path).ordinary
