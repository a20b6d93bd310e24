"""The benchmark suite: one JSON object with the figures issue 8 sets goals for.

At the paper's dims (d=2304, levels 2048/4096/8192/16384, L0 50, batch 1024) on one device:
  - seconds per training step of the HSAE and of the same levels trained independently, and
    their ratio (goal <= 1.10);
  - the FLOP rate each achieves on the step's dense products vs plain matmuls of the same
    shapes timed in the same run (goal >= 0.6);
  - peak memory (resident; GPU memory allocated on CUDA);
  - training tokens/s and the projected hours of the paper's 100M-token run (goal on one
    H100: under 1 hour), hierarchy updates every 5000 steps included;
  - streaming (bench/stream.py): rows/s read cold from a float16 store on disk while a
    consumer takes the measured step time (at most 0.05 s), and the wait per step;
  - streaming training from a live model vs collect + train (bench/stream_train.py).
Each training measurement runs in its own subprocess (bench/step.py --child), so its peak
memory is its own. A step is the trainer's own train_step (batch from the prefetching
stream, loss, backward, Adam, renormalisation, statistics) with L0 at its target.

  python bench/run_all.py                                    # CPU, 2 timed steps each (~4 min on 2 cores)
  python bench/run_all.py --device cuda --dtype bfloat16 --steps 20
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step import CONFIGS, matmul_ceiling  # noqa: E402

PAPER_TOKENS = 100_000_000
UPDATE_EVERY = 5000  # the paper's K


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        models = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
        return f"{models[0]} x{torch.get_num_threads()} threads" if models else platform.processor()
    except OSError:
        return platform.processor() or "cpu"


def _script(name: str, *args: str) -> dict:
    """The JSON printed by bench/<name> run in a subprocess."""
    r = subprocess.run([sys.executable, str(Path(__file__).resolve().parent / name), *args], capture_output=True, text=True)
    if r.returncode:
        err = r.stderr.strip().splitlines()
        raise SystemExit(f"bench/{name} {' '.join(args)} failed: {err[-1] if err else r.returncode}")
    return json.loads(r.stdout[r.stdout.index("{"):])


def _optional(name: str, *args: str) -> dict:
    """_script's JSON, or {"error": why}: a part the machine cannot run (a GPU machine without the
    embedded model's package, say) must not lose the step timings measured before it."""
    try:
        return _script(name, *args)
    except SystemExit as e:
        return {"error": str(e)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train (auto: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="precision of the products")
    p.add_argument("--compile", action="store_true", help="torch.compile the levels' dense encode")
    p.add_argument("--steps", type=int, help="timed steps per measurement (default: 2 on CPU, 20 on CUDA)")
    p.add_argument("--config", default="paper", choices=list(CONFIGS), help="dimensions (paper: the paper's)")
    a = p.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    steps = a.steps or (20 if device == "cuda" else 2)
    opts = ["--device", device, "--dtype", a.dtype, "--steps", str(steps)] + (["--compile"] if a.compile else [])
    c = CONFIGS[a.config]

    hsae = _script("step.py", "--child", a.config, "hsae", *opts)
    print(f"# hsae: {json.dumps(hsae)}", file=sys.stderr, flush=True)  # survives a later timeout
    ind = _script("step.py", "--child", a.config, "independent", *opts)
    print(f"# independent: {json.dumps(ind)}", file=sys.stderr, flush=True)
    mm = matmul_ceiling(c, steps, device, a.dtype)
    stream = _optional("stream.py", "--d", str(c["d"]), "--batch", str(c["batch"]),
                       "--step-s", f"{min(hsae['seconds_per_step'], 0.05):.4f}")
    # streaming training from the embedded model vs collect + train (bench/stream_train.py)
    live = _optional("stream_train.py", "--device", device, "--tokens", "20000" if device == "cpu" else "1000000")

    flops = 10 * c["batch"] * c["d"] * sum(c["levels"])  # 5 products of 2*B*d*n per level
    h_s, i_s = hsae["seconds_per_step"], ind["seconds_per_step"]
    n_steps = math.ceil(PAPER_TOKENS / c["batch"])
    hours = (n_steps * h_s + n_steps // UPDATE_EVERY * hsae["hierarchy_update_s"]) / 3600
    print(json.dumps({
        "device": device, "device_name": _device_name(device), "dtype": a.dtype, "compile": a.compile,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "timed_steps": steps,
        "config": c, "hsae": hsae, "independent": ind, "matmul_s": mm,
        "hsae_vs_independent": h_s / i_s, "goal_hsae_vs_independent": 1.10,
        "flops_per_step": flops, "matmul_tflops": flops / mm / 1e12,
        "hsae_tflops": flops / h_s / 1e12, "independent_tflops": flops / i_s / 1e12,
        "hsae_vs_matmul": mm / h_s, "independent_vs_matmul": mm / i_s, "goal_vs_matmul": 0.6,
        "peak_rss_gib": max(hsae["peak_rss_gib"], ind["peak_rss_gib"]),
        **({"peak_gpu_gib": max(hsae["peak_gpu_gib"], ind["peak_gpu_gib"])} if device == "cuda" else {}),
        "training_tokens_per_s": c["batch"] / h_s,
        "projected_hours_100M_tokens": hours, "goal_projected_hours_h100": 1.0,
        "stream": stream, "stream_train": live,
    }, indent=2))


if __name__ == "__main__":
    main()
