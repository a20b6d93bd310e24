"""Seconds per training step: HSAE vs the same levels trained independently vs SAELens vs the naive dense loss.

Prints one JSON object. Each (configuration, mode) runs in a fresh subprocess, so that its
peak RSS is its own; with --rounds R the modes alternate R times (hsae, independent, saelens,
hsae, ...) and the medians and their ratios are reported, because on a shared machine only
side-by-side timings compare. "saelens" is SAELens's JumpReLUTrainingSAE, one per level,
trained independently (forward, backward, Adam), the step a user would otherwise run. A step is the trainer's own `train_step` (batch, loss, backward, Adam, decoder
renormalisation, statistics) with the forest assigned and every level's thresholds set so
that L0 is about `--l0` (as in a trained model: the constraint's cost grows with L0).

  python bench/step.py                 # small + paper dims + dense comparison (~10 min on 2 cores)
  python bench/step.py --only small    # one configuration
  python bench/step.py --only demo --rounds 3   # the demo's dims, alternated, with SAELens
  python bench/step.py --only demo --rounds 3 --matryoshka   # plus SAELens's Matryoshka SAE
  python bench/step.py --only demo --rounds 3 --paired       # HSAE / independent, step by step in one process
  python bench/step.py --only paper --device cuda --dtype bfloat16

bench/run_all.py builds the suite's JSON from the same measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CONFIGS = {
    "small": {"d": 64, "levels": [8, 24, 72], "l0": 3, "batch": 1024, "steps": 30},
    "demo": {"d": 576, "levels": [256, 512, 1024, 2048], "l0": 20, "batch": 1024, "steps": 10},
    # the demo's levels at the paper's L0: the couplings' cost grows with the support entries
    "demo_l50": {"d": 576, "levels": [256, 512, 1024, 2048], "l0": 50, "batch": 1024, "steps": 10},
    "demo_wide": {"d": 576, "levels": [2048, 4096, 8192, 16384], "l0": 50, "batch": 1024, "steps": 3},
    "paper": {"d": 2304, "levels": [2048, 4096, 8192, 16384], "l0": 50, "batch": 1024, "steps": 4},
    "dense_cmp": {"d": 256, "levels": [256, 512, 1024, 2048], "l0": 20, "batch": 1024, "steps": 2},
}


def _trainer(tmp: Path, c: dict, mode: str, device: str = "cpu", dtype: str = "float32", compile: bool = False):
    from hsae.config import TrainConfig
    from hsae.data.store import Store
    from hsae.train.dist import Dist
    from hsae.train.trainer import Trainer

    rows = c["batch"] * 4
    np.save(tmp / "x.npy", np.random.default_rng(0).standard_normal((rows, c["d"]), dtype=np.float32))
    cfg = TrainConfig(levels=c["levels"], l0=[float(c["l0"])], steps=10**6, batch_size=c["batch"], lr=1e-6,
                      baseline=(mode == "independent"), holdout=0.2, tree="partial")
    store = Store(tmp / "x.npy")
    cfg.d = store.d
    tr = Trainer(cfg, store, tmp / "run", Dist(device), dtype, compile)
    x = tr.stream.batch(0).to(tr.device)
    with torch.no_grad():  # thresholds at the quantile that gives L0 ~ target on this data
        for lv in tr.model.levels:
            lv.log_threshold.copy_(torch.quantile(lv.pre(x), 1 - c["l0"] / lv.n, dim=0).clamp_min(1e-3).log())
    tr.assign()  # a real forest, so the constraint and the swap do their full work
    tr.assigned = mode != "independent"
    return tr, x


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # GPU work is asynchronous: time it to completion


def _time(fn, steps: int, warmup: bool = True) -> float:
    if warmup:
        fn()  # allocations, first-touch (and compilation)
    _sync()
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        _sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def peak_memory_gib() -> dict:
    """Peak resident memory of this process, and peak GPU memory allocated if on a GPU."""
    out = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if torch.cuda.is_available():
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _sae_step(saes: list, coefficients: dict, dead, c: dict, device: str, dtype: str):
    """One training step of SAELens SAEs on one random batch: forward + backward + Adam, each SAE in turn."""
    from sae_lens.saes.sae import TrainStepInput

    opts = [torch.optim.Adam(s.parameters(), lr=1e-6, betas=(0.0, 0.999)) for s in saes]
    x = torch.randn(c["batch"], c["d"], device=device)
    ctx = torch.autocast(device, dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()

    def step():
        for sae, opt in zip(saes, opts):
            with ctx:
                out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients=coefficients,
                                                               dead_neuron_mask=dead, n_training_steps=0,
                                                               is_logging_step=False))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
    return step


def saelens_step(c: dict, device: str = "cpu", dtype: str = "float32"):
    """SAELens's step for the same levels: one JumpReLUTrainingSAE per level, forward + backward + Adam."""
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

    torch.manual_seed(0)
    saes = [JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=c["d"], d_sae=n, dtype="float32", device=device))
            for n in c["levels"]]
    return _sae_step(saes, {"l0": 1.0}, None, c, device, dtype)


def matryoshka_step(c: dict, device: str = "cpu", dtype: str = "float32"):
    """SAELens's Matryoshka BatchTopK SAE over the same widths (k = the target L0): forward + backward + Adam."""
    from sae_lens.saes.matryoshka_batchtopk_sae import (MatryoshkaBatchTopKTrainingSAE,
                                                        MatryoshkaBatchTopKTrainingSAEConfig)

    torch.manual_seed(0)
    sae = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=c["d"], d_sae=c["levels"][-1], matryoshka_widths=list(c["levels"]), k=c["l0"], dtype="float32",
        device=device))
    dead = torch.zeros(c["levels"][-1], dtype=torch.bool, device=device)
    return _sae_step([sae], sae.get_coefficients(), dead, c, device, dtype)


def run_paired(c: dict, steps: int, device: str = "cpu", dtype: str = "float32", compile: bool = False) -> dict:
    """HSAE and independent levels in one process, step by step in turn: the median of the steps'
    own ratios follows no drift of the machine's speed slower than two steps."""
    with tempfile.TemporaryDirectory() as tmp:
        trs = []
        for mode in ("hsae", "independent"):
            (Path(tmp) / mode).mkdir()
            trs.append(_trainer(Path(tmp) / mode, c, mode, device, dtype, compile)[0])
        for tr in trs:
            tr.train_step()  # warm-up
        ts = [[], []]
        for _ in range(steps):
            for t, tr in zip(ts, trs):
                _sync()
                t0 = time.perf_counter()
                tr.train_step()
                _sync()
                t.append(time.perf_counter() - t0)
        for tr in trs:
            tr.batches.close()
    return {"hsae_s": statistics.median(ts[0]), "independent_s": statistics.median(ts[1]),
            "paired_ratio": statistics.median(a / b for a, b in zip(*ts)), **peak_memory_gib()}


def run_one(name: str, mode: str, device: str = "cpu", dtype: str = "float32", compile: bool = False,
            steps: int | None = None) -> dict:
    """Time one (configuration, mode) in this process."""
    c = CONFIGS[name]
    if mode == "paired":
        return run_paired(c, 3 * (steps or c["steps"]), device, dtype, compile)
    if mode in ("saelens", "matryoshka"):
        fn = (saelens_step if mode == "saelens" else matryoshka_step)(c, device, dtype)
        return {"seconds_per_step": _time(fn, steps or c["steps"]), **peak_memory_gib()}
    with tempfile.TemporaryDirectory() as tmp:
        tr, x = _trainer(Path(tmp), c, mode, device, dtype, compile)
        if mode == "dense":
            from reference import dense_loss

            def step():
                tr.opt.zero_grad(set_to_none=True)
                swap = tr._swap_masks()
                dense_loss(tr.model, x, tr.ctrl.lambdas, tr.cfg.rho, swap, tr.cfg.bandwidth).backward()
                tr.model.remove_parallel_grad()
                tr.opt.step()
                tr.model.normalize_decoder()
        else:
            step = tr.train_step
        # the naive dense step takes minutes: one untimed warm-up would double the bench
        sec = _time(step, 1 if mode == "dense" else steps or c["steps"], warmup=mode != "dense")
        l0 = [float((a > 0).float().sum(1).mean()) for a in tr.model.encode(x)]
        out = {"seconds_per_step": sec, "l0": l0}
        if mode == "hsae":
            from hsae.model import update_forest

            t0 = time.perf_counter()
            update_forest(tr.model, "encoder", "partial", 0.2)
            _sync()
            out["hierarchy_update_s"] = time.perf_counter() - t0
        tr.batches.close()
    return {**out, **peak_memory_gib()}


def matmul_ceiling(c: dict, steps: int, device: str = "cpu", dtype: str = "float32") -> float:
    """Seconds for the step's dense products alone: per level 1 encoder + 1 decoder forward, 3 backward."""
    B, d = c["batch"], c["d"]
    kw = {"device": device, "dtype": getattr(torch, dtype)}
    x = torch.randn(B, d, **kw)
    Ws = [(torch.randn(d, n, **kw), torch.randn(n, d, **kw), torch.randn(B, n, **kw)) for n in c["levels"]]

    def mm():
        for we, wd, a in Ws:
            x @ we, a @ wd, x.t() @ a, a.t() @ x, x @ wd.t()

    return _time(mm, steps)


def alternated(name: str, modes: list[str], rounds: int, sub) -> dict:
    """{mode: result} with the median seconds over `rounds` alternated fresh-process runs (and every run's)."""
    runs = {m: [] for m in modes}
    for _ in range(rounds):
        for m in modes:
            if m == "dense" and runs[m]:
                continue  # minutes per step: once is enough
            runs[m].append(sub(name, m))
    out = {}
    for m, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            out[m] = rs[0]
            continue
        med = statistics.median(r["seconds_per_step"] for r in ok)
        out[m] = {**ok[0], "seconds_per_step": med, "runs_s": [r["seconds_per_step"] for r in ok]}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=list(CONFIGS), help="run one configuration")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to train")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="precision of the products")
    p.add_argument("--compile", action="store_true", help="torch.compile the levels' dense encode")
    p.add_argument("--steps", type=int, help="timed steps per configuration (default: per configuration)")
    p.add_argument("--rounds", type=int, default=1, help="alternate the modes this many times; report medians")
    p.add_argument("--paired", action="store_true",
                   help="per round, HSAE and independent levels step by step in one fresh process (3x the steps)")
    p.add_argument("--matryoshka", action="store_true",
                   help="also time SAELens's Matryoshka BatchTopK SAE over the same widths (one dictionary)")
    p.add_argument("--child", nargs=2, metavar=("CONFIG", "MODE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(run_one(*a.child, a.device, a.dtype, a.compile, a.steps)))
        return
    opts = ["--device", a.device, "--dtype", a.dtype] + (["--compile"] if a.compile else []) + (
        ["--steps", str(a.steps)] if a.steps else [])

    def sub(name, mode):
        r = subprocess.run([sys.executable, __file__, "--child", name, mode, *opts], capture_output=True, text=True)
        if r.returncode:
            return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
        return json.loads(r.stdout.strip().splitlines()[-1])

    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": a.device, "dtype": a.dtype,
              "configs": {}}
    for name in [a.only] if a.only else list(CONFIGS):
        c = CONFIGS[name]
        if a.paired:
            rs = [sub(name, "paired") for _ in range(a.rounds)]
            ok = [r["paired_ratio"] for r in rs if "error" not in r]
            result["configs"][name] = {"config": c, "rounds": rs,
                                       "hsae_over_independent": statistics.median(ok) if ok else None}
            continue
        modes = ["hsae", "independent", "saelens"] + (["matryoshka"] if a.matryoshka else []) + (
            ["dense"] if name == "dense_cmp" else [])
        r = {"config": c, **alternated(name, modes, a.rounds, sub)}
        h, ind, sl = r["hsae"], r["independent"], r["saelens"]
        if "error" not in h and "error" not in sl:
            r["hsae_over_saelens"] = h["seconds_per_step"] / sl["seconds_per_step"]
        if "matryoshka" in r and "error" not in r["matryoshka"] and "error" not in h:
            r["hsae_over_matryoshka"] = h["seconds_per_step"] / r["matryoshka"]["seconds_per_step"]
        if "error" not in h and "error" not in ind:
            r["overhead_ratio"] = h["seconds_per_step"] / ind["seconds_per_step"]
            if len(h.get("runs_s", [])) == len(ind.get("runs_s", [])) > 1:  # each round's own ratio: steadier
                r["overhead_ratio_paired"] = statistics.median(a / b for a, b in zip(h["runs_s"], ind["runs_s"]))
            r["matmul_ceiling_s"] = matmul_ceiling(c, a.steps or c["steps"], a.device, a.dtype)
            r["independent_vs_ceiling"] = r["matmul_ceiling_s"] / ind["seconds_per_step"]
        if "dense" in r and "error" not in r["dense"] and "error" not in h:
            r["speedup_vs_dense"] = r["dense"]["seconds_per_step"] / h["seconds_per_step"]
        result["configs"][name] = r
        print(f"# {name}: {json.dumps(r)}", file=sys.stderr, flush=True)  # survives a later timeout
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
