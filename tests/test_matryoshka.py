"""The Matryoshka baseline: SAELens trains it on our store, its prefixes become levels exactly, and the run works downstream."""

import json
import tempfile
from pathlib import Path

import pytest
import torch

from hsae.cli import main
from hsae.interop.matryoshka import to_levels
from hsae.rundir import load_run
from tiny import build_tiny, collect_tiny

SIZES = [8, 24, 64]


def _saelens_prefix_recons(sae, x, sizes):
    """SAELens's own reconstruction of each prefix: its encode, latents past the prefix zeroed, its decode."""
    acts = sae.encode(x)
    out = []
    for n in sizes:
        a = acts.clone()
        a[:, n:] = 0
        out.append(sae.decode(a))
    return out


def test_conversion_keeps_every_prefix_reconstruction():
    from sae_lens import SAE
    from sae_lens.saes.matryoshka_batchtopk_sae import (MatryoshkaBatchTopKTrainingSAE,
                                                        MatryoshkaBatchTopKTrainingSAEConfig)

    torch.manual_seed(0)
    sae = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=16, d_sae=SIZES[-1], matryoshka_widths=list(SIZES), k=6, dtype="float32", device="cpu"))
    with torch.no_grad():  # a trained-looking SAE: decoder norms far from 1, biases, a threshold
        sae.W_dec.mul_(torch.rand(SIZES[-1], 1) * 3 + 0.2)
        sae.b_dec.normal_(0, 0.5)
        sae.b_enc.normal_(0, 0.2)
        sae.topk_threshold.fill_(0.05)
    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)
        inf = SAE.load_from_disk(tmp, device="cpu")
        model = to_levels(Path(tmp), SIZES)
    x = torch.randn(500, 16) * 2
    with torch.no_grad():
        want = _saelens_prefix_recons(inf, x, SIZES)
        for lv, w in zip(model.levels, want):
            got = lv.decode(lv.encode(x))
            torch.testing.assert_close(got, w, rtol=1e-5, atol=1e-5)
    # some inputs do fire, in every prefix (the check is not vacuous)
    assert all((lv.encode(x) > 0).any() for lv in model.levels)
    assert torch.allclose(model.levels[-1].W_dec.norm(dim=1), torch.ones(SIZES[-1]))


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    d = tmp_path_factory.mktemp("mt")
    assert main(["synth", "--out", str(d / "s"), "--d", "16", "--branching", "4,3,2", "--tokens", "20000",
                 "--quiet"]) == 0
    assert main(["ablate", "--acts", str(d / "s"), "--variants", "post-hoc,matryoshka", "--levels", "4,12,24",
                 "--l0", "2", "--steps", "150", "--batch-size", "256", "--out", str(d / "ab"), "--quiet"]) == 0
    return d


def test_a_matryoshka_run_is_a_normal_run(ablation, capsys):
    from sae_lens import SAE

    run = ablation / "ab" / "matryoshka"
    cfg, model, scale = load_run(run)
    assert model.sizes == [4, 12, 24] and cfg.baseline and cfg.rho == 0 and cfg.swap == 0
    assert all((model.parent(l) >= 0).any() for l in (1, 2))  # a post-hoc forest over the prefixes
    info = json.loads((run / "matryoshka.json").read_text())
    assert info["widths"] == [4, 12, 24] and info["k"] == 2.0
    # the last level is SAELens's saved SAE on normalised rows
    sae = SAE.load_from_disk(run / "saelens", device="cpu")
    x = torch.randn(64, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.levels[-1].decode(model.levels[-1].encode(x)), sae.decode(sae.encode(x)),
                                   rtol=1e-5, atol=1e-5)
    ev = json.loads((run / "eval.json").read_text())
    assert "chance" in ev["hierarchy"] and len(ev["levels"]) == 3
    assert "matryoshka" in (ablation / "ab" / "ablation.md").read_text()
    assert main(["compare", str(run / "eval.json"), str(ablation / "ab" / "post-hoc" / "eval.json"), "--no-paper"]) == 0
    assert "matryoshka" in capsys.readouterr().out


def test_contexts_browse_and_export_work_on_a_matryoshka_run_of_a_model_store(tmp_path):
    build_tiny(tmp_path, docs=200)
    store = collect_tiny(tmp_path, 1, 1500, "acts")
    run = tmp_path / "ab" / "matryoshka"
    assert main(["ablate", "--acts", str(store), "--variants", "matryoshka", "--levels", "8,16,32", "--l0", "3",
                 "--steps", "60", "--batch-size", "128", "--out", str(tmp_path / "ab"), "--quiet"]) == 0
    assert main(["contexts", str(run), "--k", "3", "--quiet"]) == 0
    assert main(["browse", str(run), "--out", str(tmp_path / "f.html"), "--quiet"]) == 0
    assert "matryoshka" in (tmp_path / "f.html").read_text()
    assert main(["export", str(run), "--format", "saelens", "--out", str(tmp_path / "sl"), "--quiet"]) == 0
    assert main(["export", str(run), "--format", "neuronpedia", "--out", str(tmp_path / "np"), "--quiet"]) == 0
    assert any((tmp_path / "sl").iterdir()) and any((tmp_path / "np").iterdir())


def test_inherited_latents_get_no_parent_and_added_ones_link_to_the_previous_group(ablation):
    _, model, _ = load_run(ablation / "ab" / "matryoshka")
    sizes = model.sizes
    for l in (1, 2):
        p = model.parent(l)
        assert (p[:sizes[l - 1]] == -1).all()  # the same latent as in level l-1: no self-edge
        linked = p[sizes[l - 1]:]
        assert (linked >= 0).float().mean() >= 0.5  # the partial tree orphans the least similar 20%
        assert (linked[linked >= 0] >= (sizes[l - 2] if l >= 2 else 0)).all()  # a parent from the group before


def test_seeds_of_a_matryoshka_config_form_one_group(ablation):
    from hsae.eval.report import aggregate, read_eval

    out = ablation / "ab"
    assert main(["ablate", "--acts", str(ablation / "s"), "--variants", "matryoshka", "--seeds", "0,1", "--levels", "4,12,24",
                 "--l0", "2", "--steps", "150", "--batch-size", "256", "--out", str(out), "--quiet"]) == 0
    evals = {n: read_eval(out / n / "eval.json") for n in ("matryoshka", "matryoshka-s1")}
    groups = aggregate(evals)  # by config: the config keeps the target L0, not each seed's measured one
    assert list(groups) == ["matryoshka"] and groups["matryoshka"]["n"] == 2
    info = json.loads((out / "matryoshka-s1" / "matryoshka.json").read_text())
    assert evals["matryoshka-s1"]["config"]["l0"] == [2.0] and len(info["l0_training_rows"]) == 3
