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
    co = CoActivation(n_parent=2, n_child=3, alpha=0.0, min_count=1)
    active_p = torch.tensor([[1, 0], [0, 1], [1, 0]], dtype=torch.bool)
    active_c = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=torch.bool)
    co.update(active_p, active_c)
    sim, idx = co.topk()
    assert idx[:2, 0].tolist() == [0, 1] and sim[:2, 0].tolist() == [1.0, 1.0]
    assert assign(sim, idx, "partial", 0.2).tolist() == [0, 1, -1]


def test_coactivation_is_smoothed_and_counts_only_cofirings():
    """A child seen twice does not get P(p|c) = 1 from a coincidence; a child seen often does."""
    g = torch.Generator().manual_seed(0)
    B = 4000
    hub = torch.rand(B, generator=g) < 0.5  # parent 0: fires on half of all rows, unrelated
    true = torch.rand(B, generator=g) < 0.2  # parent 1: the real parent of child 0
    child0 = true & (torch.rand(B, generator=g) < 0.5)
    child1 = torch.zeros(B, dtype=torch.bool)
    child1[torch.nonzero(hub & ~true)[:2, 0]] = True  # fired twice, both times with the hub
    co = CoActivation(n_parent=2, n_child=2, alpha=10.0, min_count=10)
    for a in range(0, B, 1000):  # several batches: counts add up
        co.update(torch.stack([hub, true], 1)[a:a + 1000], torch.stack([child0, child1], 1)[a:a + 1000])
    assert co.both[0, 1] == int(child0.sum()) and co.rows == B
    p = co.estimate()
    assert p[0, 1] > 0.95 and p[0, 0] < 0.6  # the real parent wins over the hub
    assert p[1].isneginf().all()  # below min_count: no candidate at all
    co2 = CoActivation(n_parent=2, n_child=2, alpha=10.0, min_count=1)
    co2.update(torch.stack([hub, true], 1), torch.stack([child0, child1], 1))
    assert co2.estimate()[1, 0] < 0.7  # shrunk towards the hub's base rate 0.5, not 1.0
    co.decay(0.5)
    assert co.rows == B / 2 and torch.allclose(co.estimate()[0], p[0], atol=0.02)


def _planted(true_parent: torch.Tensor) -> HSAE:
    """6 parents and 18 children whose vectors are their true parent's plus noise."""
    torch.manual_seed(0)
    m = HSAE(32, [6, 18])
    with torch.no_grad():
        base = m.levels[0].W_dec
        m.levels[1].W_dec.copy_(base[true_parent] + 0.3 * torch.randn(18, 32) / 32**0.5)
        m.levels[1].W_enc.copy_(m.levels[1].W_dec.t())
        m.levels[0].W_enc.copy_(base.t())
    m.normalize_decoder()
    return m


def test_dead_features_are_never_parents_nor_children():
    true_parent = torch.arange(18) % 6
    m = _planted(true_parent)
    live = [torch.ones(6, dtype=torch.bool), torch.ones(18, dtype=torch.bool)]
    live[0][2] = False  # a dead parent: its children must go elsewhere or be orphans
    live[1][[0, 1]] = False  # dead children: never linked
    stats = update_forest(m, "encoder", "full", live=live)
    par = m.parent(1)
    assert (par[[0, 1]] == -1).all() and not (par == 2).any()
    live_kids = live[1] & (true_parent != 2)
    assert torch.equal(par[live_kids], true_parent[live_kids])
    assert (par[live[1]] >= 0).all()  # full tree: every live child has a live parent
    # the quantile is taken over live children only: 25% of 16, not of 18
    update_forest(m, "encoder", "partial", 0.25, live=live)
    assert int((m.parent(1) >= 0).sum()) == 12
    assert stats[0]["edges"] == 16 and stats[0]["parents"] == 5 and stats[0]["max"] >= 3


def test_csls_breaks_up_a_hub_parent():
    """A parent close to every child (a hub) takes them all under the argmax; CSLS does not."""
    torch.manual_seed(1)
    d, n_p = 64, 8
    P = torch.nn.functional.normalize(torch.randn(n_p, d), dim=1)
    mean = P[1:].mean(0)
    P[0] = torch.nn.functional.normalize(mean, dim=0)  # the hub: the centroid of the others
    true = torch.arange(1, n_p).repeat_interleave(3)
    C = P[true] + 0.9 * torch.randn(true.numel(), d) / d**0.5 + 1.2 * P[0]
    v, i = cosine_topk(C, P, 1)
    assert (i[:, 0] == 0).float().mean() > 0.5  # plain cosine: most children pick the hub
    v, i = cosine_topk(C, P, 1, hub="csls")
    assert (i[:, 0] == true).float().mean() > 0.8


def test_family_stats_report_hubs_and_churn():
    from hsae.model.forest import family_stats

    old = torch.tensor([0, 0, 1, -1, 2, 2])
    new = torch.tensor([0, 0, 0, 0, 2, -1])
    s = family_stats(new, old, n_parent=3)
    assert s["edges"] == 5 and s["parents"] == 2 and s["max"] == 4 and s["mean"] == 2.5
    assert s["churn"] == 0.5  # 3 of the 6 children with a parent before or after changed


def test_pair_counts_sparse_equals_dense():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(64, 10, generator=g) < 0.2
    b = torch.rand(64, 30, generator=g) < 0.1
    dense = b.t().float() @ a.float()
    assert torch.equal(pair_counts(a, b), dense)
    assert torch.equal(pair_counts(a, b, max_pairs=1), dense)  # the dense fall-back path


def test_update_forest_recovers_noisy_children():
    true_parent = torch.randperm(18, generator=torch.Generator().manual_seed(0)) % 6
    m = _planted(true_parent)
    for sim in ("encoder", "decoder"):
        update_forest(m, sim, "full")
        assert torch.equal(m.parent(1), true_parent)
    v, i = cosine_topk(m.levels[1].W_dec, m.levels[0].W_dec, k=2)
    assert v.shape == (18, 2) and (v[:, 0] >= v[:, 1]).all()
