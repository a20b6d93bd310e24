"""Does the structural constraint help recover a known forest? A rho sweep on synthetic forests.

  python bench/constraint.py --out runs/rho [--configs issue-a,hard,hard-wide] [--seeds 0,1,2]
                             [--rhos 0,0.01,0.1,1] [--oracle] [--jobs 2]

For every (config, seed) of bench/forest_quality.py (same stores, same level sizes and steps),
trains the post-hoc baseline and the HSAE at each rho (the swap stays at its default), and with
--oracle also the HSAE whose forest is the truth's, fixed from step 0 (tree "fixed": never
reassigned), which asks whether the constraint can organise features under a correct tree.
Prints one JSON line per run, then a table of seed means +- std (ddof 1) beside chance levels.
Finished runs are reused (rerun to resume).
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import forest_quality as fq

COLS = ["edge_precision", "edge_f1", "feature_match_hungarian", "hamming", "p_parent_given_child", "var_explained",
        "max_dead_fraction"]


def run_one(out: str, config: str, seed: int, variant: str) -> dict:
    """Train (or reuse) one variant ('posthoc', 'hsae-RHO' or 'oracle-RHO') and return its summary."""
    import torch

    torch.set_num_threads(1)  # jobs run side by side on a small machine
    from hsae.config import TrainConfig
    from hsae.data.store import Store
    from hsae.data.synth import load_truth
    from hsae.eval import evaluate_run
    from hsae.train.dist import Dist
    from hsae.train.trainer import MODEL, Trainer

    acts, sizes = fq._store(Path(out), config, seed)
    _, l0, steps = fq.CONFIGS[config]
    kind, _, rho = variant.partition("-")
    run = Path(out) / f"{config}-s{seed}" / variant
    cfg = TrainConfig(levels=sizes, l0=[l0], steps=steps, seed=seed, baseline=kind == "posthoc",
                      rho=float(rho or 0.01), tree="fixed" if kind == "oracle" else "partial")
    if not (run / MODEL).is_file():
        cfg.validate()
        store = Store(acts)
        cfg.d, cfg.acts = store.d, str(acts)
        trainer = Trainer(cfg, store, run, Dist("cpu"))
        if kind == "oracle":  # the truth's forest from the first step, never reassigned
            truth = load_truth(acts / "truth.safetensors")
            for lev in range(1, len(sizes)):
                trainer.model.set_parent(lev, truth["parents"][lev].long())
            trainer.assigned = True
        assert trainer.run(progress=False) == 0
    ev = evaluate_run(run)
    return {"config": config, "seed": seed, "variant": variant, **fq._summary(ev, l0)}


def main() -> int:
    """Run the sweep and print JSON lines, then the table."""
    p = fq.parser(__doc__)
    p.add_argument("--rhos", default="0,0.01,0.1,1", help="comma-separated constraint weights for the HSAE")
    p.add_argument("--oracle", action="store_true", help="also train with the truth's forest fixed from step 0")
    a = p.parse_args()
    rhos = [f"{float(r):g}" for r in a.rhos.split(",")]
    variants = ["posthoc"] + [f"hsae-{r}" for r in rhos] + ([f"oracle-{r}" for r in rhos if float(r) > 0]
                                                             if a.oracle else [])
    grid = [(c, int(s), v) for c in a.configs.split(",") for v in variants for s in a.seeds.split(",")]
    for c, s, _ in grid:  # stores first, once each, outside the pool
        fq._store(Path(a.out), c, s)
    with ProcessPoolExecutor(a.jobs) as pool:
        results = []
        for r in pool.map(run_one, *zip(*[(a.out, *g) for g in grid])):
            results.append(r)
            print(json.dumps(r), flush=True)
    print(fq._table(results, ("config", "variant"), COLS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
