"""Streaming training vs the two-pass route (collect a store, then train on it): wall time and disk.

Both train the same levels on the same corpus tokens with the same seed, each command in its
own process, one after the other, on the same machine; `hsae train --model` writes only its
held-out store, checkpoints and the model. With --rounds R the two routes alternate R times
(two-pass, streaming, streaming, two-pass, ...), so that a change in the machine's load falls on
both; the ratio is of the medians. Prints one JSON object.

  python bench/stream_train.py                      # SmolLM2 layer 15, 60k tokens (~6 min on 2 cores)
  python bench/stream_train.py --rounds 3           # alternated, medians
  python bench/stream_train.py --tokens 1000000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hsae.data.live import ONE_PASS


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
    p.add_argument("--rounds", type=int, default=1, help="times each route runs, alternated (medians)")
    a = p.parse_args()
    if a.rounds < 1:
        p.error("--rounds must be at least 1")
    held = max(1, round(0.05 * a.tokens))
    # one pass, as `hsae train --model` defaults to: a step past it would cost the streaming route a
    # new chunk of forward passes where the store route re-reads rows it already has
    steps = max(1, int(ONE_PASS * (a.tokens - held)) // 1024)
    common = ["--levels", a.levels, "--l0", a.l0, "--steps", str(steps), "--device", a.device]
    two, live, sizes = [], [], {}
    for r in range(a.rounds):
        order = (_two_pass, _streaming) if r % 2 == 0 else (_streaming, _two_pass)
        for route in order:
            with tempfile.TemporaryDirectory() as tmp:
                secs, size = route(a, Path(tmp), held, common)
            (two if route is _two_pass else live).append(secs)
            sizes.update(size)
    t2, ts = statistics.median(x["total"] for x in two), statistics.median(live)
    out = {"model": a.model, "layer": a.layer, "tokens": a.tokens, "steps": steps, "device": a.device,
           "rounds": a.rounds, "two_pass_s": two, "streaming_s": live, "median_two_pass_s": t2,
           "median_streaming_s": ts, "streaming_over_two_pass": ts / t2, "bytes": sizes}
    print(json.dumps(out, indent=2))


def _two_pass(a, tmp: Path, held: int, common: list[str]) -> tuple[dict, dict]:
    """Collect a store, then train on it: ({"collect", "train", "total"} seconds, bytes written)."""
    t_collect = _run(["collect", "--model", a.model, "--layer", str(a.layer), "--corpus", a.corpus,
                      "--tokens", str(a.tokens), "--out", str(tmp / "store"), "--device", a.device])
    t_train = _run(["train", "--acts", str(tmp / "store"), "--out", str(tmp / "run"), *common])
    return ({"collect": t_collect, "train": t_train, "total": t_collect + t_train},
            {"two_pass": _bytes(tmp / "store") + _bytes(tmp / "run")})


def _streaming(a, tmp: Path, held: int, common: list[str]) -> tuple[float, dict]:
    """Train from the live model: (seconds, bytes written, of which held-out store and model)."""
    live = tmp / "live"
    secs = _run(["train", "--model", a.model, "--layer", str(a.layer), "--corpus", a.corpus,
                 "--tokens", str(a.tokens), "--heldout-tokens", str(held), "--out", str(live), *common])
    return secs, {"streaming": _bytes(live), "streaming_heldout": _bytes(live / "heldout"),
                  "streaming_model": (live / "model.safetensors").stat().st_size}


if __name__ == "__main__":
    main()
