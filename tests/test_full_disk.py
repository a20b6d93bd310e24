"""A full disk (or a file-size limit) mid-way through collect and train: one line naming the file,
exit 2, nothing half-written published; after space is freed the same command ends identical
to an uninterrupted run. A small tmpfs where the test may mount one (root), RLIMIT_FSIZE anywhere."""

import json
import os
import resource
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hsae.cli import main
from tiny import build_tiny


def _can_mount(tmp_path) -> bool:
    if os.geteuid() != 0:
        return False
    d = tmp_path / "probe"
    d.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(d)], check=True)
    return ok


class Disk:
    """A directory with too little room: a small tmpfs, or a limit on every file's size."""

    def __init__(self, mode, where):
        self.mode, self.where = mode, where

    def run(self, cmd, room):
        """Run cmd with room[mode] bytes (tmpfs: the whole disk; fsize: per file); CompletedProcess."""
        if self.mode == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room[self.mode]}", "tmpfs", str(self.where)],
                           check=True)
            return subprocess.run(cmd, capture_output=True, text=True)
        n = room[self.mode]  # writes past n bytes fail with EFBIG (Python ignores SIGXFSZ)
        return subprocess.run(cmd, capture_output=True, text=True,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)))

    def free(self):
        """Make room (the fsize limit only ever applied to the first run)."""
        if self.mode == "tmpfs":
            subprocess.run(["mount", "-o", "remount,size=64m", str(self.where)], check=True)


@pytest.fixture(params=["tmpfs", "fsize"])
def disk(request, tmp_path):
    where = tmp_path / "disk"
    where.mkdir()
    if request.param == "tmpfs" and not _can_mount(tmp_path):
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights); the fsize case covers the rest")
    yield Disk(request.param, where)
    if request.param == "tmpfs":
        subprocess.run(["umount", str(where)], check=False)


def _hsae(*args):
    return [sys.executable, "-m", "hsae", *args]


def _assert_reported(p, where):
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "cannot write" in err[0] and str(where) in err[0], err[0]
    assert not list(where.rglob("*.tmp")), "a half-written file was left behind"


def _collect(tiny, out):
    return _hsae("collect", "--model", str(tiny / "model"), "--layer", "0", "--corpus", str(tiny / "corpus.txt"),
                 "--out", str(out), "--ctx", "16", "--tokens", "3000", "--shard-rows", "150", "--dtype", "float32",
                 "--quiet")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny"))


def test_collect_on_a_full_disk_resumes_to_the_same_store(disk, tiny, tmp_path):
    where = disk.where
    subprocess.run(_collect(tiny, tmp_path / "ref"), check=True)
    out = where / "s"
    p = disk.run(_collect(tiny, out), {"tmpfs": 160_000, "fsize": 16_000})  # tmpfs: ~8 of 20 shards fit
    _assert_reported(p, where)
    assert not (out / "manifest.json").exists()
    disk.free()
    subprocess.run(_collect(tiny, out), check=True)
    ref, got = (json.loads((d / "manifest.json").read_text()) for d in (tmp_path / "ref", out))
    assert [s["sha256"] for s in got["shards"]] == [s["sha256"] for s in ref["shards"]]
    assert got["scale"] == ref["scale"] and got["excluded"]["sha256"] == ref["excluded"]["sha256"]


TRAIN = ("--levels", "3,6", "--l0", "1", "--steps", "400", "--batch-size", "128", "--checkpoint-every", "25",
         "--update-every", "50", "--quiet")


def test_train_on_a_full_disk_resumes_to_the_same_weights(disk, tmp_path):
    where = disk.where
    assert main(["synth", "--out", str(tmp_path / "d"), "--d", "16", "--branching", "3,2", "--tokens", "20000",
                 "--quiet"]) == 0
    subprocess.run(_hsae("train", "--acts", str(tmp_path / "d"), "--out", str(tmp_path / "ref"), *TRAIN), check=True)
    out = where / "run"
    cmd = _hsae("train", "--acts", str(tmp_path / "d"), "--out", str(out), *TRAIN)
    # room for the checkpoint (~12 kB) but not for the whole log (~16 kB): it fails part-way
    p = disk.run(cmd, {"tmpfs": 40_000, "fsize": 14_000})
    _assert_reported(p, where)
    assert not (out / "model.safetensors").exists()
    steps = [json.loads(ln)["step"] for ln in (out / "train_log.jsonl").read_text().splitlines() if ln.endswith("}")]
    assert 0 < max(steps) < 399, "the disk should fill part-way through the run"
    disk.free()
    subprocess.run(cmd, check=True)
    ta, tb = (load_file(str(d / "model.safetensors")) for d in (tmp_path / "ref", out))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    log = lambda d: [json.loads(ln)["step"] for ln in (d / "train_log.jsonl").read_text().splitlines()]  # noqa: E731
    assert log(out) == log(tmp_path / "ref")


def test_synth_on_a_full_disk_is_one_line_and_reruns_to_the_same_store(disk, tmp_path):
    args = ("--d", "16", "--branching", "3,2", "--tokens", "40000", "--quiet")
    subprocess.run(_hsae("synth", "--out", str(tmp_path / "ref"), *args), check=True)
    out = disk.where / "s"
    _assert_reported(disk.run(_hsae("synth", "--out", str(out), *args), {"tmpfs": 1_500_000, "fsize": 200_000}),
                     disk.where)
    assert not (out / "manifest.json").exists()
    disk.free()
    subprocess.run(_hsae("synth", "--out", str(out), *args), check=True)
    ref, got = (json.loads((d / "manifest.json").read_text()) for d in (tmp_path / "ref", out))
    assert [s["sha256"] for s in got["shards"]] == [s["sha256"] for s in ref["shards"]]
