"""Probe-based edges (Tree SAE's measure) on a planted hierarchy: real edges score high, shuffled ones at chance."""

import torch

from hsae.eval.probe import probe_eval
from hsae.model import HSAE

D, N_P, PER, R = 256, 8, 3, 8000


def _planted():
    """Matched-filter levels over random unit directions; a row has 2 children on, and their parents."""
    g = torch.Generator().manual_seed(1)
    n_c = N_P * PER
    m = HSAE(D, [N_P, n_c], threshold_init=0.5, seed=0)
    U = torch.nn.functional.normalize(torch.randn(N_P + n_c, D, generator=g), dim=1)
    with torch.no_grad():
        for lv, W in zip(m.levels, (U[:N_P], U[N_P:])):
            lv.W_dec.copy_(W)
            lv.W_enc.copy_(W.t())
            lv.b_enc.zero_()
            lv.b_dec.zero_()
    parent = torch.arange(n_c) // PER
    m.set_parent(1, parent)
    child_on = torch.zeros(R, n_c, dtype=torch.bool)
    child_on[torch.arange(R)[:, None], torch.randint(0, n_c, (R, 2), generator=g)] = True
    par_on = (child_on.float() @ torch.nn.functional.one_hot(parent, N_P).float()) > 0
    x = (par_on * (1 + torch.rand(R, N_P, generator=g))) @ U[:N_P] \
        + (child_on * (1 + torch.rand(R, n_c, generator=g))) @ U[N_P:] + 0.02 * torch.randn(R, D, generator=g)
    return m, x, parent


def test_planted_edges_are_hierarchical_and_a_shuffled_forest_is_at_chance():
    m, x, parent = _planted()
    real = probe_eval(m, x, chance_draws=10, seed=0)
    assert real["edges"] == N_P * PER
    assert real["hierarchical_fraction"] > 0.8 and real["chance_hierarchical_fraction"] < real["hierarchical_fraction"] - 0.5
    m.set_parent(1, parent[torch.randperm(len(parent), generator=torch.Generator().manual_seed(3))])
    shuffled = probe_eval(m, x, chance_draws=10, seed=0)
    assert shuffled["hierarchical_fraction"] < real["hierarchical_fraction"] - 0.4
    assert abs(shuffled["hierarchical_fraction"] - shuffled["chance_hierarchical_fraction"]) < 0.2
