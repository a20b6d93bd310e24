"""Streaming training (`hsae train --model`): batches from live forward passes, no store."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hsae.cli import main
from hsae.data import Store
from hsae.data.batches import Prefetcher
from hsae.data.live import LiveStream, RowFilter, StreamSource
from tiny import build_tiny

CTX, PER = 16, 15  # tokens per context, rows per context (position 0 dropped)


def _fake_stream(n_contexts=40, buffer_rows=60, batch=16, special=7, massive=(3, 5)):
    """A LiveStream over made-up contexts: row = (context, position, 1, ...); token `special` at
    position 4 of every context, and one massive row (norm 1e4) in context massive[0] at massive[1]."""
    src = StreamSource(model="m", layer=0, corpus="c", tokens=(n_contexts + 2) * PER, heldout_tokens=2 * PER,
                       ctx=CTX, buffer_rows=buffer_rows, dtype="float32")

    def contexts(start):
        return iter(range(start, n_contexts))

    def rows_of(cs):
        x = np.zeros((len(cs) * PER, 4), np.float32)
        tok = np.zeros(len(cs) * PER, np.int64)
        for i, c in enumerate(cs):
            x[i * PER:(i + 1) * PER, 0] = c
            x[i * PER:(i + 1) * PER, 1] = np.arange(PER)
            x[i * PER:(i + 1) * PER, 2] = 1
            tok[i * PER + 4] = special
            if c == massive[0]:
                x[i * PER + massive[1], 3] = 1e4
        return x, tok

    keep = RowFilter([special], outlier_norm=100.0, dtype="float32")
    return LiveStream(rows_of, contexts, src, keep, batch, seed=0, scale=1.0, d=4), src


def test_one_pass_draws_every_ordinary_row_once_and_batches_mix_contexts():
    live, src = _fake_stream()
    n = live.n_chunks
    calls = []
    rows_of = live.rows_of
    live.rows_of = lambda cs: calls.append(len(cs)) or rows_of(cs)
    windows = [live._load(g) for g in range(n + 1)]  # windows 0..n: one pass
    rows = [r for w in windows for r in map(tuple, w[:, :2].int().tolist())]
    want = {(c, p) for c in range(src.train_contexts) for p in range(PER) if p != 4 and (c, p) != (3, 5)}
    assert len(rows) == len(set(rows)) and set(rows) == want  # each ordinary row once; special, massive never
    assert sum(calls) == src.train_contexts  # and each context's forward pass once
    again = live._load(n + 1)  # the next pass: the same rows in another order
    assert set(map(tuple, again[:, :2].int().tolist())) <= want and not torch.equal(again, windows[0])
    # batches are the windows cut in order
    x = torch.cat([live.batch(s) for s in range(sum(len(w) for w in windows) // live.B)])
    assert torch.equal(x, torch.cat(windows)[:len(x)])
    # a batch of 16 rows draws from most of the 2 x 4 contexts a window holds, not from a run of
    # one or two documents, as 16 consecutive rows would
    assert live.per_chunk == 4
    assert np.mean([len(set(b[:, 0].tolist())) for b in x.split(live.B)]) > 0.8 * 2 * live.per_chunk


def test_a_run_of_one_pass_runs_each_forward_pass_once():
    """Reading ahead stops at the run's end: the next pass's first chunk is not computed for nothing."""
    live, src = _fake_stream()
    calls = []
    rows_of = live.rows_of
    live.rows_of = lambda cs: calls.append(len(cs)) or rows_of(cs)
    ordinary = src.train_contexts * (PER - 1) - 1  # the special token of each context, one massive row
    steps = ordinary // live.B
    pre = Prefetcher(live, end=steps)
    for s in range(steps):
        pre.get(s)
    pre.close()
    assert sum(calls) == src.train_contexts
    ref, _ = _fake_stream()
    want = [ref.batch(s) for s in range(steps + 1)]
    assert torch.equal(pre.get(steps), want[steps])  # a step past the end is still served, read in get()


def test_a_stream_sought_to_a_saved_position_continues_identically():
    a, _ = _fake_stream()
    batches = [a.batch(s) for s in range(30)]
    b, _ = _fake_stream()
    b.seek(17, *a.position(17))
    b.read_ahead()
    for s in range(17, 30):
        assert torch.equal(b.batch(s), batches[s])
    b.close()
    # past the last chunk the corpus starts again, with other permutations
    more = torch.cat([a.batch(s) for s in range(30, 200)])
    assert len(set(map(tuple, more[:, :2].tolist()))) < more.shape[0]  # rows repeat: a second pass
    with pytest.raises(ValueError):
        a.batch(500)  # out of order


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny"))


def _train_cmd(tiny, out, tokens=4000, *extra):
    return [sys.executable, "-m", "hsae", "train", "--model", str(tiny / "model"), "--layer", "0",
            "--corpus", str(tiny / "corpus.txt"), "--tokens", str(tokens), "--heldout-tokens", "300",
            "--ctx", str(CTX), "--buffer-rows", "150", "--levels", "4,8", "--l0", "2", "--batch-size", "32",
            "--checkpoint-every", "10", "--update-every", "20", "--out", str(out), "--quiet", *extra]


def _size(d: Path, skip=("train_log.jsonl",)) -> int:
    """Bytes under d; a file the running trainer replaces between the listing and its stat counts 0."""
    total = 0
    for f in d.rglob("*"):
        if f.name not in skip:
            try:
                total += f.stat().st_size if f.is_file() else 0
            except FileNotFoundError:  # a .tmp published (renamed) meanwhile: its bytes are in the new name
                pass
    return total


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run(_train_cmd(tiny, out), check=True)
    return out


def test_killed_streaming_run_resumes_to_identical_weights(tiny, reference, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    p = subprocess.Popen(_train_cmd(tiny, out))
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        log = out / "train_log.jsonl"
        if (out / "checkpoint.safetensors").exists() and log.exists() and len(log.read_text().splitlines()) > 5:
            break
        time.sleep(0.02)
    p.kill()
    assert p.wait() == -9
    assert not (out / "model.safetensors").exists()
    subprocess.run(_train_cmd(tiny, out), check=True)
    ta, tb = load_file(str(reference / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    steps = [json.loads(ln)["step"] for ln in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == [json.loads(ln)["step"] for ln in (reference / "train_log.jsonl").read_text().splitlines()]


def test_disk_use_does_not_grow_with_tokens(tiny, reference, tmp_path):
    """Only the held-out store, the checkpoint and the model are ever written, whatever --tokens is."""
    out = tmp_path / "big"
    p = subprocess.Popen(_train_cmd(tiny, out, 12000))
    peak = 0
    while p.poll() is None:
        if out.exists():
            peak = max(peak, _size(out))
        time.sleep(0.01)
    assert p.returncode == 0
    model = (out / "model.safetensors").stat().st_size
    assert sorted(f.name for f in out.iterdir() if f.name != ".hsae.lock") == ["config.json", "heldout", "model.safetensors", "stream.json",
                                                     "train_log.jsonl"]
    assert _size(out / "heldout") == _size(reference / "heldout")  # the same 300 held-out tokens
    assert abs(_size(out) - _size(reference)) < 1024  # config.json and stream.json differ by a few digits
    # a checkpoint holds the weights, Adam's two moments and small statistics: under 4 models
    assert peak <= _size(out) + 4 * model + 65536


def test_held_out_store_and_training_rows_are_those_a_collection_holds(tiny, reference, tmp_path):
    from tiny import collect_tiny

    held = Store(reference / "heldout")
    assert held.meta["heldout"] is True and held.split(0.05) == (range(0, 0), range(0, held.rows))
    # the collected store of the same corpus, from its first token: its first rows are the held-out store
    store = Store(collect_tiny(tiny, 0, 4000, "c", "--dtype", "float16"))
    np.testing.assert_array_equal(store.read(0, held.rows), held.read(0, held.rows))
    # and the live stream's rows of one pass are the collected store's rows after them, filtered by
    # the rule of data/ordinary.py with the held-out store's numbers
    from hsae.data.models import load_model
    from hsae.data.live import open_live

    src = StreamSource(**json.loads((reference / "stream.json").read_text()))
    lm, tok = load_model(src.model)
    live = open_live(lm, tok, src, reference / "heldout", 32, 0, progress=False)
    x = torch.cat([live._halves_of(g)[h] for g in range(live.n_chunks) for h in (0, 1)]).float().numpy()
    ours = live.keep(store.read(held.rows, store.rows), store.read_extra("tokens", held.rows, store.rows))
    assert x.shape == ours.shape and x.shape[0] > 3000
    key = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731  rows as a sorted multiset
    np.testing.assert_array_equal(key(x), key(ours.astype(np.float32)))


def test_a_streaming_run_evaluates_and_explores_like_a_store_based_one(reference, tmp_path):
    assert main(["eval", str(reference), "--json", str(tmp_path / "e.json"), "--quiet"]) == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    held = Store(reference / "heldout")
    # every ordinary row of the held-out store is evaluated (not only its tail, as for a store)
    assert ev["acts"] == str(reference / "heldout") and ev["n_rows"] == int(held.ordinary.sum())
    assert 0 < ev["var_explained"] <= 1
    assert main(["contexts", str(reference), "--k", "3", "--quiet"]) == 0
    assert main(["browse", str(reference), "--out", str(tmp_path / "f.html"), "--quiet"]) == 0
    assert (tmp_path / "f.html").stat().st_size > 1000


def test_bad_streaming_command_lines_are_one_line_errors(tiny, reference, tmp_path, capsys):
    assert main(["train", "--model", str(tiny / "model"), "--layer", "0", "--out", str(tmp_path / "x")]) == 2
    assert "needs --corpus, --tokens" in capsys.readouterr().err
    assert main(_train_cmd(tiny, tmp_path / "y", 200)[3:]) == 2  # fewer tokens than held out
    assert main(["train", "--acts", str(reference / "heldout"), "--out", str(tmp_path / "z")]) == 2
    assert "never trained on" in capsys.readouterr().err
    # another source in the same run directory
    assert main(_train_cmd(tiny, reference, 5000)[3:]) == 2
    assert "another source" in capsys.readouterr().err


def test_closing_does_not_wait_for_the_window_being_computed():
    """A run that ends (or is stopped) while the next window's forward passes run returns at once."""
    live, _ = _fake_stream(n_contexts=400, buffer_rows=150 * PER)
    rows_of = live.rows_of

    def slow(cs):
        time.sleep(0.3)
        return rows_of(cs)

    live.rows_of = slow
    live.read_ahead()
    first = live.batch(0)  # window 0 now, window 1 (150 contexts: 3 pieces of 64) in the background
    time.sleep(0.1)
    t0 = time.perf_counter()
    live.close()
    assert time.perf_counter() - t0 < 0.5  # the piece under way, not the window's 3 pieces (0.9 s)
    again, _ = _fake_stream(n_contexts=400, buffer_rows=150 * PER)
    assert torch.equal(live.batch(0), again.batch(0)) and torch.equal(first, again.batch(0))


def test_a_window_without_ordinary_rows_is_skipped_and_a_stream_without_any_is_an_error():
    """Windows of special tokens only (a chunk of empty documents) hold no rows: batches continue
    with the next window; only a stream with no ordinary row at all is a (one-line) user error."""
    from hsae.config import UserError

    live, src = _fake_stream()
    rows_of = live.rows_of

    def blank_early(cs):  # contexts 0-11 (the first three chunks) are all special tokens
        x, tok = rows_of(cs)
        tok[np.repeat(np.asarray(cs) < 12, PER)] = 7
        return x, tok

    live.rows_of = blank_early
    assert [len(live._load(g)) for g in range(3)] == [0, 0, 0]
    first = live.batch(0)
    assert first.shape == (live.B, 4) and (first[:, 0] >= 12).all()
    live, _ = _fake_stream()
    live.rows_of = lambda cs: (rows_of(cs)[0], np.full(len(cs) * PER, 7))
    with pytest.raises(UserError, match="no ordinary rows"):
        live.batch(0)
