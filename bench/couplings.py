"""Where the HSAE step's extra time over independent levels goes: per coupling, or per function.

  python bench/couplings.py [--only demo] [--rounds 40]      # per coupling
  python bench/couplings.py --ops [--only demo] [--rounds 5]  # per hsae function
  PYTHONPATH=OLD/src python bench/couplings.py --ops          # the same for another checkout's source

Both use bench/step.py's setup (forest assigned, thresholds at the target L0).

Per coupling: one process, one HSAE trainer and one of independent levels; per round each variant
runs one trainer step, in turn, so they share the machine's drift. Variants: full (constraint +
swap), swap only (rho = 0), constraint only (no swap), neither (an HSAE trainer with no coupling),
and full in the torch form (model/kernel.py's compiled loops off: the couplings as a GPU runs them,
and the JumpReLU's forward too, which the other variants and the independent levels run compiled).
Prints per variant the median seconds per step and its ratio to the independent levels.

Per function (--ops): every aten op of the loss's forward + backward is timed by a dispatch mode
and charged to the innermost function of the `hsae` package that called it, for `rounds` steps
of the full HSAE and of independent levels. Prints the op time per step of each and, per
function, the HSAE's extra milliseconds per step. The mode adds its own overhead: compare only
runs of --ops with each other.
"""

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

import step as bench_step  # noqa: E402


def per_coupling(trs: dict, rounds: int) -> dict:
    """{variant: median seconds per trainer step, ratio to independent}."""
    from hsae.model import kernel

    h = trs["hsae"]
    rho, swap = h.cfg.rho, h.cfg.swap
    variants = {"independent": (trs["independent"], None), "full": (h, (rho, swap)),
                "swap_only": (h, (0.0, swap)), "constraint_only": (h, (rho, 0.0)), "neither": (h, (0.0, 0.0)),
                "full_torch_form": (h, (rho, swap))}
    times = {k: [] for k in variants}
    for r in range(rounds + 2):  # two warm-up rounds
        for k, (tr, couplings) in variants.items():
            if couplings:
                tr.cfg.rho, tr.cfg.swap = couplings
            kernel.ENABLED = k != "full_torch_form"  # the couplings as a GPU runs them (on a CPU: model/kernel.py)
            t = time.perf_counter()
            tr.train_step()
            if r >= 2:
                times[k].append(time.perf_counter() - t)
    kernel.ENABLED = True  # the last variant switched it off
    base = statistics.median(times["independent"])
    return {k: {"seconds_per_step": statistics.median(v), "over_independent": statistics.median(v) / base}
            for k, v in times.items()}


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


def per_function(tr, c: dict, steps: int) -> dict:
    """Op milliseconds per loss step (full HSAE, independent) and the HSAE's extra per function."""
    from hsae.model.loss import hsae_loss

    m, cfg = tr.model, tr.cfg
    x = tr.stream.batch(0)
    tr.batches.close()  # its prefetch thread would share the cores (and the OpenMP team) with the profile

    def step(rho: float, swap: float) -> None:
        m.zero_grad()
        masks = [torch.rand(n) < swap for n in c["levels"][:-1]] + [None] if swap else None
        hsae_loss(m, x, tr.ctrl.lambdas, rho, masks, None, cfg.bandwidth).loss.backward()

    times = {}
    for name, couplings in {"hsae": (cfg.rho, cfg.swap), "independent": (0.0, 0.0)}.items():
        for _ in range(2):
            step(*couplings)  # warm-up
        with _OpTimes() as ot:
            for _ in range(steps):
                step(*couplings)
        times[name] = ot.seconds
    h, i = times["hsae"], times["independent"]
    extra = {k: 1000 * (h[k] - i[k]) / steps for k in set(h) | set(i)}
    return {"op_ms_per_step": {k: 1000 * sum(v.values()) / steps for k, v in times.items()},
            "extra_ms_per_step": dict(sorted(extra.items(), key=lambda kv: -kv[1]))}


def main() -> None:
    """Print one JSON object: the configuration and the chosen breakdown."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="demo", choices=list(bench_step.CONFIGS), help="configuration (bench/step.py)")
    p.add_argument("--ops", action="store_true", help="per hsae function instead of per coupling")
    p.add_argument("--rounds", type=int, help="timed rounds (default 40; with --ops profiled steps, default 5)")
    a = p.parse_args()
    c = bench_step.CONFIGS[a.only]
    rounds = a.rounds or (5 if a.ops else 40)
    with tempfile.TemporaryDirectory() as tmp:
        trs = {}
        for mode in ("hsae",) if a.ops else ("hsae", "independent"):
            (Path(tmp) / mode).mkdir()
            trs[mode] = bench_step._trainer(Path(tmp) / mode, c, mode)[0]
        try:
            out = per_function(trs["hsae"], c, rounds) if a.ops else {"variants": per_coupling(trs, rounds)}
        finally:
            for tr in trs.values():
                tr.batches.close()
    print(json.dumps({"config": a.only, **c, "rounds": rounds, **out}, indent=1))


if __name__ == "__main__":
    main()
