"""Hierarchy assignment: similarities, tree shapes, the orphan quantile."""

import torch

from hsae.model import HSAE, CoActivation, update_forest
from hsae.model.forest import assign, cosine_topk, pair_counts


def test_partial_full_and_binary_shapes():
    sim = torch.tensor([[0.9], [0.8], [0.7], [0.6], [0.5], [0.4], [0.3], [0.2], [0.1], [0.05]])
    idx = torch.tensor([[0], [0], [0], [1], [1], [1], [2], [2], [2], [2]])
    full = assign(sim, idx, "full")
    assert full.tolist() == idx[:, 0].tolist()
    partial = assign(sim, idx, "partial", 0.2)
    assert (partial == -1).sum() == 2 and partial[-2:].tolist() == [-1, -1]  # bottom 20% orphaned
    # binary: second candidates are used when the best parent already has two children
    sim2 = torch.cat([sim, sim - 0.01], 1)
    idx2 = torch.cat([idx, (idx + 1) % 4], 1)
    binary = assign(sim2, idx2, "binary", 0.0)
    assert torch.bincount(binary[binary >= 0]).max() <= 2
    assert binary[2] == 1  # third child of parent 0 falls back to its second choice


def test_never_fired_children_are_orphans_and_skip_the_quantile():
    co = CoActivation(n_parent=2, n_child=3, momentum=0.0)
    active_p = torch.tensor([[1, 0], [0, 1], [1, 0]], dtype=torch.bool)
    active_c = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=torch.bool)
    co.update(active_p, active_c)
    sim, idx = co.topk()
    assert idx[:2, 0].tolist() == [0, 1] and sim[:2, 0].tolist() == [1.0, 1.0]
    assert assign(sim, idx, "partial", 0.2).tolist() == [0, 1, -1]


def test_pair_counts_sparse_equals_dense():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(64, 10, generator=g) < 0.2
    b = torch.rand(64, 30, generator=g) < 0.1
    dense = b.t().float() @ a.float()
    assert torch.equal(pair_counts(a, b), dense)
    assert torch.equal(pair_counts(a, b, max_pairs=1), dense)  # the dense fall-back path


def test_update_forest_recovers_noisy_children():
    torch.manual_seed(0)
    m = HSAE(32, [6, 18])
    true_parent = torch.randperm(18) % 6
    with torch.no_grad():
        base = m.levels[0].W_dec
        m.levels[1].W_dec.copy_(base[true_parent] + 0.3 * torch.randn(18, 32) / 32**0.5)
        m.levels[1].W_enc.copy_(m.levels[1].W_dec.t())
        m.levels[0].W_enc.copy_(base.t())
    m.normalize_decoder()
    for sim in ("encoder", "decoder"):
        update_forest(m, sim, "full")
        assert torch.equal(m.parent(1), true_parent)
    v, i = cosine_topk(m.levels[1].W_dec, m.levels[0].W_dec, k=2)
    assert v.shape == (18, 2) and (v[:, 0] >= v[:, 1]).all()
