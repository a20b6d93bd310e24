"""`hsae ablate` (seven variants, resumable, table beside the paper) and `hsae report`."""

import json

import pytest
from PIL import Image

from hsae.cli import main
from hsae.eval.ablation import PAPER_HAMMING, VARIANTS


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
    for name, over in VARIANTS.items():
        cfg = json.loads((root / "abl" / name / "config.json").read_text())
        default = json.loads((root / "abl" / "hsae" / "config.json").read_text())
        assert {k: v for k, v in cfg.items() if default[k] != v} == over  # exactly its overrides
        ev = json.loads((root / "abl" / name / "eval.json").read_text())
        assert ev["baseline"] == (name == "post-hoc") and len(ev["levels"]) == 2
    table = (root / "abl" / "ablation.md").read_text().splitlines()
    assert len(table) == 2 + len(VARIANTS)
    for line, name in zip(table[2:], VARIANTS):
        cells = [c.strip() for c in line.strip("|").split("|")]
        ev = json.loads((root / "abl" / name / "eval.json").read_text())
        assert cells[0] == name and float(cells[-1]) == PAPER_HAMMING[name]
        assert float(cells[5]) == pytest.approx(ev["hierarchy"]["hamming"], abs=1e-3)


def test_rerun_skips_finished_variants(ablation):
    root, args = ablation
    files = [root / "abl" / n / f for n in VARIANTS for f in ("eval.json", "model.safetensors", "train_log.jsonl")]
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
