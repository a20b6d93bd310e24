"""Streaming training vs the two-pass route (collect a store, then train on it): wall time and disk.

Both train the same levels on the same corpus tokens with the same seed, each command in its
own process, one after the other, on the same machine; `hsae train --model` writes only its
held-out store, checkpoints and the model. Prints one JSON object.

  python bench/stream_train.py                      # SmolLM2 layer 15, 60k tokens (~6 min on 2 cores)
  python bench/stream_train.py --tokens 1000000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hsae", *cmd, "--quiet"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2", help="embedded model or local model directory")
    p.add_argument("--layer", type=int, default=15, help="block whose output is trained on")
    p.add_argument("--corpus", default="mix", help="corpus name or path")
    p.add_argument("--tokens", type=int, default=60_000, help="corpus tokens (5%% held out)")
    p.add_argument("--levels", default="256,512,1024,2048", help="level sizes")
    p.add_argument("--l0", default="20", help="target L0")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both run")
    a = p.parse_args()
    held = max(1, round(0.05 * a.tokens))
    steps = max(1, (a.tokens - held) // 1024)
    common = ["--levels", a.levels, "--l0", a.l0, "--steps", str(steps), "--device", a.device]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t_collect = _run(["collect", "--model", a.model, "--layer", str(a.layer), "--corpus", a.corpus,
                          "--tokens", str(a.tokens), "--out", str(tmp / "store"), "--device", a.device])
        t_train = _run(["train", "--acts", str(tmp / "store"), "--out", str(tmp / "run"), *common])
        two_pass_bytes = _bytes(tmp / "store") + _bytes(tmp / "run")
        t_stream = _run(["train", "--model", a.model, "--layer", str(a.layer), "--corpus", a.corpus,
                         "--tokens", str(a.tokens), "--heldout-tokens", str(held), "--out", str(tmp / "live"), *common])
        live = tmp / "live"
        out = {"model": a.model, "layer": a.layer, "tokens": a.tokens, "steps": steps, "device": a.device,
               "two_pass_s": {"collect": t_collect, "train": t_train, "total": t_collect + t_train},
               "streaming_s": t_stream, "streaming_over_two_pass": t_stream / (t_collect + t_train),
               "bytes": {"two_pass": two_pass_bytes, "streaming": _bytes(live),
                         "streaming_heldout": _bytes(live / "heldout"),
                         "streaming_model": (live / "model.safetensors").stat().st_size}}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
