"""The WordNet taxonomy check on Debian's real WordNet files, and on planted forests."""

import pytest
import torch

from hsae.eval.wordnet import WORDNET_DIR, common_nouns, read_taxonomy, wordnet_eval

pytestmark = pytest.mark.skipif(not (WORDNET_DIR / "data.noun").is_file(), reason="wordnet-base is not installed")


@pytest.fixture(scope="module")
def tax():
    return read_taxonomy()


@pytest.fixture(scope="module")
def nouns():
    return common_nouns(n=1500)


def _syn(tax, lemma):
    return next(s for s, ws in tax.words.items() if ws[0] == lemma and tax.depth(s) > 3)


def test_the_real_taxonomy_is_read_whole(tax, nouns):
    assert len(tax.words) == 82115  # WordNet 3.0's noun synsets
    dog = dict(common_nouns(n=3000))["dog"]
    names = {tax.name(a) for a in tax.ancestors(dog)}
    assert {"entity", "animal", "mammal", "carnivore", "canine", "dog"} <= names
    assert tax.depth(min(tax.ancestors(dog), key=tax.depth)) == 0
    words = [w for w, _ in nouns]
    assert len(set(words)) == 1500 and {"person", "year", "people"} <= set(words[:50])


def _planted(tax, nouns):
    """Level 0: ten broad synsets; level 1: up to three narrower synsets under each; fires = row under it."""
    rows = [s for _, s in nouns]
    under = lambda S: torch.tensor([S in tax.ancestors(r) for r in rows])  # noqa: E731
    counts = {}
    for r in rows:
        for a in tax.ancestors(r):
            counts[a] = counts.get(a, 0) + 1
    big = [s for s, c in counts.items() if c >= 15]
    level0 = sorted((s for s in big if tax.depth(s) in (4, 5)), key=lambda s: -counts[s])[:10]
    level1, parent = [], []
    for i, p in enumerate(level0):
        kids = [s for s in big if s != p and p in tax.ancestors(s) and counts[s] < counts[p] - 3]
        for s in sorted(kids, key=lambda s: (-counts[s], s))[:3]:
            level1.append(s)
            parent.append(i)
    fires = [torch.stack([under(s) for s in level0], 1), torch.stack([under(s) for s in level1], 1)]
    return fires, [torch.tensor(parent)], rows, level0, level1


def test_features_built_from_subtrees_are_labelled_with_them_and_their_edges_are_consistent(tax, nouns):
    fires, parents, rows, level0, level1 = _planted(tax, nouns)
    out = wordnet_eval(fires, parents, rows, tax, chance_draws=5, seed=0)
    assert [lab[0] for lab in out["labels"][0]] == level0  # each feature's label is its own synset
    assert out["labelled_edges"] == len(level1) >= 15
    assert out["consistent_fraction"] == 1.0 and out["equal_fraction"] == 0.0
    assert out["chance_consistent_fraction"] < 0.5
    assert out["levels"][1]["mean_depth"] > out["levels"][0]["mean_depth"]  # children are deeper


def test_a_shuffled_forest_scores_near_chance(tax, nouns):
    fires, parents, rows, _, _ = _planted(tax, nouns)
    g = torch.Generator().manual_seed(1)
    shuffled = [p[torch.randperm(len(p), generator=g)] for p in parents]
    real = wordnet_eval(fires, parents, rows, tax, chance_draws=20, seed=0)
    out = wordnet_eval(fires, shuffled, rows, tax, chance_draws=20, seed=0)
    assert out["consistent_fraction"] < real["consistent_fraction"] - 0.4
    assert abs(out["consistent_fraction"] - out["chance_consistent_fraction"]) < 0.2


def test_a_feature_firing_at_random_gets_no_label(tax, nouns):
    rows = [s for _, s in nouns]
    g = torch.Generator().manual_seed(0)
    fires = [torch.rand(len(rows), 4, generator=g) < 0.05, torch.rand(len(rows), 8, generator=g) < 0.05]
    out = wordnet_eval(fires, [torch.zeros(8, dtype=torch.long)], rows, tax, chance_draws=2)
    # a random 5% of rows: the best synset is a broad one at low F1, under MIN_F1 or at the root's level
    assert out["labelled_edges"] <= 8
    assert all(lab is None or tax.depth(lab[0]) <= 3 for level in out["labels"] for lab in level)


def test_the_check_is_in_the_tables_and_the_report_plot(tax, nouns, tmp_path):
    from hsae.eval import figures
    from hsae.eval.report import _level_tables

    fires, parents, rows, _, _ = _planted(tax, nouns)
    wn = wordnet_eval(fires, parents, rows, tax, chance_draws=3)
    ev = {"levels": [{"n_features": f.shape[1]} for f in fires], "wordnet": wn}
    text = "\n".join(_level_tables({"planted": ev}))
    assert "WordNet taxonomy" in text and f"{wn['consistent_fraction']:.3f}" in text
    png = figures.semantic_plot({"planted": ev}, tmp_path / "s.png")
    assert png.stat().st_size > 5000


def test_runs_on_one_store_share_the_models_pass_over_the_nouns(tmp_path):
    """`hsae ablate` evaluates several runs of one store: the model reads the nouns once, and each
    run's WordNet result is still its own."""
    from hsae.eval import evaluate_run
    from hsae.eval.splice import cached_pass
    from tiny import build_tiny, collect_tiny, train_tiny

    build_tiny(tmp_path, docs=200)
    store = collect_tiny(tmp_path, 1, 1500, "acts")
    runs = [train_tiny(store, tmp_path / f"r{i}", "8,16", "2", 128, "--seed", str(i)) for i in range(2)]
    cached_pass.cache_clear()
    evs = [evaluate_run(r, wordnet=True, chance_draws=1) for r in runs]
    info = cached_pass.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    assert all(ev["wordnet"]["words"] > 1000 and len(ev["wordnet"]["levels"]) == 2 for ev in evs)
    assert evs[0]["wordnet"]["labels"] != evs[1]["wordnet"]["labels"] or \
        evs[0]["wordnet"]["edge_status"] != evs[1]["wordnet"]["edge_status"]
