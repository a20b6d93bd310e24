"""The second embedded model, Gemma 3 270M, through the whole pipeline (slow: the first load joins
its GGUF chunks and dequantises it into the cache, ~1-2 min; later loads take seconds)."""

import json

import numpy as np
import pytest

from hsae.cli import main
from hsae.data import Store

pytestmark = pytest.mark.slow
LAYER = 9  # the middle of its 18 blocks


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma")
    words = ("the quick brown fox jumps over the lazy dog while rain falls on quiet hills today and "
             "tonight the city sleeps under a cold bright moon").split()
    rng = np.random.default_rng(0)
    text = [" ".join(rng.choice(words, size=rng.integers(8, 40))) for _ in range(300)]
    (root / "c.txt").write_text("\n\n".join(text))
    return root


@pytest.fixture(scope="module")
def run(corpus):
    """A streaming run on Gemma: held-out store first, then one pass over the rest."""
    out = corpus / "run"
    assert main(["train", "--model", "gemma3-270m", "--layer", str(LAYER), "--corpus", str(corpus / "c.txt"),
                 "--tokens", "2600", "--heldout-tokens", "620", "--ctx", "32", "--buffer-rows", "620",
                 "--levels", "16,48", "--l0", "4", "--batch-size", "64", "--out", str(out), "--quiet"]) == 0
    return out


def test_collect_drops_the_bos_attention_sink(corpus):
    out = corpus / "s"
    assert main(["collect", "--model", "gemma3-270m", "--layer", str(LAYER), "--corpus", str(corpus / "c.txt"),
                 "--out", str(out), "--ctx", "32", "--tokens", "310", "--quiet"]) == 0
    s = Store(out)
    assert s.d == 640 and s.rows == 310
    norms = np.linalg.norm(s.read(0, s.rows), axis=1)
    # position 0 (BOS, norm ~88,000 after block 9) is never stored; the others are ~5-10k
    assert norms.max() < 30_000 and np.median(norms) > 1000
    assert s.meta["source"]["model"] == "gemma3-270m" and 2 in s.meta["source"]["special_ids"]


def test_streaming_train_then_eval_with_splice(run, tmp_path):
    held = Store(run / "heldout")
    assert held.d == 640 and held.meta["heldout"]
    assert main(["eval", str(run), "--splice", "--splice-contexts", "4", "--json", str(tmp_path / "e.json"),
                 "--quiet"]) == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    lv = ev["levels"][-1]
    assert ev["n_rows"] == int(held.ordinary.sum())
    assert np.isfinite(lv["ce_spliced"]) and lv["ce_zero_ablation"] > lv["ce_clean"]


def test_contexts_and_browse(run, tmp_path):
    assert main(["contexts", str(run), "--k", "3", "--quiet"]) == 0
    assert main(["browse", str(run), "--out", str(tmp_path / "f.html"), "--quiet"]) == 0
    assert (tmp_path / "f.html").stat().st_size > 1000


def test_steer_generates(run, tmp_path):
    assert main(["steer", str(run), "--feature", "0:0", "--strength", "4", "--prompt", "The weather today",
                 "--max-new-tokens", "5", "--json", str(tmp_path / "s.json"), "--quiet"]) == 0
    out = json.loads((tmp_path / "s.json").read_text())
    assert out["model"] == "gemma3-270m" and out["layer"] == LAYER
    texts = {v["label"]: v["text"] for v in out["variants"]}
    assert "no steering" in texts and all(t.strip() for t in texts.values())
