"""One writer per output: a second writer, or a reader of an output being written, exits 2 with
one line naming the holder's PID; a holder killed with -9 leaves no stale lock."""

import subprocess
import sys
import time

import pytest

from hsae.cli import READS, WRITES, main
from hsae.files import output_lock

# a valid-looking command line per subcommand; OUT / RUN / ACTS are replaced by the locked directory
ARGS = {
    "synth": ["--out", "OUT"],
    "collect": ["--model", "m", "--layer", "0", "--corpus", "c", "--out", "OUT"],
    "train": ["--acts", "ACTS", "--out", "OUT", "--levels", "2,4"],
    "ablate": ["--acts", "ACTS", "--out", "OUT"],
    "export": ["RUN", "--format", "saelens", "--out", "OUT"],
    "import-saelens": ["sae", "--acts", "ACTS", "--out", "OUT"],
    "contexts": ["RUN"],
    "explain": ["RUN", "--local"],
    "eval": ["RUN"],
    "report": ["RUN", "--out", "OUT"],
    "steer": ["RUN", "--feature", "0:0", "--strength", "1", "--prompt", "x"],
    "judge": ["RUN", "--local"],
    "browse": ["RUN", "--out", "OUT/x.html"],
}


def _hold(path):
    """A child process holding the writer's lock of `path` until killed; returns it once it holds it."""
    code = ("import sys, time; from hsae.files import output_lock\n"
            "with output_lock(sys.argv[1], 'train'):\n    print('held', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    d = tmp_path_factory.mktemp("locked") / "dir"
    p = _hold(d)
    yield d, p.pid
    p.kill()
    p.wait()


@pytest.mark.parametrize("cmd", sorted(WRITES))
def test_a_second_writer_exits_2_naming_the_holder(cmd, held, tmp_path, capsys):
    d, pid = held
    role = {"out": "OUT", "run": "RUN"}[WRITES[cmd]]
    args = [cmd] + [str(d) if a == role else (str(tmp_path / a) if a in ("OUT", "RUN", "ACTS") else a)
                    for a in ARGS[cmd]]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"PID {pid}" in err[0] and "being written" in err[0], err


@pytest.mark.parametrize("cmd,key", sorted((c, k) for c, keys in READS.items() for k in keys))
def test_a_reader_of_an_output_being_written_says_so(cmd, key, held, tmp_path, capsys):
    d, pid = held
    role = {"acts": "ACTS", "run": "RUN", "runs": "RUN"}[key]
    if role not in ARGS[cmd]:  # e.g. eval's store is optional: give it
        extra = ["--acts", str(d)]
    else:
        extra = []
    args = [cmd] + [str(d) if a == role else (str(tmp_path / a) if a in ("OUT", "RUN", "ACTS") else a)
                    for a in ARGS[cmd]] + extra
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"PID {pid}" in err[0] and "written" in err[0], err


def test_two_trainings_of_one_run_and_a_holder_killed_with_9(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "d"), "--d", "8", "--branching", "2,2", "--tokens", "20000",
                 "--quiet"]) == 0
    args = ["train", "--acts", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--levels", "2,4", "--l0", "1",
            "--steps", "20000", "--batch-size", "64", "--checkpoint-every", "50", "--quiet"]
    p = subprocess.Popen([sys.executable, "-m", "hsae", *args])
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "run" / "checkpoint.safetensors").exists():
        time.sleep(0.05)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"PID {p.pid}" in err[0] and "hsae train" in err[0], err
    assert main(["eval", str(tmp_path / "run")]) == 2
    assert "still being written" in capsys.readouterr().err
    p.kill()
    assert p.wait() == -9
    # nothing stale: a reader now only finds an unfinished run, and a new writer gets the lock
    assert main(["eval", str(tmp_path / "run")]) == 2
    assert "is the run finished" in capsys.readouterr().err
    with output_lock(tmp_path / "run", "train"):
        pass


def test_a_killed_conversions_temporary_copy_is_swept(tmp_path):
    """A dequantisation killed midway leaves NAME.tmp-PID behind; the next conversion removes it
    (and only the copies of that model, not its finished directory or another model's)."""
    from hsae.data.models import _sweep_stale

    out = tmp_path / "gemma3-270m-hf"
    stale = [tmp_path / "gemma3-270m-hf.tmp-123", tmp_path / "gemma3-270m-hf.tmp-4567"]
    keep = [out, tmp_path / "other-hf.tmp-1"]
    for d in stale + keep:
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x")
    _sweep_stale(out)
    assert not any(d.exists() for d in stale)
    assert all((d / "model.safetensors").is_file() for d in keep)
