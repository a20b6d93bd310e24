"""The HSAE loss's forward + backward against independent levels at a chosen density, with a profile.

  python bench/dense_profile.py [--acts runs/acts] [--l0 60] [--rounds 5]

Demo levels (256..2048) on the first 1024 rows of a store; every feature's threshold is set to the
batch quantile that gives it the target L0 (no training needed), the forest assigned by encoder
cosine. Prints the multi-sibling entries per level pair, the median step of both, their ratio, and
the HSAE step's top ops (torch profiler, CPU).
"""

import argparse
import statistics
import time

import torch

from hsae.data import Store
from hsae.model import HSAE
from hsae.model.constraint import sibling_groups
from hsae.model.forest import update_forest
from hsae.model.loss import hsae_loss

LEVELS = [256, 512, 1024, 2048]


def _model(x: torch.Tensor, l0: float) -> HSAE:
    m = HSAE(x.shape[1], LEVELS, threshold_init=0.5, seed=0)
    with torch.no_grad():
        for lv in m.levels:
            lv.log_threshold.copy_(torch.quantile(lv.pre(x), 1 - l0 / lv.n, dim=0).clamp_min(1e-3).log())
    update_forest(m, "encoder", "partial", 0.2)
    return m


def _step(m: HSAE, x: torch.Tensor, hsae: bool) -> float:
    m.zero_grad()
    t = time.perf_counter()
    swap = [torch.rand(n) < 0.05 for n in LEVELS[:-1]] + [None] if hsae else None
    hsae_loss(m, x, [0.1] * len(LEVELS), 0.01 if hsae else 0.0, swap, None, 0.2).loss.backward()
    return time.perf_counter() - t


def main() -> None:
    """Print the densities, the two step times and the profile."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--acts", default="runs/acts", help="activation store (its first 1024 rows are used)")
    p.add_argument("--l0", type=float, default=60.0, help="L0 every level is set to")
    p.add_argument("--rounds", type=int, default=5, help="alternated timing rounds")
    a = p.parse_args()
    torch.manual_seed(0)
    x = Store(a.acts).batch(0, 1024)
    m = _model(x, a.l0)
    for lev in range(1, len(LEVELS)):
        rows, cols = (m.levels[lev].encode(x) > 0).nonzero(as_tuple=True)
        p_ = m.parent(lev)[cols]
        ent, _ = sibling_groups(rows[p_ >= 0] * (LEVELS[lev - 1] + 1) + p_[p_ >= 0])
        print(f"level {lev}: {len(rows)} entries, {len(ent)} in groups of two or more siblings")
    for _ in range(2):
        _step(m, x, True), _step(m, x, False)
    h, i = zip(*[(_step(m, x, True), _step(m, x, False)) for _ in range(a.rounds)])
    print(f"HSAE {statistics.median(h):.3f} s, independent {statistics.median(i):.3f} s, "
          f"ratio {statistics.median(h) / statistics.median(i):.2f}")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            _step(m, x, True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
