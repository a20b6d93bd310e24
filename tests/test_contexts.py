"""Feature contexts (`hsae contexts`): exact against brute force on a tiny real model, streaming, API."""

import json

import numpy as np
import pytest
import torch

from hsae.cli import main
from tiny import build_tiny, collect_tiny, train_tiny

CTX = 16  # tokens per context: 15 stored rows each


def build_tiny_run(root):
    """A tiny Llama + word tokenizer, a store collected from it and a 3-level HSAE trained on it."""
    build_tiny(root, docs=300)
    store = collect_tiny(root, 1, 1500, "acts", "--shard-rows", "150")
    return train_tiny(store, root / "run", "8,16,32", "3", 64, "--holdout", "0.2")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = build_tiny_run(tmp_path_factory.mktemp("ctx"))
    assert main(["contexts", str(run), "--k", "5", "--before", "4", "--after", "2", "--chunk", "64", "--quiet"]) == 0
    return run


def _brute(run):
    """Dense codes of every held-out row, per level (0 on the rows training never sees: special
    tokens, massive activations), plus the rows and the model."""
    from hsae.data import Store
    from hsae.rundir import load_run

    cfg, model, _ = load_run(run)
    store = Store(cfg.acts)
    _, held = store.split(cfg.holdout)
    with torch.no_grad():
        codes = [c.numpy() for c in model.encode(store.batch(held.start, held.stop))]
    ordinary = store.ordinary[held.start:held.stop]
    assert 0 < ordinary.sum() < len(held)  # the tiny corpus has end-of-document tokens in the held-out rows
    codes = [c * ordinary[:, None] for c in codes]
    return cfg, model, store, held, codes


def test_top_k_and_windows_match_brute_force(tiny_run):
    from hsae.explore.contexts import load_contexts

    c = load_contexts(tiny_run)
    cfg, model, store, held, codes = _brute(tiny_run)
    assert c.n_rows == len(held) and c.sizes == model.sizes
    ordinary_rows = int(store.ordinary[held.start:held.stop].sum())
    checked = 0
    for l, a in enumerate(codes):
        for f in range(a.shape[1]):
            col = a[:, f]
            want = np.sort(col[col > 0])[::-1][:5]
            top = c.top(l, f)
            assert np.allclose([e.act for e in top], want, rtol=1e-5), (l, f)
            for e in top:
                i = e.row - held.start
                assert abs(col[i] - e.act) < 1e-5 * max(1, e.act) and e.values[e.index] == pytest.approx(e.act, rel=1e-2)
                # the window is the row's own context (15 rows per context), cut at its edges
                ctx = e.row // (CTX - 1)
                lo = max(e.row - 4, ctx * (CTX - 1), held.start)
                hi = min(e.row + 3, (ctx + 1) * (CTX - 1), held.stop)
                assert e.index == e.row - lo and len(e.tokens) == len(e.values) == hi - lo
                assert np.allclose(e.values, a[lo - held.start:hi - held.start, f], rtol=1e-2, atol=1e-3)
                checked += 1
            assert c.frequency(l, f) == pytest.approx((col > 0).sum() / ordinary_rows)
            assert c.mean_act(l, f) == pytest.approx(col[col > 0].mean() if (col > 0).any() else 0.0, rel=1e-5)
            h = c.histogram(l, f)
            assert sum(n for _, _, n in h) == (col > 0).sum()
            for lo_, hi_, n in h[:-1]:  # +-1: a value on a bin edge may round either way
                assert abs(n - ((col >= lo_) & (col < hi_)).sum()) <= 1
    assert checked > 50


def test_tokens_are_the_stores_tokens_decoded(tiny_run):
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    from hsae.explore.contexts import load_contexts

    c = load_contexts(tiny_run)
    cfg, _, store, held, _ = _brute(tiny_run)
    tok = AutoTokenizer.from_pretrained(store.meta["source"]["model"])
    ids = np.concatenate([load_file(str(store.path / s["file"]))["tokens"] for s in store.meta["shards"]])
    e = c.top(1, int(np.argmax(c.array(1, "fires"))))[0]
    lo = e.row - e.index
    assert e.tokens == [tok.decode([int(t)]) for t in ids[lo:lo + len(e.tokens)]]
    assert e.text("[", "]").count("[") == 1 and f"[{e.tokens[e.index]}]" in e.text("[", "]")


def test_edge_counts_and_logit_lens_match_brute_force(tiny_run):
    from transformers import AutoModelForCausalLM

    from hsae.explore.contexts import load_contexts

    c = load_contexts(tiny_run)
    cfg, model, store, held, codes = _brute(tiny_run)
    for l in range(1, 3):
        p = model.parent(l).numpy()
        for f in range(model.sizes[l]):
            e = c.edge(l, f)
            assert e["parent_id"] == p[f] and e["child"] == (codes[l][:, f] > 0).sum()
            if p[f] >= 0:
                assert e["both"] == ((codes[l][:, f] > 0) & (codes[l - 1][:, p[f]] > 0)).sum()
                assert e["parent"] == (codes[l - 1][:, p[f]] > 0).sum()
    lm = AutoModelForCausalLM.from_pretrained(store.meta["source"]["model"])
    logits = (model.levels[2].W_dec.detach() * lm.model.norm.weight.detach()) @ lm.lm_head.weight.detach().t()
    want = logits.topk(10, dim=1).indices.numpy()
    assert (c.array(2, "promoted") == want).all()


def test_scan_streams_and_does_not_depend_on_chunking(tiny_run):
    from hsae.explore.rows import row_text
    from hsae.explore.scan import scan

    cfg, model, store, held, codes = _brute(tiny_run)
    _, context = row_text(store, held)
    seen = []

    def encode(lv, x):
        seen.append(x.shape[0])
        return lv.encode(x)

    a = scan(model, store, held, context, held, k=4, before=3, after=2, chunk=13, progress=False, encode=encode)
    assert max(seen) <= 13 + 3 + 2  # never more than one chunk (plus its window margins) of codes
    b = scan(model, store, held, context, held, k=4, before=3, after=2, chunk=len(held), progress=False)
    assert [d.keys() for d in a] == [d.keys() for d in b]
    for l, (da, db) in enumerate(zip(a, b)):
        for key in da:
            x, y = np.asarray(da[key], np.float64), np.asarray(db[key], np.float64)
            if key == "top_row":
                # encoding other batch sizes rounds differently: rows may swap only between tied activations
                for f, j in zip(*np.nonzero(x != y)):
                    ax, ay = codes[l][int(x[f, j]) - held.start, f], codes[l][int(y[f, j]) - held.start, f]
                    assert abs(ax - ay) < 1e-4 * max(1.0, ax), (l, f, j)
            elif key != "top_values":  # follows top_row
                assert np.allclose(x, y, rtol=1e-4, atol=1e-4, equal_nan=True), key


def test_weighted_sampling_probabilities():
    """A-Res with k = 1 picks item i with probability w_i / sum(w) (keys log(u) / w over seeds)."""
    from hsae.explore.scan import uniforms

    w = torch.tensor([1.0, 2.0, 7.0], dtype=torch.float64)
    rows, feats = torch.arange(3), torch.zeros(3, dtype=torch.long)
    picks = np.bincount([int(torch.argmax(torch.log(uniforms(s, 0, rows, feats)) / w)) for s in range(4000)], minlength=3)
    assert np.allclose(picks / 4000, w.numpy() / 10, atol=0.03)
    u = uniforms(1, 2, torch.arange(100000), torch.full((100000,), 3))
    assert 0 < float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.01


def test_sampled_examples_are_real_firing_rows(tiny_run):
    from hsae.explore.contexts import load_contexts

    c = load_contexts(tiny_run)
    _, _, _, held, codes = _brute(tiny_run)
    for l, a in enumerate(codes):
        for f in range(a.shape[1]):
            s = c.sampled(l, f)
            assert len(s) == min(5, int((a[:, f] > 0).sum()))
            assert len({e.row for e in s}) == len(s)
            assert all(abs(a[e.row - held.start, f] - e.act) < 1e-4 for e in s)


def test_bad_inputs_are_one_line_errors(tiny_run, tmp_path, capsys):
    from hsae.config import UserError
    from hsae.explore.contexts import load_contexts

    with pytest.raises(UserError, match="hsae contexts"):
        load_contexts(tmp_path)
    with pytest.raises(UserError, match="no feature"):
        load_contexts(tiny_run).top(0, 99)
    assert main(["synth", "--out", str(tmp_path / "syn"), "--d", "32", "--tokens", "400", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["contexts", str(tiny_run), "--acts", str(tmp_path / "syn"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "per-row tokens" in err and len(err.splitlines()) == 1
    assert main(["contexts", str(tiny_run), "--k", "0", "--quiet"]) == 2
    info = json.loads(__import__("safetensors").safe_open(str(tiny_run / "contexts.safetensors"), "np").metadata()["hsae_contexts"])
    assert info["row_mode"] == "holdout" and info["k"] == 5
