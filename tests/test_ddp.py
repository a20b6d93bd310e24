"""Data parallel under torchrun: 2 CPU processes (gloo) train the same model as 1 process with
the same global batch, and a run stopped in one world size resumes in the other."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hsae.cli import main
from hsae.train.checkpoint import load_checkpoint

STEPS = 300
# Co-activation similarity and ghost grads exercise every statistic that ranks must share.
ARGS = ["--levels", "3,6", "--l0", "1", "--steps", str(STEPS), "--batch-size", "128", "--update-every", "20",
        "--checkpoint-every", "25", "--similarity", "coactivation", "--device", "cpu", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on a small machine


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "synth"
    assert main(["synth", "--out", str(out), "--d", "16", "--branching", "3,2", "--tokens", "20000", "--quiet"]) == 0
    return out


def _cmd(synth, out, procs, entry=("-m", "hsae"), args=ARGS):
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)]
              if procs > 1 else [sys.executable])
    return [*launch, *entry, "train", "--acts", str(synth), "--out", str(out), *args]


def _run(synth, out, procs):
    subprocess.run(_cmd(synth, out, procs), check=True, env=ENV, timeout=300)


def _stop_after_checkpoint(synth, out, procs):
    """Start a run, SIGTERM it once a checkpoint exists; returns the step it stopped at."""
    p = subprocess.Popen(_cmd(synth, out, procs), env=ENV)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and not (out / "checkpoint.safetensors").exists():
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
    p.wait(timeout=120)
    assert (out / "checkpoint.safetensors").exists() and not (out / "model.safetensors").exists()
    return load_checkpoint(out / "checkpoint.safetensors")["step"]


def _assert_same_run(a: Path, b: Path):
    """Same forest, same weights up to float summation order, same training log."""
    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert ta.keys() == tb.keys()
    for k in ta:
        if k.endswith("parent"):
            assert torch.equal(ta[k], tb[k]), k
        else:
            assert torch.allclose(ta[k], tb[k], rtol=1e-4, atol=1e-5), (k, (ta[k] - tb[k]).abs().max())
    la = [json.loads(line) for line in (a / "train_log.jsonl").read_text().splitlines()]
    lb = [json.loads(line) for line in (b / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    for ra, rb in zip(la, lb):
        assert ra["l0"] == rb["l0"] and ra["dead"] == rb["dead"], ra["step"]
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
        assert ra["lambda"] == pytest.approx(rb["lambda"], rel=1e-5)
    # dead features were part of the comparison: restarted (train/resample.py), or given ghost grads
    assert any(sum(r.get("restarted", [])) > 0 or sum(r["ghost"]) > 0 for r in la)


@pytest.fixture(scope="module")
def reference(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    _run(synth, out, 1)
    return out


def test_two_processes_equal_one(synth, reference, tmp_path):
    _run(synth, tmp_path / "run", 2)
    _assert_same_run(reference, tmp_path / "run")


@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_resume_on_another_world_size(synth, reference, tmp_path, first, then):
    out = tmp_path / "run"
    assert 0 < _stop_after_checkpoint(synth, out, first) < STEPS
    _run(synth, out, then)
    _assert_same_run(reference, out)


# Run by every rank: train, then write the count of gloo's threads still running after `hsae train`
# returned to a file of its own (ranks share stdout, where two prints can interleave).
_THREADS_LEFT = """
import os, sys
from hsae.cli import main
rc = main(sys.argv[2:])
names = [open(f"/proc/self/task/{t}/comm").read() for t in os.listdir("/proc/self/task")]
with open(os.path.join(sys.argv[1], "rank" + os.environ["RANK"]), "w") as f:
    f.write(str(sum("gloo" in n for n in names)))
sys.exit(rc)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc")
def test_process_group_ends_with_the_run(synth, tmp_path):
    # A group that outlives `hsae train` keeps gloo's threads alive into interpreter shutdown, where
    # one freeing a tensor aborts the rank (about one run in ten): the threads must end with the run.
    script = tmp_path / "threads_left.py"
    script.write_text(_THREADS_LEFT)
    args = [a if a != str(STEPS) else "30" for a in ARGS]
    cmd = _cmd(synth, tmp_path / "run", 2, entry=(str(script), str(tmp_path)), args=args)
    subprocess.run(cmd, env=ENV, timeout=300, check=True)
    assert {r: (tmp_path / f"rank{r}").read_text() for r in (0, 1)} == {0: "0", 1: "0"}
