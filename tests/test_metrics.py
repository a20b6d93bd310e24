"""Eval metrics follow their written definitions; tree recovery scores known cases."""

import numpy as np
import pytest
import torch

from hsae.eval import evaluate, tree_recovery
from hsae.model import HSAE


def _brute(model, x):
    """Each definition of hsae.eval.metrics, written out with numpy loops."""
    with torch.no_grad():
        acts = [a.numpy() > 0 for a in model.encode(x)]
        rec = [lv.decode(a).numpy() for lv, a in zip(model.levels, model.encode(x))]
    X = x.numpy()
    tot = ((X - X.mean(0)) ** 2).sum()
    ve = [1 - ((X - r) ** 2).sum() / tot for r in rec]
    ham, pc, cp = [], [], []
    for l in range(1, len(acts)):
        par = model.parent(l).numpy()
        kids = {p: np.where(par == p)[0] for p in set(par.tolist()) if p >= 0}
        ham.append(np.mean([sum(acts[l - 1][b, p] != acts[l][b, k].any() for p, k in kids.items())
                            for b in range(len(X))]))
        for c, p in enumerate(par):
            if p < 0:
                continue
            both = (acts[l][:, c] & acts[l - 1][:, p]).sum()
            if acts[l][:, c].sum():
                pc.append(both / acts[l][:, c].sum())
            if acts[l - 1][:, p].sum():
                cp.append(both / acts[l - 1][:, p].sum())
    return ve, np.mean(ham), np.mean(pc), np.mean(cp), [a.sum(1).mean() for a in acts]


def test_metrics_match_brute_force():
    torch.manual_seed(0)
    m = HSAE(6, [3, 7, 12], threshold_init=0.4)
    for l, n in ((1, 7), (2, 12)):
        m.set_parent(l, torch.randint(-1, m.sizes[l - 1], (n,)))
    x = torch.randn(200, 6)
    ev = evaluate(m, [x[:70], x[70:]])
    ve, ham, pc, cp, l0 = _brute(m, x)
    assert [lv["var_explained"] for lv in ev["levels"]] == pytest.approx(ve, rel=1e-5)
    assert [lv["l0"] for lv in ev["levels"]] == pytest.approx(l0)
    h = ev["hierarchy"]
    assert h["hamming"] == pytest.approx(ham)
    assert h["p_parent_given_child"] == pytest.approx(pc)
    assert h["p_child_given_parent"] == pytest.approx(cp)
    assert h["n_pairs"] == int((m.parent(1) >= 0).sum() + (m.parent(2) >= 0).sum())


def test_tree_recovery_perfect_and_one_wrong_edge():
    torch.manual_seed(0)
    dirs = [torch.nn.functional.normalize(torch.randn(n, 16), dim=1) for n in (3, 6)]
    truth = {"directions": dirs, "parents": [None, torch.tensor([0, 0, 1, 1, 2, 2])]}
    m = HSAE(16, [3, 6])
    perm0, perm1 = torch.randperm(3), torch.randperm(6)  # learned order is arbitrary
    with torch.no_grad():
        m.levels[0].W_dec.copy_(dirs[0][perm0])
        m.levels[1].W_dec.copy_(dirs[1][perm1])
    inv0 = torch.argsort(perm0)
    parent = inv0[truth["parents"][1][perm1]]
    m.set_parent(1, parent)
    r = tree_recovery(m, truth)
    assert r["feature_match"] == pytest.approx(1.0) and r["edge_f1"] == pytest.approx(1.0)
    wrong = parent.clone()
    wrong[0] = (wrong[0] + 1) % 3
    m.set_parent(1, wrong)
    r = tree_recovery(m, truth)
    assert r["edge_precision"] == pytest.approx(5 / 6) and r["edge_recall"] == pytest.approx(5 / 6)
    wrong[1] = -1  # an orphan lowers recall only
    m.set_parent(1, wrong)
    r = tree_recovery(m, truth)
    assert r["edge_precision"] == pytest.approx(4 / 5) and r["edge_recall"] == pytest.approx(4 / 6)


def test_tree_recovery_splits_edge_errors_between_dictionary_and_forest():
    """A wrong link between unrecovered features is the dictionary's error, not the forest's."""
    torch.manual_seed(1)
    dirs = [torch.nn.functional.normalize(torch.randn(n, 32), dim=1) for n in (3, 6)]
    truth = {"directions": dirs, "parents": [None, torch.tensor([0, 0, 1, 1, 2, 2])]}
    m = HSAE(32, [3, 6])
    rows = dirs[1].clone()
    rows[4] = torch.nn.functional.normalize(dirs[1][4] + 1.5 * dirs[1][5], dim=0)  # child 4 merged with 5
    with torch.no_grad():
        m.levels[0].W_dec.copy_(dirs[0])
        m.levels[1].W_dec.copy_(rows)
    parent = truth["parents"][1].clone()
    parent[4] = 0  # the merged feature linked to the wrong parent
    m.set_parent(1, parent)
    r = tree_recovery(m, truth)
    assert r["feature_match_hungarian_per_level"][0] == pytest.approx(1.0)
    assert r["feature_match_hungarian_per_level"][1] < 1.0
    assert r["edge_precision"] == pytest.approx(5 / 6)
    assert r["edges_recoverable"] == pytest.approx(5 / 6)  # child 4 is not recovered
    assert r["edge_precision_recovered"] == pytest.approx(1.0)
    parent[0] = 1  # now a wrong link between two recovered features
    m.set_parent(1, parent)
    r = tree_recovery(m, truth)
    assert r["edge_precision_recovered"] == pytest.approx(4 / 5)
