"""`hsae ablate` (seven variants, seeds, resumable, table beside the paper), `hsae report`, seed aggregation."""

import json
import statistics

import pytest
from PIL import Image

from hsae.cli import main
from hsae.config import TrainConfig
from hsae.eval.ablation import PAPER_HAMMING, PAPER_VARIANTS, VARIANTS, ablation_table, run_ablation
from hsae.eval.report import aggregate, comparison_table


def _num(cell: str) -> float:
    """The leading number of a table cell such as `0.705 ± 0.010 (0.807)`."""
    return float(cell.split()[0])


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    root = tmp_path_factory.mktemp("abl")
    assert main(["synth", "--out", str(root / "synth"), "--d", "16", "--branching", "3,2", "--tokens", "4000", "--quiet"]) == 0
    args = ["ablate", "--acts", str(root / "synth"), "--out", str(root / "abl"), "--levels", "3,6", "--l0", "1",
            "--steps", "40", "--quiet"]
    assert main(args) == 0
    return root, args


def test_ablation_trains_every_variant_with_its_setting(ablation, capsys):
    root, args = ablation
    for name in PAPER_VARIANTS:  # the default set (matryoshka has its own tests)
        over = VARIANTS[name]
        cfg = json.loads((root / "abl" / name / "config.json").read_text())
        default = json.loads((root / "abl" / "hsae" / "config.json").read_text())
        assert {k: v for k, v in cfg.items() if default[k] != v} == over  # exactly its overrides
        ev = json.loads((root / "abl" / name / "eval.json").read_text())
        assert ev["baseline"] == (name == "post-hoc") and len(ev["levels"]) == 2
    table = (root / "abl" / "ablation.md").read_text().split("\n\n")[0].splitlines()
    assert len(table) == 2 + len(PAPER_VARIANTS) and "Hamming (chance)" in table[0]
    for line, name in zip(table[2:], PAPER_VARIANTS):
        cells = [c.strip() for c in line.replace("\\|", "/").strip("|").split("|")]
        ev = json.loads((root / "abl" / name / "eval.json").read_text())
        assert cells[0] == name and cells[1] == "1" and float(cells[-1]) == PAPER_HAMMING[name]
        assert "±" not in line  # one seed: no spread
        assert _num(cells[6]) == pytest.approx(ev["hierarchy"]["hamming"], abs=1e-3)
        assert cells[6].endswith(f"({ev['hierarchy']['chance']['hamming']:.3f})")
        assert ev["config"]["seed"] == 0 and ev["config"]["baseline"] == (name == "post-hoc")


def test_rerun_skips_finished_variants(ablation):
    root, args = ablation
    files = [root / "abl" / n / f for n in PAPER_VARIANTS for f in ("eval.json", "model.safetensors", "train_log.jsonl")]
    before = [f.stat().st_mtime_ns for f in files]
    assert main(args) == 0
    assert before == [f.stat().st_mtime_ns for f in files]


def test_unknown_variant_is_a_one_line_error(ablation, capsys):
    root, args = ablation
    assert main(args + ["--variants", "hsae,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_report_writes_markdown_and_plots(ablation):
    root, _ = ablation
    runs = [str(root / "abl" / "hsae"), str(root / "abl" / "post-hoc")]
    assert main(["report", *runs, "--out", str(root / "rep")]) == 0
    md = (root / "rep" / "report.md").read_text()
    ev = json.loads((root / "abl" / "hsae" / "eval.json").read_text())
    assert f"{ev['hierarchy']['hamming']:.3f}" in md and "| post-hoc |" in md
    for png in ("levels.png", "training.png", "hierarchy.png", "children.png", "pairs.png"):
        assert f"]({png})" in md
        with Image.open(root / "rep" / png) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    assert "absorption.png" not in md  # no run was evaluated with --absorption


def test_report_needs_eval_json(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "rep")]) == 2
    assert "hsae eval" in capsys.readouterr().err


@pytest.fixture(scope="module")
def seeded(ablation):
    """Two variants for seeds 0 and 1 in the same directory: seed 0's runs are the ones above."""
    root, _ = ablation
    base = TrainConfig.load(root / "abl" / "hsae" / "config.json")
    before = {n: (root / "abl" / n / "model.safetensors").stat().st_mtime_ns for n in ("hsae", "post-hoc")}
    evals = run_ablation(base, root / "synth", root / "abl", ["hsae", "post-hoc"], seeds=[0, 1], progress=False)
    return root, base, evals, before


def test_ablation_with_two_seeds_trains_the_new_seed_only_and_reports_the_spread(seeded):
    root, base, evals, before = seeded
    assert list(evals) == ["hsae", "hsae-s1", "post-hoc", "post-hoc-s1"]
    assert before == {n: (root / "abl" / n / "model.safetensors").stat().st_mtime_ns for n in before}
    for name in ("hsae-s1", "post-hoc-s1"):
        assert json.loads((root / "abl" / name / "config.json").read_text())["seed"] == 1
        assert evals[name]["config"]["seed"] == 1
    main_table, side = ablation_table(evals).split("\n\n")[:2]
    lines = main_table.splitlines()
    assert len(lines) == 4
    # the side-by-side table: dead features and training time per step, each with its spread
    side = side.splitlines()
    assert side[0] == "| model | n | dead | train s/step |" and side[2].startswith("| hsae | 2 | ")
    assert all("±" in c for c in side[2].split("|")[3:5])
    assert all(evals[n]["train"]["steps"] == 40 and evals[n]["train"]["seconds_per_step"] > 0 for n in evals)
    for line, name in zip(lines[2:], ("hsae", "post-hoc")):
        cells = [c.strip() for c in line.replace("\\|", "/").strip("|").split("|")]
        ham = [evals[n]["hierarchy"]["hamming"] for n in (name, f"{name}-s1")]
        assert cells[:2] == [name, "2"] and all("±" in c for c in cells[2:7])
        mean, _, std = cells[6].split()[:3]
        assert float(mean) == pytest.approx(statistics.mean(ham), abs=1e-3)
        assert float(std) == pytest.approx(statistics.stdev(ham), abs=1e-3)


def test_report_of_seeds_plots_the_methods_side_by_side(seeded):
    root, _, evals, _ = seeded
    runs = [str(root / "abl" / n) for n in evals]
    assert main(["report", *runs, "--out", str(root / "rep2")]) == 0
    md = (root / "rep2" / "report.md").read_text()
    assert "](methods.png)" in md and "| hsae | 2 |" in md
    with Image.open(root / "rep2" / "methods.png") as im:
        assert im.size[0] > 600 and im.size[1] > 300
    assert not (root / "rep" / "methods.png").exists()  # one run per method: nothing to put a spread on


def test_seeded_rerun_trains_nothing_and_old_eval_files_gain_chance(seeded):
    root, base, evals, _ = seeded
    names = ["hsae", "hsae-s1", "post-hoc", "post-hoc-s1"]
    models = [root / "abl" / n / "model.safetensors" for n in names]
    files = models + [root / "abl" / n / "eval.json" for n in names]
    before = [f.stat().st_mtime_ns for f in files]
    assert run_ablation(base, root / "synth", root / "abl", ["hsae", "post-hoc"], seeds=[0, 1], progress=False) == evals
    assert before == [f.stat().st_mtime_ns for f in files]
    # an eval.json from before chance levels is re-evaluated, not retrained
    p = root / "abl" / "hsae-s1" / "eval.json"
    old = json.loads(p.read_text())
    del old["hierarchy"]["chance"], old["config"]
    p.write_text(json.dumps(old))
    again = run_ablation(base, root / "synth", root / "abl", ["hsae"], seeds=[1], progress=False)
    assert again["hsae-s1"] == evals["hsae-s1"] and before[:4] == [f.stat().st_mtime_ns for f in models]


def _ev(l0, ham, cfg=None, chance=None, recovery=None):
    """A hand-made eval dict."""
    h = {"hamming": ham, "p_parent_given_child": 0.5, "p_child_given_parent": 0.25}
    if chance is not None:
        h["chance"] = {"hamming": chance, "p_parent_given_child": 0.1, "p_child_given_parent": 0.2}
    ev = {"l0": l0, "var_explained": 0.5, "hierarchy": h,
          "levels": [{"n_features": 3, "l0": l0, "var_explained": 0.5, "dead_fraction": 0.0}]}
    if cfg is not None:
        ev["config"] = {"levels": [3, 6], "rho": 0.01, "acts": "s", **cfg}
    if recovery is not None:
        ev["tree_recovery"] = {"feature_match": recovery, "edge_precision": 1.0, "edge_recall": 1.0, "edge_f1": 1.0}
    return ev


def test_aggregate_groups_runs_equal_but_for_the_seed():
    evals = {"a-s0": _ev(1.0, 4.0, {"seed": 0}, 9.0), "a-s1": _ev(2.0, 6.0, {"seed": 1}, 11.0),
             "a-s2": _ev(4.0, 11.0, {"seed": 2}, 10.0),
             "b-s0": _ev(3.0, 5.0, {"seed": 0, "rho": 0.0}), "c-s1": _ev(3.0, 5.0, {"seed": 1, "acts": "t"}),
             "old": _ev(1.0, 2.0, recovery=0.5), "old-s1": _ev(2.0, 3.0, recovery=1.0)}
    g = aggregate(evals)
    assert list(g) == ["a", "b", "c", "old"]
    assert g["a"]["runs"] == ["a-s0", "a-s1", "a-s2"] and g["a"]["n"] == 3
    ham = g["a"]["columns"]["hamming"]
    assert ham["mean"] == pytest.approx(7.0) and ham["n"] == 3
    assert ham["std"] == pytest.approx(statistics.stdev([4, 6, 11]))  # ddof=1
    assert g["a"]["columns"]["l0"]["std"] == pytest.approx(statistics.stdev([1, 2, 4]))
    assert g["a"]["columns"]["chance_hamming"]["mean"] == pytest.approx(10.0)
    assert g["b"]["n"] == 1 and g["b"]["columns"]["hamming"]["std"] != g["b"]["columns"]["hamming"]["std"]  # nan
    assert "chance_hamming" not in g["b"]["columns"]
    assert g["old"]["runs"] == ["old", "old-s1"] and g["old"]["columns"]["feature_match"]["mean"] == pytest.approx(0.75)
    assert list(aggregate(evals, by="run")) == list(evals)


def test_a_run_older_than_a_config_field_groups_with_runs_naming_its_value():
    """A run written before `restart` existed ran the residual restart: it is a seed of the same
    group as a newer run with restart=residual, not of one with restart=split."""
    evals = {"a-s0": _ev(1.0, 4.0, {"seed": 0}), "a-s1": _ev(2.0, 6.0, {"seed": 1, "restart": "residual"}),
             "b-s0": _ev(3.0, 5.0, {"seed": 0, "restart": "split"})}
    g = aggregate(evals)
    assert list(g) == ["a", "b"] and g["a"]["runs"] == ["a-s0", "a-s1"]


def test_comparison_table_shows_groups_with_spread_and_chance():
    evals = {"a-s0": _ev(1.0, 4.0, {"seed": 0}, 9.0), "a-s1": _ev(2.0, 6.0, {"seed": 1}, 11.0),
             "old": _ev(1.0, 2.0)}
    lines = comparison_table(evals, paper=True).splitlines()
    assert lines[0].startswith("| model | n | L0 |") and "Hamming (chance)" in lines[0]
    assert lines[2] == "| a | 2 | 1.500 ± 0.707 | 0.500 ± 0.000 | 0.500 ± 0.000 (0.100) | " \
                       "0.250 ± 0.000 (0.200) | 5.000 ± 1.414 (10.0) |"
    assert lines[3] == "| old | 1 | 1.000 | 0.500 | 0.500 (-) | 0.250 (-) | 2.000 (-) |"
    assert lines[4].startswith("| paper HSAE |  | 50.1 |") and lines[4].endswith("21.3 (-) |")
    per = comparison_table(evals, paper=False, per_run=True).splitlines()
    assert [ln.split("|")[1].strip() for ln in per[2:5]] == ["a-s0", "a-s1", "old"]
    assert per[0].startswith("| model | L0 |") and per[2].endswith("4.000 (9.000) |")


def test_family_cell_reads_the_children_histogram():
    from hsae.eval.report import family_cell

    assert family_cell([0, 3, 0, 1]) == "3 / 1.5"  # three parents with one child, one with three
    assert family_cell([0]) == "-"


def _semantic(ev: dict, wn: float, probe: float, ce: list[float], absorb: list[float], secs: float) -> dict:
    """ev plus hand-made WordNet, probe, splice, absorption and training-time results."""
    ev = {**ev, "wordnet": {"consistent_fraction": wn, "chance_consistent_fraction": 0.2, "equal_fraction": 0.1,
                            "chance_equal_fraction": 0.01},
          "probe": {"hierarchical_fraction": probe, "chance_hierarchical_fraction": 0.05},
          "train": {"seconds_per_step": secs, "steps": 10}}
    ev["levels"] = [{"n_features": 3 * 2 ** i, "l0": 1.0, "var_explained": 0.5, "dead_fraction": 0.1 * i,
                     "ce_loss_recovered": c, "absorption_rate": a} for i, (c, a) in enumerate(zip(ce, absorb))]
    return ev


def test_side_by_side_shows_meaning_quality_and_time_with_spread_and_chance():
    from hsae.eval.sidebyside import side_by_side as tables

    def side_by_side(evals):
        return tables(aggregate(evals))

    evals = {"m-s0": _semantic(_ev(1.0, 4.0, {"seed": 0}, 9.0), 0.3, 0.6, [0.8, 0.9], [0.1, 0.3], 1.0),
             "m-s1": _semantic(_ev(1.0, 4.0, {"seed": 1}, 9.0), 0.5, 0.6, [0.6, 0.7], [0.1, 0.1], 3.0),
             "x-s0": _ev(1.0, 4.0, {"seed": 0, "rho": 0.0}, 9.0)}
    lines = side_by_side(evals)
    assert lines[0] == ("| model | n | WordNet consistent (chance) | WordNet equal (chance) | probe-based (chance) | "
                        "absorption | dead | train s/step |")
    assert lines[2] == "| m | 2 | 0.400 ± 0.141 (0.200) | 0.100 ± 0.000 (0.010) | 0.600 ± 0.000 (0.050) | " \
                       "0.150 ± 0.071 | 0.050 ± 0.000 | 2.000 ± 1.414 |"
    assert lines[3] == "| x | 1 | - (-) | - (-) | - (-) | - | 0.000 | - |"
    per_level = lines[lines.index("") + 1:]
    assert per_level[0] == "| model | n | level | var.expl. | CE loss recovered | absorption | dead |"
    assert per_level[2] == "| m | 2 | 0 | 0.500 ± 0.000 | 0.700 ± 0.141 | 0.100 ± 0.000 | 0.000 ± 0.000 |"
    assert per_level[3] == "| m | 2 | 1 | 0.500 ± 0.000 | 0.800 ± 0.141 | 0.200 ± 0.141 | 0.100 ± 0.000 |"
    assert per_level[4] == "| x | 1 | 0 | 0.500 | - | - | 0.000 |"
    # a column only some of a group's runs have says so
    del evals["m-s1"]["wordnet"]
    assert side_by_side(evals)[2].startswith("| m | 2 | 0.300 (0.200) [1/2] |")

