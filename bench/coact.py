"""Per-step cost of the co-activation statistics: the old dense EMA vs the sparse counts (JSON).

  python bench/coact.py [--parents 4096] [--children 8192] [--l0 50] [--batch 1024] [--steps 5]

The old statistic decayed the whole [n_c, n_p] matrix every step (an EMA), O(n_c * n_p);
CoActivation adds only the batch's co-firing pairs, O(B * L0_c * L0_p), and decays at
hierarchy updates. Both are timed side by side in one process, alternating, one thread.
"""

import argparse
import json
import time

import torch

from hsae.model.forest import CoActivation, pair_counts


def main() -> None:
    """Time both statistics and print one JSON object."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parents", type=int, default=4096, help="parent-level features")
    p.add_argument("--children", type=int, default=8192, help="child-level features")
    p.add_argument("--l0", type=float, default=50, help="active features per row on each level")
    p.add_argument("--batch", type=int, default=1024, help="rows per step")
    p.add_argument("--steps", type=int, default=5, help="timed steps of each")
    a = p.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    act_p = torch.rand(a.batch, a.parents, generator=g) < a.l0 / a.parents
    act_c = torch.rand(a.batch, a.children, generator=g) < a.l0 / a.children
    co = CoActivation(a.parents, a.children)
    ema = torch.zeros(a.children, a.parents)
    t_new, t_old = [], []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        co.update(act_p, act_c)
        t_new.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ema.mul_(0.999).add_(pair_counts(act_p, act_c), alpha=0.001 / a.batch)  # the old per-step EMA
        t_old.append(time.perf_counter() - t0)
    print(json.dumps({"parents": a.parents, "children": a.children, "l0": a.l0, "batch": a.batch,
                      "sparse_counts_s": min(t_new), "dense_ema_s": min(t_old),
                      "speedup": min(t_old) / min(t_new)}))


if __name__ == "__main__":
    main()
