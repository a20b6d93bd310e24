"""Splice evaluation on a real (tiny) model: identity SAE -> 1.0, zero SAE -> 0.0, store checks."""

import pytest
import torch

from hsae.data import Store
from hsae.data.models import load_model
from hsae.eval.splice import held_out_contexts, splice_eval, splice_store
from hsae.model import HSAE
from tiny import build_tiny, collect_tiny


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = build_tiny(tmp_path_factory.mktemp("tiny"), train_steps=300)
    return root, Store(collect_tiny(root, 0, 1500, "store", "--shard-rows", "150"))


def identity_sae(d: int, scale: float) -> HSAE:
    """One level of 2d features: relu(x) - relu(-x) = x exactly (thresholds far below any value)."""
    m = HSAE(d, [2 * d])
    lv = m.levels[0]
    eye = torch.eye(d)
    with torch.no_grad():
        lv.W_enc.copy_(torch.cat([eye, -eye], 1))
        lv.W_dec.copy_(torch.cat([eye, -eye], 0))
        lv.b_enc.zero_()
        lv.b_dec.zero_()
        lv.log_threshold.fill_(-60.0)
    return m


def test_identity_sae_recovers_exactly_one_and_zero_sae_zero(setup):
    root, store = setup
    lm, tok = load_model(str(root / "model"))
    _, rows = store.split(0.2)
    ctx, _ = held_out_contexts(store, rows, tok.bos_token_id, 16, 8)
    assert ctx.shape == (8, 16) and (ctx[:, 0] == tok.bos_token_id).all()
    m = identity_sae(store.d, store.scale)
    zero = HSAE(store.d, [4])
    with torch.no_grad():
        zero.levels[0].W_dec.zero_()
        zero.levels[0].b_dec.zero_()
    r = splice_eval(lm, 0, m, store.scale, ctx)
    z = splice_eval(lm, 0, zero, store.scale, ctx)
    assert r["ce_zero_ablation"] > r["ce_clean"] + 0.05  # zeroing the layer must hurt, or the ratio means nothing
    assert r["levels"][0]["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert r["levels"][0]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert z["levels"][0]["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert z["levels"][0]["ce_spliced"] == pytest.approx(z["ce_zero_ablation"], rel=1e-6)


def test_held_out_contexts_rebuild_the_stored_tokens(setup):
    root, store = setup
    _, rows = store.split(0.2)
    ctx, starts = held_out_contexts(store, rows, 1, 16, 100)
    assert min(starts) >= rows.start and len(ctx) == len(starts) > 0
    for c, s in zip(ctx, starts):
        assert (c[1:].numpy() == store.read_extra("tokens", s, s + 15)).all()


def test_splice_store_checks_the_model_reproduces_the_store(setup):
    root, store = setup
    from hsae.config import UserError

    r = splice_store(store, store.split(0.2)[1], identity_sae(store.d, store.scale), 4)
    assert r["levels"][0]["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    store.meta["source"]["layer"] = 1  # as if these rows came from block 1: they do not
    try:
        with pytest.raises(UserError, match="does not reproduce"):
            splice_store(store, store.split(0.2)[1], identity_sae(store.d, store.scale), 4)
    finally:
        store.meta["source"]["layer"] = 0
