"""SAELens export/import, checked with the real sae-lens package: levels load, encode/decode match ours."""

import json

import pytest
import torch

from hsae.cli import main
from hsae.data import Store
from hsae.model import update_forest
from hsae.rundir import load_run

sae_lens = pytest.importorskip("sae_lens")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A short HSAE run on a tiny synthetic store (scale != 1, so the folding is exercised)."""
    root = tmp_path_factory.mktemp("exp")
    assert main(["synth", "--out", str(root / "s"), "--d", "16", "--branching", "3,2,2", "--tokens", "6000", "--quiet"]) == 0
    assert main(["train", "--acts", str(root / "s"), "--out", str(root / "r"), "--levels", "4,8,16", "--l0", "2",
                 "--steps", "80", "--batch-size", "256", "--quiet"]) == 0
    return root


def _raw(root, n=2000):
    return torch.from_numpy(Store(root / "s").read(0, n))


def test_levels_load_in_saelens_and_match_on_raw_activations(run, tmp_path):
    from sae_lens import SAE
    from safetensors import safe_open

    assert main(["export", str(run / "r"), "--format", "saelens", "--out", str(tmp_path / "x")]) == 0
    cfg, model, scale = load_run(run / "r")
    assert abs(scale - 1.0) > 1e-3
    x = _raw(run)
    for l, n in enumerate(model.sizes):
        d = tmp_path / "x" / f"level_{l}"
        with safe_open(str(d / "sae_weights.safetensors"), framework="pt") as f:
            assert set(f.keys()) == {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}
        c = json.loads((d / "cfg.json").read_text())
        assert c["architecture"] == "jumprelu" and (c["d_in"], c["d_sae"]) == (16, n)
        assert c["metadata"]["hook_name"] == c["hook_name"]
        sae = SAE.load_from_disk(d)
        assert type(sae).__name__ == "JumpReLUSAE"
        ours = model.levels[l].encode(scale * x)
        theirs = sae.encode(x)
        assert torch.equal(theirs > 0, ours > 0)
        assert torch.allclose(theirs, ours / scale, atol=1e-5, rtol=1e-5)  # raw units: ours / scale
        assert torch.allclose(sae.decode(theirs), model.levels[l].decode(ours) / scale, atol=1e-5, rtol=1e-5)
        assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(n), atol=1e-5)
    h = json.loads((tmp_path / "x" / "hierarchy.json").read_text())
    assert [v["d_sae"] for v in h["levels"]] == model.sizes
    for l in range(1, len(model.sizes)):
        assert h["parents"][str(l)] == model.parent(l).tolist()


def test_export_import_round_trip_gives_the_baseline_forest(run, tmp_path, capsys):
    assert main(["export", str(run / "r"), "--format", "saelens", "--out", str(tmp_path / "x")]) == 0
    dirs = [str(tmp_path / "x" / f"level_{l}") for l in (2, 0, 1)]  # any order: sorted by size
    assert main(["import-saelens", *dirs, "--acts", str(run / "s"), "--out", str(tmp_path / "imp")]) == 0
    cfg0, model, scale = load_run(run / "r")
    cfg1, back, scale1 = load_run(tmp_path / "imp")
    assert scale1 == pytest.approx(scale) and cfg1.baseline and back.sizes == model.sizes
    x = scale * _raw(run)
    for a, b in zip(model.encode(x), back.encode(x)):
        assert torch.allclose(a, b, atol=1e-5)
    # the forest is the post-hoc assignment (trainer: update_forest once, on the final weights)
    update_forest(model, "encoder", "partial", 0.2)
    for l in range(1, len(model.sizes)):
        assert torch.equal(back.parent(l), model.parent(l))
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "imp")]) == 0


def test_import_folds_b_dec_and_decoder_norms_of_a_saelens_sae(run, tmp_path):
    """An SAE saved by sae-lens itself (b_dec subtracted at the input, decoder rows of any norm)."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    g = torch.Generator().manual_seed(0)
    x = _raw(run, 500)
    for n in (5, 12):
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=16, d_sae=n, apply_b_dec_to_input=True))
        with torch.no_grad():
            sae.W_enc.copy_(torch.randn(16, n, generator=g))
            sae.W_dec.copy_(torch.randn(n, 16, generator=g) * 3)
            sae.b_dec.copy_(torch.randn(16, generator=g))
            sae.b_enc.copy_(torch.randn(n, generator=g))
            sae.threshold.copy_(torch.rand(n, generator=g) * 2)
        sae.save_model(tmp_path / f"sae{n}")
    assert main(["import-saelens", str(tmp_path / "sae5"), str(tmp_path / "sae12"), "--acts", str(run / "s"),
                 "--out", str(tmp_path / "imp")]) == 0
    _, model, scale = load_run(tmp_path / "imp")
    for l, n in enumerate((5, 12)):
        sae = sae_lens.SAE.load_from_disk(tmp_path / f"sae{n}")
        a = sae.encode(x)
        ours = model.levels[l].encode(scale * x)
        assert torch.equal(a > 0, ours > 0)
        assert torch.allclose(model.levels[l].decode(ours) / scale, sae.decode(a), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bad,match", [("missing", "not a SAELens SAE directory"), ("topk", "only JumpReLU"),
                                       ("sizes", "must all differ")])
def test_bad_imports_exit_2(run, tmp_path, capsys, bad, match):
    assert main(["export", str(run / "r"), "--format", "saelens", "--out", str(tmp_path / "x")]) == 0
    dirs = [str(tmp_path / "x" / f"level_{l}") for l in range(3)]
    if bad == "missing":
        dirs.append(str(tmp_path / "nope"))
    elif bad == "topk":
        c = json.loads((tmp_path / "x" / "level_1" / "cfg.json").read_text())
        (tmp_path / "x" / "level_1" / "cfg.json").write_text(json.dumps({**c, "architecture": "topk"}))
    else:
        dirs.append(dirs[0])
    assert main(["import-saelens", *dirs, "--acts", str(run / "s"), "--out", str(tmp_path / "imp")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not (tmp_path / "imp").exists()


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """A run on a store collected from a tiny Llama, with `hsae contexts` and two explanations."""
    from tiny import build_tiny, collect_tiny, train_tiny

    root = build_tiny(tmp_path_factory.mktemp("np"))
    train_tiny(collect_tiny(root, 1), root / "r", "4,8,16", "2", 128, "--holdout", "0.3")
    assert main(["contexts", str(root / "r"), "--k", "6", "--quiet"]) == 0
    (root / "r" / "explanations.json").write_text(json.dumps({"0:1": "cats", "2:3": "quiet hills"}))
    return root


def test_neuronpedia_export_shape_values_and_edges(lm_run, tmp_path):
    from hsae.explore.contexts import load_contexts

    assert main(["export", str(lm_run / "r"), "--format", "neuronpedia", "--out", str(tmp_path / "np"), "--quiet"]) == 0
    _, model, scale = load_run(lm_run / "r")
    ctx = load_contexts(lm_run / "r")
    h = json.loads((tmp_path / "np" / "hierarchy.json").read_text())
    for l, n in enumerate(model.sizes):
        b = json.loads((tmp_path / "np" / f"level_{l}" / "batch-0.json").read_text())
        assert b["layer"] == 1 and b["model_id"] and b["sae_set"] and h["sources"][l].endswith(b["sae_set"])
        assert [f["feature_index"] for f in b["features"]] == list(range(n))
        for f in b["features"]:
            top, sampled = ctx.top(l, f["feature_index"]), ctx.sampled(l, f["feature_index"])
            assert len(f["activations"]) == len(top) + len(sampled)
            for a, e in zip(f["activations"], top + sampled):
                assert a["tokens"] == e.tokens and len(a["values"]) == len(a["tokens"])
                assert a["values"][e.index] == pytest.approx(e.act / scale, rel=1e-3, abs=1e-3)
            assert all(a["bin_min"] == -1 for a in f["activations"][:len(top)])
            assert f["frac_nonzero"] == pytest.approx(ctx.frequency(l, f["feature_index"]))
            assert sum(f["freq_hist_data_bar_heights"]) == int(ctx.array(l, "fires")[f["feature_index"]])
        ex = json.loads((tmp_path / "np" / f"level_{l}" / "explanations.json").read_text())
        want = {"0": {"1": "cats"}, "2": {"3": "quiet hills"}}.get(str(l), {})
        assert {e["index"]: e["description"] for e in ex} == want
        assert all(e["layer"] == h["sources"][l] for e in ex)
    n_edges = sum(int((model.parent(l) >= 0).sum()) for l in range(1, 3))
    assert len(h["edges"]) == n_edges > 0
    for e in h["edges"]:
        l = h["sources"].index(e["child"]["source"])
        st = ctx.edge(l, e["child"]["index"])
        assert e["parent"]["index"] == int(model.parent(l)[e["child"]["index"]]) == st["parent_id"]
        assert (e["child_fires"], e["parent_fires"], e["both"]) == (st["child"], st["parent"], st["both"])


def test_neuronpedia_needs_contexts(run, tmp_path, capsys):
    assert main(["export", str(run / "r"), "--format", "neuronpedia", "--out", str(tmp_path / "np"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hsae contexts" in err
