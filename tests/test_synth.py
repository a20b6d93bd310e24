"""The synthetic generator follows its documented story; its ideal features are what it says."""

import numpy as np
import pytest

from hsae.data import Store, load_truth, write_synth
from hsae.data.synth import forest, sample


def test_store_and_truth_layout(tmp_path):
    m = write_synth(tmp_path / "s", d=16, branching=[3, 2, 2], tokens=5000, seed=1)
    assert m["rows"] == 5000 and m["d"] == 16
    t = load_truth(tmp_path / "s" / "truth.safetensors")
    assert [v.shape[0] for v in t["directions"]] == [3, 6, 12]
    assert t["parents"][1].tolist() == [0, 0, 1, 1, 2, 2]
    assert t["parents"][2].tolist() == [i // 2 for i in range(12)]
    s = Store(tmp_path / "s")
    assert s.truth_path.is_file()
    assert s.batch(0, 5000).norm(dim=1).mean().item() == pytest.approx(4.0, rel=1e-3)


def test_ideal_feature_is_the_normalised_expected_contribution():
    # One root that always fires: E[x] is its whole tree's expected contribution.
    f = forest([1, 2, 3], d=32, seed=0)
    x = sample(f, [1, 2, 3], rows=200_000, active=1.0, noise=0.0, rng=np.random.default_rng(0))
    mean = x.mean(0) / np.linalg.norm(x.mean(0))
    assert mean @ f["ideal"][0][0] > 0.999
    # A leaf's ideal direction is its normalised path: root + child + leaf.
    u = f["u"]
    path = u[0][0] + u[1][1] + u[2][4]
    assert f["ideal"][2][4] @ (path / np.linalg.norm(path)) == pytest.approx(1.0)


def test_roots_fire_at_the_requested_rate():
    f = forest([10, 2], d=512, seed=0)
    x = sample(f, [10, 2], rows=20_000, active=3.0, noise=0.0, rng=np.random.default_rng(1))
    proj = x @ f["u"][0].T  # root components dominate their own direction
    assert (proj > 0.45).sum(1).mean() == pytest.approx(3.0, rel=0.1)


# ---- the harder family: every option checked against the generator's own firing records ----

import dataclasses
import math

from hsae.cli import main
from hsae.data.synth import PRESETS, SynthOptions, _draw, root_probs

ALL = SynthOptions(branching_range=(2, 4), p_no_child=0.2, zipf=1.0, child_zipf=0.5, magnitude_sigma=0.4,
                   root_correlation=0.3, root_group=2)


def _old_forest_and_sample(branching, d, seed, rows, active, noise, rng):
    """The regular generator as it was before the options (verbatim), the bit-identity reference."""
    frng = np.random.default_rng(seed)
    sizes = np.cumprod(branching).tolist()
    u = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in (frng.standard_normal((n, d)) for n in sizes)]
    parents = [None] + [np.arange(sizes[l]) // branching[l] for l in range(1, len(sizes))]
    ideal = []
    for l, n in enumerate(sizes):
        vec, idx = u[l].copy(), np.arange(n)
        for a in range(l, 0, -1):
            idx = parents[a][idx]
            vec += u[a - 1][idx]
        weight = 1.0
        for k in range(l + 1, len(sizes)):
            weight /= branching[k]
            anc = np.arange(sizes[k])
            for a in range(k, l, -1):
                anc = parents[a][anc]
            np.add.at(vec, anc, weight * u[k])
        ideal.append(vec / np.linalg.norm(vec, axis=1, keepdims=True))
    x = np.zeros((rows, d))
    r, node = (rng.random((rows, branching[0])) < min(1.0, active / branching[0])).nonzero()
    for l in range(len(branching)):
        if l > 0:
            node = node * branching[l] + rng.integers(0, branching[l], size=node.shape)
        np.add.at(x, r, rng.uniform(0.5, 1.5, size=node.shape)[:, None] * u[l][node])
    x += rng.standard_normal((rows, d)) * (noise / math.sqrt(d))
    return ideal, parents, x.astype(np.float32)


@pytest.mark.parametrize("options", [None, SynthOptions(zipf=0.0, p_no_child=0.0, root_correlation=0.0)])
def test_options_off_is_bit_identical_to_the_regular_generator(options):
    ideal, parents, x_old = _old_forest_and_sample([3, 2, 4], 16, 1, 3000, 2.0, 0.1, np.random.default_rng(5))
    f = forest([3, 2, 4], d=16, seed=1, options=options)
    x = sample(f, [3, 2, 4], rows=3000, active=2.0, noise=0.1, rng=np.random.default_rng(5))
    assert np.array_equal(x, x_old)
    assert all(np.array_equal(a, b) for a, b in zip(f["ideal"], ideal))
    assert all(np.array_equal(a, b) for a, b in zip(f["parents"][1:], parents[1:]))


def test_variable_branching_counts_lie_in_the_range_and_cover_it(tmp_path):
    f = forest([5, 3, 3], d=8, seed=0, options=SynthOptions(branching_range=(2, 5)))
    counts = np.concatenate(f["counts"])
    assert counts.min() >= 2 and counts.max() <= 5 and set(counts.tolist()) == {2, 3, 4, 5}
    for l in (1, 2):  # siblings contiguous, each node's children counted exactly
        assert np.all(np.diff(f["parents"][l]) >= 0)
        assert np.array_equal(np.bincount(f["parents"][l], minlength=f["sizes"][l - 1]), f["counts"][l - 1])
    assert f["sizes"] == [5, int(f["counts"][0].sum()), int(f["counts"][1].sum())]
    assert forest([5, 3, 3], d=8, seed=1, options=SynthOptions(branching_range=(2, 5)))["sizes"] != f["sizes"]
    m = write_synth(tmp_path / "s", d=8, branching=[5, 3, 3], tokens=1000, options=SynthOptions(branching_range=(2, 5)))
    t = load_truth(tmp_path / "s" / "truth.safetensors")
    assert [v.shape[0] for v in t["directions"]] == m["source"]["sizes"] == f["sizes"]
    assert m["source"]["branching_range"] == [2, 5]


def test_children_are_exclusive_and_stop_at_the_no_child_rate():
    f = forest([6, 4, 4, 4], d=16, seed=2, options=ALL)
    _, rec = _draw(f, 20_000, 3.0, 0.0, np.random.default_rng(0))
    for l in range(len(rec) - 1):
        (r0, n0, _), (r1, n1, _) = rec[l], rec[l + 1]
        key = r1 * f["sizes"][l] + f["parents"][l + 1][n1]
        assert len(np.unique(key)) == len(key)  # never two siblings in one row
        assert np.isin(key, r0 * f["sizes"][l] + n0).all()  # a child fires only under its firing parent
        assert 1 - len(n1) / len(n0) == pytest.approx(0.2, abs=0.01)


def test_child_choice_follows_the_sibling_zipf_weights():
    f = forest([4, 4, 4], d=16, seed=0, options=ALL)
    _, rec = _draw(f, 40_000, 2.0, 0.0, np.random.default_rng(1))
    fired = np.bincount(rec[1][1], minlength=f["sizes"][1])
    got = np.bincount(rec[2][1], minlength=f["sizes"][2]) / fired[f["parents"][2]]
    ok = fired[f["parents"][2]] > 2000
    assert ok.sum() > 10 and np.abs(got - 0.8 * f["q"][2])[ok].max() < 0.03
    assert f["q"][2][0] > f["q"][2][1]  # rank 0 is the most likely child


def test_root_frequencies_follow_zipf_with_active_roots_on_average():
    f = forest([30, 2], d=8, seed=0, options=SynthOptions(zipf=1.0))
    _, rec = _draw(f, 30_000, 3.0, 0.0, np.random.default_rng(2))
    freq = np.bincount(rec[0][1], minlength=30) / 30_000
    slope = np.polyfit(np.log(np.arange(1, 31)), np.log(freq), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.05)
    assert len(rec[0][1]) / 30_000 == pytest.approx(3.0, rel=0.02)


def test_zipf_clipping_keeps_the_expected_count_and_the_tail_law():
    p = root_probs(5, 3.0, 1.0)  # c / 1 > 1: root 0 is clipped, the rest rescaled
    assert p[0] == 1.0 and p.sum() == pytest.approx(3.0) and p.max() <= 1.0
    assert np.allclose(p[1:] * np.arange(2, 6), p[1] * 2)
    assert np.array_equal(root_probs(5, 7.0, 1.0), np.ones(5))  # active >= b_0: everything always fires
    assert root_probs(20, 3.0, 1.0).sum() == pytest.approx(3.0) and root_probs(20, 3.0, 1.0).max() < 1


def test_lognormal_magnitudes_have_mean_one_and_the_requested_spread():
    f = forest([10, 3], d=8, seed=0, options=SynthOptions(magnitude_sigma=0.4))
    _, rec = _draw(f, 20_000, 3.0, 0.0, np.random.default_rng(3))
    m = np.concatenate([r[2] for r in rec])
    assert m.mean() == pytest.approx(1.0, abs=0.01) and np.log(m).std() == pytest.approx(0.4, abs=0.01)
    _, rec = _draw(forest([10, 3], d=8, seed=0), 2000, 3.0, 0.0, np.random.default_rng(3))
    assert 0.5 <= rec[0][2].min() and rec[0][2].max() <= 1.5  # off: Uniform(0.5, 1.5)


def test_correlated_roots_keep_their_marginals():
    o = SynthOptions(zipf=0.5, root_correlation=0.5, root_group=4)
    f = forest([8, 2], d=8, seed=0, options=o)
    rows = 40_000
    _, rec = _draw(f, rows, 2.0, 0.0, np.random.default_rng(4))
    fire = np.zeros((rows, 8))
    fire[rec[0][0], rec[0][1]] = 1
    p = root_probs(8, 2.0, 0.5)
    assert np.abs(fire.mean(0) - p).max() < 4 * np.sqrt(p * (1 - p) / rows).max()
    corr = np.corrcoef(fire.T)
    same = (np.arange(8)[:, None] % 2) == (np.arange(8)[None, :] % 2)  # 2 groups: i mod 2
    off = ~np.eye(8, dtype=bool)
    assert corr[same & off].min() > 0.1  # positive within a group
    assert np.abs(corr[~same]).max() < 0.03  # independent across groups


def _own_tree(f, rec):
    """Per record of every depth: x's part from its own root's tree in its row (other roots removed)."""
    b0, d = f["sizes"][0], f["u"][0].shape[1]
    keys = []
    for l, (r, n, _) in enumerate(rec):
        root = n
        for a in range(l, 0, -1):
            root = f["parents"][a][root]
        keys.append(r * b0 + root)
    uniq, inv = np.unique(np.concatenate(keys), return_inverse=True)
    tree = np.zeros((len(uniq), d))
    np.add.at(tree, inv, np.concatenate([m[:, None] * f["u"][l][n] for l, (_, n, m) in enumerate(rec)]))
    return [tree[np.searchsorted(uniq, k)] for k in keys]


def _empirical_means(f, rec, trees, min_hits=300):
    """Per depth: (nodes fired >= min_hits times, normalised mean of their own-tree part of x)."""
    out = []
    for l, ((_, n, _), t) in enumerate(zip(rec, trees)):
        mean = np.zeros((f["sizes"][l], f["u"][0].shape[1]))
        np.add.at(mean, n, t)
        ok = np.bincount(n, minlength=f["sizes"][l]) >= min_hits
        out.append((ok, mean[ok] / np.linalg.norm(mean[ok], axis=1, keepdims=True)))
    return out


def test_ideal_features_match_the_empirical_tree_means_with_every_option_on():
    f = forest([5, 4, 4], d=32, seed=3, options=ALL)
    _, rec = _draw(f, 60_000, 2.0, 0.0, np.random.default_rng(5))
    emp = _empirical_means(f, rec, _own_tree(f, rec))
    for l, (ok, mean) in enumerate(emp):
        assert (mean * f["ideal"][l][ok]).sum(1).min() > 0.99
    assert sum(ok.sum() for ok, _ in emp) >= 0.6 * sum(f["sizes"])
    # the check has teeth: weights that ignore the stops or the sibling Zipf miss non-leaves 100x more
    for wrong in (dataclasses.replace(ALL, p_no_child=0.0), dataclasses.replace(ALL, child_zipf=0.0)):
        bad = forest([5, 4, 4], d=32, seed=3, options=wrong)["ideal"]
        for l in (0, 1):
            ok, mean = emp[l]
            miss = lambda ideal: (1 - (mean * ideal[l][ok]).sum(1)).mean()  # noqa: E731
            assert miss(f["ideal"]) < 0.1 * miss(bad)


def test_all_options_are_deterministic_from_the_seed():
    f = forest([5, 4, 4], d=16, seed=7, options=ALL)
    a = sample(f, [5, 4, 4], 2000, 2.0, 0.1, np.random.default_rng(1))
    b = sample(forest([5, 4, 4], d=16, seed=7, options=ALL), [5, 4, 4], 2000, 2.0, 0.1, np.random.default_rng(1))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_cli_presets_print_the_real_sizes_and_record_every_option(tmp_path, capsys, preset):
    assert main(["synth", "--out", str(tmp_path / "s"), "--preset", preset, "--tokens", "2000", "--quiet"]) == 0
    m = Store(tmp_path / "s").meta
    sizes = [v.shape[0] for v in load_truth(tmp_path / "s" / "truth.safetensors")["directions"]]
    assert capsys.readouterr().out.strip().endswith("truth level sizes " + ",".join(map(str, sizes)))
    assert m["source"]["sizes"] == sizes and len(sizes) == 3 and 60 <= sizes[-1] <= 150
    recorded = {**m["source"], "d": m["d"]}
    for k, v in PRESETS[preset].items():
        assert recorded[k] == (list(v) if isinstance(v, tuple) else v), k


def test_cli_flags_override_the_preset(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "s"), "--preset", "hard", "--zipf", "0.5", "--magnitude-sigma", "off",
                 "--d", "16", "--tokens", "1000", "--quiet"]) == 0
    src = Store(tmp_path / "s").meta["source"]
    assert (src["zipf"], src["magnitude_sigma"], src["p_no_child"], Store(tmp_path / "s").d) == (0.5, None, 0.2, 16)


@pytest.mark.parametrize("flags", [["--preset", "nope"], ["--branching-range", "4,2"], ["--branching-range", "x"],
                                   ["--p-no-child", "1"], ["--zipf", "-1"], ["--magnitude-sigma", "nan"],
                                   ["--root-correlation", "1.5"], ["--root-group", "0"], ["--active", "0"]])
def test_cli_bad_values_are_one_line_errors(tmp_path, capsys, flags):
    assert main(["synth", "--out", str(tmp_path / "s"), "--tokens", "1000", "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hsae: error:") and "\n" not in err and not (tmp_path / "s").exists()
