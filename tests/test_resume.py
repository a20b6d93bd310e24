"""A run killed at any point and resumed ends with the same weights as an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from hsae.cli import main
from hsae.train.checkpoint import save_checkpoint

STEPS = 1500


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "synth"
    assert main(["synth", "--out", str(out), "--d", "16", "--branching", "3,2", "--tokens", "20000", "--quiet"]) == 0
    return out


def _cmd(synth, out):
    return [sys.executable, "-m", "hsae", "train", "--acts", str(synth), "--out", str(out), "--levels", "3,6",
            "--l0", "1", "--steps", str(STEPS), "--batch-size", "128", "--checkpoint-every", "25",
            "--update-every", "50", "--quiet"]


def _stop_midway(cmd, out, sig):
    p = subprocess.Popen(cmd)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        log = out / "train_log.jsonl"
        if (out / "checkpoint.safetensors").exists() and log.exists() and len(log.read_text().splitlines()) > 40:
            break
        time.sleep(0.02)
    p.send_signal(sig)
    return p.wait()


def _same_weights(a, b):
    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


@pytest.fixture(scope="module")
def reference(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run(_cmd(synth, out), check=True)
    return out


@pytest.mark.parametrize("sig,code", [(signal.SIGKILL, -9), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_killed_run_resumes_to_identical_weights(synth, reference, tmp_path, sig, code):
    out = tmp_path / "run"
    assert _stop_midway(_cmd(synth, out), out, sig) == code
    assert not (out / "model.safetensors").exists()
    steps_done = [json.loads(l)["step"] for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert 0 < max(steps_done) < STEPS - 1
    subprocess.run(_cmd(synth, out), check=True)
    _same_weights(reference, out)
    # the log has each step once, as if never interrupted
    ref_log = (reference / "train_log.jsonl").read_text().splitlines()
    log = (out / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in log] == [json.loads(l)["step"] for l in ref_log]


@pytest.mark.parametrize("kind", ["pickle", "format 2"])
def test_checkpoint_from_an_older_hsae_is_refused_in_one_line(tmp_path, capsys, kind):
    """A checkpoint whose state means something else (an older controller, no live masks), or
    an old pickled checkpoint.pt, cannot be continued as the same run: one line, exit 2."""

    assert main(["synth", "--out", str(tmp_path / "d"), "--d", "8", "--branching", "2,2", "--tokens", "4000",
                 "--quiet"]) == 0
    run = tmp_path / "run"
    args = ["train", "--acts", str(tmp_path / "d"), "--out", str(run), "--levels", "2,4", "--l0", "1",
            "--steps", "40", "--batch-size", "64", "--quiet"]
    import json
    from hsae.config import TrainConfig

    run.mkdir()
    cfg = TrainConfig(levels=[2, 4], l0=[1.0], steps=40, batch_size=64, acts=str(tmp_path / "d"), d=8)
    (run / "config.json").write_text(cfg.to_json())
    state = {"format": 2, "step": 10, "assigned": False, "ctrl": {"lambdas": [0.1, 0.1], "ema": None}}
    if kind == "pickle":
        torch.save(state, run / "checkpoint.pt")
    else:
        save_checkpoint(state, run / "checkpoint.safetensors")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "older hsae" in err[0]
    assert json.loads((run / "config.json").read_text())["steps"] == 40


class _Evil:
    """Unpickling this would create a file: a received checkpoint must never get that far."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("kind", ["code", "garbage"])
def test_a_checkpoint_that_would_run_code_or_is_corrupt_is_refused_in_one_line(tmp_path, capsys, kind):
    from hsae.config import TrainConfig

    assert main(["synth", "--out", str(tmp_path / "d"), "--d", "8", "--branching", "2,2", "--tokens", "4000",
                 "--quiet"]) == 0
    run, marker = tmp_path / "run", tmp_path / "ran"
    run.mkdir()
    cfg = TrainConfig(levels=[2, 4], l0=[1.0], steps=40, batch_size=64, acts=str(tmp_path / "d"), d=8)
    (run / "config.json").write_text(cfg.to_json())
    if kind == "code":
        # the pickle under the old name and under the new one: neither is ever unpickled
        torch.save({"format": 2, "step": _Evil(marker)}, run / "checkpoint.pt")
        torch.save({"format": 3, "step": _Evil(marker)}, run / "checkpoint.safetensors")
    else:
        (run / "checkpoint.safetensors").write_bytes(b"\x80\x04 not a checkpoint")
    assert main(["train", "--acts", str(tmp_path / "d"), "--out", str(run), "--levels", "2,4", "--l0", "1",
                 "--steps", "40", "--batch-size", "64", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreadable checkpoint" in err[0]
    assert not marker.exists()
