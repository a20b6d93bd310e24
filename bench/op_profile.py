"""The HSAE loss's extra op time over independent levels, per `hsae` function.

  python bench/op_profile.py [--only demo] [--steps 5]
  PYTHONPATH=OLD/src python bench/op_profile.py      # the same for another checkout's source

Every aten op of the loss's forward + backward (bench/step.py's setup: forest assigned,
thresholds at the target L0) is timed on the CPU by a dispatch mode and charged to the innermost
function of the `hsae` package that called it. Prints JSON: the total op time per step of the
full HSAE (rho and swap as in the trainer's config) and of independent levels, and per function
the HSAE's extra milliseconds per step, largest first. The dispatch mode adds its own overhead,
so compare only runs of this script with each other.
"""

import argparse
import collections
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

import step as bench_step  # noqa: E402


class _OpTimes(TorchDispatchMode):
    """Seconds per calling `hsae` function, summed over the ops run under this mode."""

    def __init__(self):
        super().__init__()
        self.seconds = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        dt = time.perf_counter() - t
        frames = [f for f in traceback.extract_stack(limit=8) if "/hsae/" in f.filename]
        self.seconds[f"{Path(frames[-1].filename).name}:{frames[-1].name}" if frames else "autograd"] += dt
        return out


def main() -> None:
    """Print the totals and the per-function extra time."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="demo", choices=list(bench_step.CONFIGS), help="configuration (bench/step.py)")
    p.add_argument("--steps", type=int, default=5, help="profiled loss steps per variant")
    a = p.parse_args()
    from hsae.model.loss import hsae_loss

    c = bench_step.CONFIGS[a.only]
    with tempfile.TemporaryDirectory() as tmp:
        tr, x = bench_step._trainer(Path(tmp), c, "hsae")
        tr.batches.close()
        m, cfg = tr.model, tr.cfg

        def step(rho: float, swap: float) -> None:
            m.zero_grad()
            masks = [torch.rand(n) < swap for n in c["levels"][:-1]] + [None] if swap else None
            hsae_loss(m, x, tr.ctrl.lambdas, rho, masks, None, cfg.bandwidth).loss.backward()

        times = {}
        for name, couplings in {"hsae": (cfg.rho, cfg.swap), "independent": (0.0, 0.0)}.items():
            for _ in range(2):
                step(*couplings)  # warm-up
            with _OpTimes() as ot:
                for _ in range(a.steps):
                    step(*couplings)
            times[name] = ot.seconds
    h, i = times["hsae"], times["independent"]
    extra = {k: 1000 * (h[k] - i[k]) / a.steps for k in set(h) | set(i)}
    print(json.dumps({"config": a.only, "steps": a.steps,
                      "op_ms_per_step": {k: 1000 * sum(v.values()) / a.steps for k, v in times.items()},
                      "extra_ms_per_step": dict(sorted(extra.items(), key=lambda kv: -kv[1]))}, indent=1))


if __name__ == "__main__":
    main()
