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
