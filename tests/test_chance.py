"""Chance level of the hierarchy metrics: random forests with the model's families."""

import pytest
import torch

from hsae.eval import evaluate
from hsae.eval.chance import chance_placements, draw_placements, families, forest_parents
from hsae.model import HSAE

PARENTS, DEAD, KIDS = 8, 3, 2  # 8 firing parents with 2 children each, 3 parents that never fire


def _planted() -> tuple[HSAE, torch.Tensor]:
    """Child c fires exactly on the rows e_c, its parent c // KIDS exactly on its children's rows.

    Level 0: PARENTS + DEAD features; level 1: PARENTS * KIDS children plus one orphan (the
    last) that fires on its own rows. The true forest: P(p|c) = 1, Hamming 0."""
    n_kids = PARENTS * KIDS + 1
    m = HSAE(n_kids, [PARENTS + DEAD, n_kids], threshold_init=0.5)
    with torch.no_grad():
        for lv in m.levels:
            lv.W_enc.zero_()
            lv.b_enc.zero_()
        m.levels[1].W_enc.copy_(torch.eye(n_kids))  # child c reads its own coordinate
        for c in range(PARENTS * KIDS):
            m.levels[0].W_enc[c, c // KIDS] = 1.0  # parent p reads its children's coordinates
    m.set_parent(1, torch.tensor([c // KIDS for c in range(PARENTS * KIDS)] + [-1]))
    rows = torch.eye(n_kids).repeat_interleave(torch.arange(1, n_kids + 1), dim=0)  # child c on c + 1 rows
    return m, torch.cat([rows, torch.zeros(7, n_kids)])  # plus rows where nothing fires


def _random_model(seed: int = 0) -> tuple[HSAE, torch.Tensor]:
    """A random 3-level model whose features fire on some of 600 random rows (a few never), no forest yet."""
    torch.manual_seed(seed)
    m = HSAE(8, [10, 20, 40], threshold_init=1.0, seed=seed)
    with torch.no_grad():
        m.levels[0].b_enc[:3] = -1e3  # dead parents
        m.levels[1].b_enc[:5] = -1e3
    return m, torch.randn(600, 8)


def _eligible(m: HSAE, x: torch.Tensor) -> list[torch.Tensor]:
    """Per parent level: which features fire at least once on x."""
    with torch.no_grad():
        return [(a > 0).any(0) for a in m.encode(x)[:-1]]


def test_planted_forest_is_perfect_while_chance_is_far_from_it():
    m, x = _planted()
    h = evaluate(m, [x[:50], x[50:]], chance_draws=8)["hierarchy"]
    assert h["p_parent_given_child"] == pytest.approx(1.0) and h["hamming"] == 0.0
    ch = h["chance"]
    assert ch["draws"] == 8 and len(ch["hamming_per_level"]) == 1
    # a family under another firing parent: P(p|c) = 0 and two mismatches on each of its rows
    # (its new parent is off, its old one on); under its own parent: 1 and none (1/8 per family)
    assert ch["p_parent_given_child"] < 0.5 and ch["hamming"] > 1.0
    assert ch["hamming_std"] > 0 and ch["hamming"] == pytest.approx(ch["hamming_per_level"][0])


def test_chance_forest_keeps_family_sizes_and_uses_firing_parents_only():
    torch.manual_seed(1)
    parent = torch.tensor([0, 0, 0, 2, 2, -1, 5, 5, 5, 5, 5, 7, -1, 9])  # families of 3, 2, 5, 1, 1
    eligible = torch.zeros(12, dtype=torch.bool)
    eligible[[1, 2, 3, 4, 6, 8, 10, 11]] = True  # the model's own parents 0, 5, 7, 9 never fire
    fam = {tuple(sorted(torch.nonzero(parent == p).squeeze(1).tolist())) for p in families(parent)[0].tolist()}
    for place in draw_placements(len(fam), eligible, 20, torch.Generator().manual_seed(0)):
        new = forest_parents(parent, place)
        assert torch.equal(new < 0, parent < 0)  # orphans stay orphans
        assert bool(eligible[new[new >= 0]].all()) and len(set(place.tolist())) == len(fam)
        assert {tuple(sorted(torch.nonzero(new == p).squeeze(1).tolist())) for p in place.tolist()} == fam


def test_more_families_than_firing_parents_fill_every_firing_one_first():
    eligible = torch.tensor([True, False, True, False, False, False])
    for place in draw_placements(4, eligible, 10, torch.Generator().manual_seed(0)):
        assert set(place[:2].tolist()) == {0, 2} and len(set(place.tolist())) == 4


def test_evaluate_never_moves_a_family_to_a_dead_parent():
    # one family whose own parent is the only firing feature of its level: every chance forest is the model's own
    m, x = _planted()
    with torch.no_grad():
        m.levels[0].W_enc[:, 1:] = 0.0
    m.set_parent(1, torch.tensor([0] * KIDS + [-1] * (PARENTS * KIDS + 1 - KIDS)))
    h = evaluate(m, [x], chance_draws=4)["hierarchy"]
    assert h["chance"]["hamming"] == pytest.approx(h["hamming"]) and h["chance"]["hamming_std"] == 0.0
    assert h["chance"]["p_child_given_parent"] == pytest.approx(h["p_child_given_parent"])


def test_chance_scores_are_the_metrics_of_the_drawn_forests():
    m, x = _random_model()
    for l in (1, 2):
        m.set_parent(l, torch.randint(-1, m.sizes[l - 1], (m.sizes[l],)))
    ch = evaluate(m, lambda: iter([x[:250], x[250:]]), chance_draws=3, chance_seed=7)["hierarchy"]["chance"]
    parents = [m.parent(l).clone() for l in (1, 2)]
    draws = chance_placements(parents, _eligible(m, x), 3, 7)
    scores = []
    for k in range(3):  # the model itself, rewired to the k-th chance forest
        for l in (1, 2):
            m.set_parent(l, forest_parents(parents[l - 1], draws[l - 1][k]))
        scores.append(evaluate(m, [x], chance_draws=0)["hierarchy"])
    for key in ("hamming", "p_parent_given_child", "p_child_given_parent"):
        vals = torch.tensor([s[key] for s in scores], dtype=torch.float64)
        assert ch[key] == pytest.approx(float(vals.mean())) and ch[f"{key}_std"] == pytest.approx(float(vals.std()))


def test_chance_is_deterministic_for_a_seed():
    m, x = _planted()
    a, b, c = (evaluate(m, [x], chance_draws=5, chance_seed=s)["hierarchy"]["chance"] for s in (3, 3, 4))
    assert a == b and a != c
    assert "chance" not in evaluate(m, [x], chance_draws=0)["hierarchy"]


def test_one_shot_iterator_gets_no_chance_level_but_the_same_metrics():
    m, x = _planted()
    with pytest.warns(UserWarning, match="one-shot"):
        once = evaluate(m, iter([x]))
    full = evaluate(m, [x])
    assert "chance" not in once["hierarchy"]
    assert once["hierarchy"] == {k: v for k, v in full["hierarchy"].items() if k != "chance"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_random_forest_scores_at_its_chance_level(seed):
    m, x = _random_model(seed)
    parents = [torch.randint(-1, m.sizes[l - 1], (m.sizes[l],)) for l in (1, 2)]
    for l, (p, place) in enumerate(zip(parents, chance_placements(parents, _eligible(m, x), 1, 100 + seed)), 1):
        m.set_parent(l, forest_parents(p, place[0]))  # the same kind of random forest the chance level draws
    h = evaluate(m, [x], chance_draws=20)["hierarchy"]
    for key in ("hamming", "p_parent_given_child", "p_child_given_parent"):
        assert abs(h[key] - h["chance"][key]) < 3 * h["chance"][f"{key}_std"]
