"""Steering on a tiny real Llama: the layer's output moves by exactly strength * direction; runs repeat."""

import json

import pytest
import torch

from hsae.cli import main
from hsae.rundir import load_run
from tiny import build_tiny, collect_tiny, train_tiny


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny Llama, a store collected from its block 0, and a short 3-level run on it."""
    root = build_tiny(tmp_path_factory.mktemp("steer"))
    train_tiny(collect_tiny(root), root / "r")
    return root


def _mid_feature(model):
    """A level-1 feature with a parent and at least one child."""
    p1, p2 = model.parent(1), model.parent(2)
    for i in range(model.sizes[1]):
        if p1[i] >= 0 and bool((p2 == i).any()):
            return 1, i
    pytest.skip("the short run linked no level-1 feature both ways")


def test_hidden_state_moves_by_strength_times_direction(setup):
    from hsae.data.models import decoder_layers, load_model
    from hsae.interop.steer import added_to_block, direction

    lm, tok = load_model(str(setup / "model"))
    _, model, scale = load_run(setup / "r")
    vec = 7.5 * direction(model, scale, 1, 3)
    assert torch.allclose(vec.norm(), torch.tensor(7.5 / scale))
    seen = []

    def grab(_mod, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    h = decoder_layers(lm)[1].register_forward_pre_hook(grab, with_kwargs=True)  # what block 1 receives
    ids = tok("the cat sat on a mat", return_tensors="pt")["input_ids"]
    try:
        with torch.no_grad():
            lm(input_ids=ids)
            with added_to_block(lm, 0, vec):
                lm(input_ids=ids)
            lm(input_ids=ids)  # the hook is gone afterwards
    finally:
        h.remove()
    plain, steered, after = seen
    assert torch.allclose(steered - plain, vec.expand_as(plain), atol=1e-5)
    assert torch.equal(after, plain)


def test_steer_cli_is_deterministic_and_shows_the_family(setup, tmp_path, capsys):
    _, model, _ = load_run(setup / "r")
    l, i = _mid_feature(model)
    args = ["steer", str(setup / "r"), "--feature", f"{l}:{i}", "--strength", "20", "--prompt", "the cat sat",
            "--max-new-tokens", "8", "--temperature", "1.0", "--seed", "3", "--quiet"]
    assert main([*args, "--json", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert main([*args, "--json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["variants"] == b["variants"] and capsys.readouterr().out == out
    labels = [v["label"] for v in a["variants"]]
    children = (model.parent(l + 1) == i).nonzero().flatten().tolist()
    assert labels == ["no steering", f"feature {l}:{i}", f"parent {l - 1}:{int(model.parent(l)[i])}",
                      *[f"child {l + 1}:{c}" for c in children]]
    assert all(lab in out for lab in labels)
    assert a["layer"] == 0 and a["model"] == str(setup / "model")  # both taken from the store manifest


@pytest.mark.parametrize("spec,match", [("1-3", "LEVEL:ID"), ("5:0", "does not exist"), ("0:99", "does not exist")])
def test_bad_feature_exits_2(setup, capsys, spec, match):
    assert main(["steer", str(setup / "r"), "--feature", spec, "--strength", "1", "--prompt", "x", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err
