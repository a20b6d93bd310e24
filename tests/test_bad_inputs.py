"""Every subcommand against a matrix of damaged inputs: exit 2, one line naming the damaged file or
directory, never a traceback.

To add a subcommand: give it a row in COMMANDS (its argv with a {placeholder} for the input it
reads) and the families of damage that input can have; the matrix is built from that.
"""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hsae.cli import build_parser, main
from tiny import build_tiny, collect_tiny, train_tiny


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A collected store, two trained runs (a, b) with contexts and eval.json, a corpus, a model."""
    root = tmp_path_factory.mktemp("good")
    build_tiny(root, docs=200)
    store = collect_tiny(root, 0, 1500, "acts", "--shard-rows", "300")
    for name in "ab":
        run = train_tiny(store, root / name, "4,8", "2", 64, "--holdout", "0.2", "--seed", str(ord(name)))
        assert main(["contexts", str(run), "--k", "3", "--quiet"]) == 0
        assert main(["eval", str(run), "--quiet", "--chance-draws", "0", "--json", str(run / "eval.json")]) == 0
    assert main(["export", str(root / "a"), "--format", "saelens", "--out", str(root / "sae"), "--quiet"]) == 0
    return root


def _copy(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".hsae.lock"))
    return dst


def _json_edit(path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def _shard(store):
    return sorted(store.glob("shard_*.safetensors"))[0]


def _rewrite_shard(store, fn):
    f = _shard(store)
    t = load_file(str(f))
    save_file(fn(t), str(f))


# ---- damage: each takes the good fixture and a scratch dir, returns the damaged path ----------
def store_damage(name, good, tmp):
    s = _copy(good / "acts", tmp / "acts")
    m = s / "manifest.json"
    if name == "missing":
        shutil.rmtree(s)
    elif name == "empty-dir":
        shutil.rmtree(s)
        s.mkdir()
    elif name == "manifest-not-json":
        m.write_text('{"format": "hsae-store", ')
    elif name == "manifest-missing-key":
        _json_edit(m, lambda d: d.pop("rows"))
    elif name == "manifest-wrong-type":
        _json_edit(m, lambda d: d.update(d="thirty-two"))
    elif name == "manifest-unknown-field":
        _json_edit(m, lambda d: d.update(colour="blue"))
    elif name == "manifest-shard-outside":
        _json_edit(m, lambda d: d["shards"][0].update(file="../../etc/passwd"))
    elif name == "shard-truncated":
        f = _shard(s)
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif name == "rows-disagree":
        _rewrite_shard(s, lambda t: {k: v[:-5] for k, v in t.items()})
    elif name == "dtype-disagree":
        _rewrite_shard(s, lambda t: {**t, "acts": t["acts"].astype(np.float16)})
    elif name == "zero-rows":
        _json_edit(m, lambda d: d.update(rows=0, shards=[]))
    elif name == "npy-1d":
        s = tmp / "x.npy"
        np.save(s, np.zeros(10, np.float32))
    elif name == "npy-object":  # loading it would unpickle
        s = tmp / "x.npy"
        np.save(s, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return s


def run_damage(name, good, tmp):
    r = _copy(good / "a", tmp / "a")
    c, mo = r / "config.json", r / "model.safetensors"
    if name == "missing":
        shutil.rmtree(r)
    elif name == "config-not-json":
        c.write_text("levels: 4,8")
    elif name == "config-missing-key":
        _json_edit(c, lambda d: d.pop("levels"))
    elif name == "config-wrong-type":
        _json_edit(c, lambda d: d.update(levels="4,8"))
    elif name == "config-unknown-field":
        _json_edit(c, lambda d: d.update(learning_rate=1))
    elif name == "model-truncated":
        mo.write_bytes(mo.read_bytes()[:100])
    elif name == "model-misshaped":
        t = load_file(str(mo))
        t["levels.1.W_dec"] = t["levels.1.W_dec"][:, :5].copy()
        save_file(t, str(mo))
    elif name == "model-bad-parent":
        t = load_file(str(mo))
        t["levels.1.parent"] = t["levels.1.parent"] + 100
        save_file(t, str(mo))
    elif name == "config-levels-disagree":
        _json_edit(c, lambda d: d.update(levels=[4, 9]))
    return r


def contexts_damage(name, good, tmp):
    r = _copy(good / "a", tmp / "a")
    if name == "contexts-from-another-run":
        shutil.copy(good / "b" / "contexts.safetensors", r / "contexts.safetensors")
    elif name == "contexts-garbage":
        (r / "contexts.safetensors").write_bytes(b"\x00" * 64)
    elif name == "contexts-missing":
        (r / "contexts.safetensors").unlink()
    elif name == "explanations-malformed":
        (r / "explanations.json").write_text('{"0:1": "time", "zero": 3}')
    elif name == "explanations-not-json":
        (r / "explanations.json").write_text('{"0:1": ')
    return r


def eval_damage(name, good, tmp):
    r = _copy(good / "a", tmp / "a")
    e = r / "eval.json"
    if name == "eval-not-json":
        e.write_bytes(b"\xff\xfe{")
    elif name == "eval-not-an-eval":
        e.write_text("[1, 2, 3]")
    elif name == "eval-missing":
        e.unlink()
    return r


def config_damage(name, good, tmp):
    c = tmp / "cfg.json"
    c.write_text({"cfg-not-json": "{", "cfg-wrong-type": '{"steps": "many"}', "cfg-unknown": '{"step": 5}',
                  "cfg-not-object": "[5]"}[name])
    return c


def sae_damage(name, good, tmp):
    s = _copy(good / "sae" / "level_0", tmp / "sae")
    if name == "sae-cfg-not-json":
        (s / "cfg.json").write_text("{")
    elif name == "sae-weights-truncated":
        w = s / "sae_weights.safetensors"
        w.write_bytes(w.read_bytes()[:50])
    elif name == "sae-missing":
        shutil.rmtree(s)
    return s


def corpus_damage(name, good, tmp):
    if name == "corpus-missing":
        return tmp / "nope.txt"
    if name == "corpus-empty":
        (tmp / "empty.txt").write_text("")
        return tmp / "empty.txt"
    (tmp / "bad.jsonl").write_text('{"text": "a"}\n{"txt": 1}\n')  # corpus-bad-jsonl
    return tmp / "bad.jsonl"


def model_damage(name, good, tmp):
    m = _copy(good / "model", tmp / "model")
    if name == "model-dir-missing":
        shutil.rmtree(m)
    elif name == "model-dir-pickle-only":  # weights only as a pickle: must be refused, never unpickled
        for f in m.glob("*.safetensors"):
            f.unlink()
        (m / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    elif name == "model-dir-bad-config":
        (m / "config.json").write_text("{")
    return m


FAMILIES = {
    "store": (store_damage, ["missing", "empty-dir", "manifest-not-json", "manifest-missing-key", "manifest-wrong-type",
                             "manifest-unknown-field", "manifest-shard-outside", "shard-truncated", "rows-disagree",
                             "dtype-disagree", "zero-rows", "npy-1d", "npy-object"]),
    "run": (run_damage, ["missing", "config-not-json", "config-missing-key", "config-wrong-type",
                         "config-unknown-field", "model-truncated", "model-misshaped", "model-bad-parent",
                         "config-levels-disagree"]),
    "run config": (run_damage, ["missing", "config-not-json", "config-missing-key", "config-wrong-type",
                                "config-unknown-field"]),
    "contexts": (contexts_damage, ["contexts-from-another-run", "contexts-garbage", "contexts-missing"]),
    "explanations": (contexts_damage, ["explanations-malformed", "explanations-not-json"]),
    "eval": (eval_damage, ["eval-not-json", "eval-not-an-eval", "eval-missing"]),
    "config": (config_damage, ["cfg-not-json", "cfg-wrong-type", "cfg-unknown", "cfg-not-object"]),
    "sae": (sae_damage, ["sae-cfg-not-json", "sae-weights-truncated", "sae-missing"]),
    "corpus": (corpus_damage, ["corpus-missing", "corpus-empty", "corpus-bad-jsonl"]),
    "model": (model_damage, ["model-dir-missing", "model-dir-pickle-only", "model-dir-bad-config"]),
}

# subcommand row -> (argv with {X} for the damaged input, {out} for a fresh output, the families of X)
COMMANDS = {
    "train": (["train", "--acts", "{X}", "--out", "{out}", "--levels", "4,8", "--steps", "5", "--quiet"], ["store"]),
    "train --config": (["train", "--acts", "{acts}", "--out", "{out}", "--config", "{X}", "--quiet"], ["config"]),
    "ablate": (["ablate", "--acts", "{X}", "--out", "{out}", "--variants", "hsae", "--levels", "4,8", "--steps", "5",
                "--quiet"], ["store"]),
    "ablate --config": (["ablate", "--acts", "{acts}", "--out", "{out}", "--config", "{X}", "--quiet"], ["config"]),
    "eval": (["eval", "{X}", "--quiet"], ["run"]),
    "eval --acts": (["eval", "{run}", "--acts", "{X}", "--quiet"], ["store"]),
    "contexts": (["contexts", "{X}", "--quiet"], ["run"]),
    "contexts --acts": (["contexts", "{run}", "--acts", "{X}", "--quiet"], ["store"]),
    "export saelens": (["export", "{X}", "--format", "saelens", "--out", "{out}", "--quiet"], ["run"]),
    "export neuronpedia": (["export", "{X}", "--format", "neuronpedia", "--out", "{out}", "--quiet"],
                           ["run", "contexts", "explanations"]),
    "import-saelens": (["import-saelens", "{X}", "--acts", "{acts}", "--out", "{out}"], ["sae"]),
    "import-saelens --acts": (["import-saelens", "{sae}", "--acts", "{X}", "--out", "{out}"], ["store"]),
    "steer": (["steer", "{X}", "--feature", "1:0", "--strength", "2", "--prompt", "the cat", "--quiet"], ["run"]),
    "judge": (["judge", "{X}", "--local", "--pairs", "2", "--no-cache", "--quiet"], ["run", "contexts"]),
    "explain": (["explain", "{X}", "--local", "--no-cache", "--quiet"], ["run", "contexts", "explanations"]),
    "browse": (["browse", "{X}", "--out", "{out}/f.html", "--quiet"], ["run", "contexts", "explanations"]),
    "report": (["report", "{X}", "--out", "{out}"], ["run config", "eval"]),  # reads no model
    "compare": (["compare", "{X}/eval.json"], ["eval"]),
    "collect": (["collect", "--model", "{model}", "--layer", "0", "--corpus", "{X}", "--out", "{out}", "--ctx", "16",
                 "--tokens", "100", "--quiet"], ["corpus"]),
    "collect --model": (["collect", "--model", "{X}", "--layer", "0", "--corpus", "{corpus}", "--out", "{out}",
                         "--ctx", "16", "--tokens", "100", "--quiet"], ["model"]),
}
# synth reads no file: its bad inputs are values
SYNTH_BAD = [["--d", "0"], ["--branching", "0,2"], ["--tokens", "1"], ["--active", "-1"], ["--noise", "nan"],
             ["--preset", "nope"], ["--branching-range", "5,2"], ["--p-no-child", "2"], ["--root-group", "0"]]

MATRIX = [(row, fam, case) for row, (_, fams) in COMMANDS.items() for fam in fams for case in FAMILIES[fam][1]]


def test_every_subcommand_has_a_row():
    """A new subcommand cannot be forgotten: every one of the parser's has a row (synth: SYNTH_BAD)."""
    sub = next(a for a in build_parser()._actions if a.dest == "cmd")
    assert set(sub.choices) == {row.split()[0] for row in COMMANDS} | {"synth"}


def _one_line_error(capsys, culprit: str):
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert "Traceback" not in cap.err and len(err) == 1 and err[0].startswith("hsae: error: "), cap.err
    assert culprit in err[0], f"the message should name {culprit}: {err[0]}"
    return err[0]


@pytest.mark.parametrize("row,family,case", MATRIX, ids=[f"{r}|{c}" for r, _, c in MATRIX])
def test_damaged_input_is_one_line_exit_2(row, family, case, good, tmp_path, capsys):
    bad = FAMILIES[family][0](case, good, tmp_path)
    argv, _ = COMMANDS[row]
    fill = {"X": str(bad), "out": str(tmp_path / "out"), "acts": str(good / "acts"), "run": str(good / "a"),
            "sae": str(good / "sae" / "level_0"), "model": str(good / "model"), "corpus": str(good / "corpus.txt")}
    argv = [a.format(**fill) for a in argv]
    capsys.readouterr()
    assert main(argv) == 2
    _one_line_error(capsys, bad.name)
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("bad", SYNTH_BAD, ids=[" ".join(b) for b in SYNTH_BAD])
def test_synth_bad_values_are_one_line_exit_2(bad, tmp_path, capsys):
    code = main(["synth", "--out", str(tmp_path / "s"), "--tokens", "100", "--quiet", *bad])
    assert code == 2
    _one_line_error(capsys, bad[0].lstrip("-").split("-")[0])
    assert not (tmp_path / "s").exists()



@pytest.mark.parametrize("cmd", sorted({row.split()[0] for row in COMMANDS} | {"synth"}))
def test_a_bad_command_line_is_one_line_exit_2(cmd, capsys):
    """argparse's own errors (unknown flag, missing argument) too: one line, not the usage."""
    for argv in ([cmd, "--no-such-flag"], [cmd, "--quiet", "--tokens", "x"] if cmd == "synth" else [cmd]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"hsae {cmd}: error:" in err[0], err


OUT_ROWS = sorted(row for row, (argv, _) in COMMANDS.items() if any("{out}" in a for a in argv))


@pytest.mark.parametrize("where", ["is-a-file", "under-a-file"])
@pytest.mark.parametrize("row", OUT_ROWS)
def test_an_output_where_a_file_is_in_the_way_is_one_line(row, where, good, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    out = blocker if where == "is-a-file" else blocker / "out"
    argv, fams = COMMANDS[row]
    fill = {"X": str(good / {"store": "acts", "config": "a/config.json", "sae": "sae/level_0", "corpus": "corpus.txt",
                             "model": "model"}.get(fams[0], "a")),
            "out": str(out), "acts": str(good / "acts"), "run": str(good / "a"), "sae": str(good / "sae" / "level_0"),
            "model": str(good / "model"), "corpus": str(good / "corpus.txt")}
    capsys.readouterr()
    assert main([a.format(**fill) for a in argv]) == 2
    _one_line_error(capsys, "blocker")
    assert blocker.read_text() == "not a directory"
