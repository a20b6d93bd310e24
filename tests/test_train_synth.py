"""Learning is checked against ground truth: a small known forest, trained in seconds."""

import pytest
import torch

from hsae.cli import main
from hsae.config import TrainConfig
from hsae.eval import evaluate_run
from hsae.train import train


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "synth"
    assert main(["synth", "--out", str(out), "--d", "32", "--branching", "4,3", "--tokens", "60000",
                 "--active", "2", "--quiet"]) == 0
    return out


def _median3(values) -> float:
    """The middle one of three seeds' values."""
    return sorted(values)[1]


def _run(synth, tmp_path, name, **kw):
    cfg = TrainConfig(levels=[4, 12], l0=[2.0], steps=2000, batch_size=512, **kw)
    assert train(cfg, synth, tmp_path / name, progress=False) == 0
    return evaluate_run(tmp_path / name)


@pytest.fixture(scope="module")
def runs(synth, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    return {
        "hsae": _run(synth, tmp, "hsae"),  # the paper's defaults: encoder similarity, partial tree
        "posthoc": _run(synth, tmp, "posthoc", baseline=True),
        "full": _run(synth, tmp, "full", tree="full", similarity="decoder"),
    }


@pytest.mark.parametrize("name", ["hsae", "posthoc", "full"])
def test_controller_reaches_target_l0_on_every_level(runs, name):
    for lv in runs[name]["levels"]:
        assert lv["l0"] == pytest.approx(2.0, rel=0.10)


@pytest.mark.parametrize("name", ["hsae", "posthoc", "full"])
def test_learns_the_true_features(runs, name):
    assert runs[name]["tree_recovery"]["feature_match"] > 0.95


def test_partial_tree_edges_are_precise(runs, synth, tmp_path):
    """At most one wrong edge in a typical run. Of training seeds 0-7, precision 0.89 on six, 0.78
    and 0.67 on the others (level 0's mixed roots, see below); with the paper's update schedule
    (first_update 0) 1.0 once, 0.89 twice, 0.56-0.78 on five. So: the median of three seeds."""
    evs = [runs["hsae"]] + [_run(synth, tmp_path, f"hsae-{s}", seed=s) for s in (1, 2)]
    assert all(12 - 3 <= ev["hierarchy"]["n_pairs"] <= 12 - 2 for ev in evs)  # the bottom 20% (2.4 of 12) orphaned
    assert _median3(ev["tree_recovery"]["edge_precision"] for ev in evs) >= 0.85


def test_full_tree_recovers_the_forest(runs, synth, tmp_path):
    """Level 0 here is 4 features at 50% density. Of training seeds 0-7, edge F1 is 0.92 on three
    and 0.83 on five; with the paper's update schedule (first_update 0) 0.92 on five and
    0.67-0.70 on three, where a level-0 feature ends as a mix of two roots (coupled early, it
    stays one). So: the median of three seeds, none below 0.6."""
    evs = [runs["full"]] + [_run(synth, tmp_path, f"full-{s}", tree="full", similarity="decoder", seed=s)
                            for s in (1, 2)]
    assert all(ev["hierarchy"]["n_pairs"] == 12 for ev in evs)
    assert _median3(ev["tree_recovery"]["edge_f1"] for ev in evs) >= 0.9
    assert min(ev["tree_recovery"]["edge_f1"] for ev in evs) > 0.6
    assert _median3(ev["hierarchy"]["p_parent_given_child"] for ev in evs) > 0.9
    # a parent with 3 equally likely children fires with each about 1/3 of the time
    assert _median3(ev["hierarchy"]["p_child_given_parent"] for ev in evs) == pytest.approx(1 / 3, abs=0.1)


def test_coactivation_similarity_links_parents(synth, tmp_path):
    ev = _run(synth, tmp_path, "coact", tree="full", similarity="coactivation")
    assert ev["hierarchy"]["p_parent_given_child"] > 0.9
    assert ev["tree_recovery"]["edge_precision"] >= 0.75


def test_shuffled_labels_are_not_recovered(synth, tmp_path):
    """The recovery score is not trivially high: a random forest on the same features scores low."""
    from hsae.eval import tree_recovery
    from hsae.data.synth import load_truth
    from hsae.rundir import load_run

    _run(synth, tmp_path, "r", tree="full", similarity="decoder")
    _, model, _ = load_run(tmp_path / "r")
    model.set_parent(1, torch.randperm(12, generator=torch.Generator().manual_seed(0)) % 4)
    tr = tree_recovery(model, load_truth(synth / "truth.safetensors"))
    assert tr["feature_match"] > 0.95 and tr["edge_f1"] < 0.7


def _log(run):
    from hsae.rundir import read_log

    return read_log(run)


def test_l0_holds_within_5_percent_over_the_last_tenth(runs, tmp_path_factory):
    """The controller holds every level's training L0 on target at the end of the run."""
    import json
    from pathlib import Path

    for name in ("hsae", "posthoc"):
        recs = _log(Path(runs[name]["run"]))
        tail = [r["l0"] for r in recs if r["step"] >= 0.9 * 2000]
        for lv in range(2):
            mean = sum(t[lv] for t in tail) / len(tail)
            assert abs(mean / 2.0 - 1) < 0.05, (name, lv, mean)


def test_final_forest_is_one_the_model_trained_under(runs):
    """The last hierarchy update leaves at least one update period of training after it, and
    the saved forest is the one it logged."""
    from pathlib import Path

    recs = _log(Path(runs["hsae"]["run"]))
    updates = [r for r in recs if "forest" in r]
    period, first = 2000 // 10, 1000  # the default first_update: half the run as independent levels
    assert [r["step"] + 1 for r in updates] == list(range(first, 2000 - period + 1, period))
    assert updates[-1]["forest"][0]["edges"] == runs["hsae"]["hierarchy"]["n_pairs"]
    assert all(0 <= r["forest"][0]["churn"] <= 1 and r["forest"][0]["max"] >= 1 for r in updates)


def test_hsae_trains_as_independent_levels_until_its_first_update(runs):
    """Until first_update of the run there is no forest, so no coupling: the HSAE's steps are
    the post-hoc baseline's (same seed), and they part only after the first update."""
    from pathlib import Path

    hsae, post = (_log(Path(runs[n]["run"])) for n in ("hsae", "posthoc"))
    before = [(a["loss"], b["loss"]) for a, b in zip(hsae, post) if a["step"] < 1000]
    after = [(a["loss"], b["loss"]) for a, b in zip(hsae, post) if a["step"] > 1010]
    assert len(before) >= 90 and all(a == pytest.approx(b, rel=1e-6) for a, b in before)
    assert any(a != pytest.approx(b, rel=1e-6) for a, b in after)


@pytest.mark.parametrize("steps,first,expect", [(2000, 0.5, 1000), (2000, 0.0, 200), (2000, 0.99, 1800), (10, 0.5, 5)])
def test_first_update_step(steps, first, expect):
    """At first_update of the run, never before one update period, never in the last one."""
    assert TrainConfig(steps=steps, first_update=first).first_update_step == expect
