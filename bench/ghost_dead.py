"""What ghost grads do to the features that are dead at the end of a run: a continuation experiment.

Loads a finished run's weights into a fresh trainer at 60% of its run (fresh Adam, the forest
reassigned, restarts off, a constant learning rate: --lr-frac of the run's peak, 0.4 = the
schedule's value there), marks dead the last level's features that never fire on the first --rows
held-out rows, trains --steps steps with ghost grads on them (--arm ghost) or none (--arm none),
and every 100 steps prints one JSON line about those features: their mean pre-activation, the
median of (max pre-activation / threshold), median encoder norm and encoder bias, median
threshold, and how many of them fire again on the same held-out rows.

  python bench/ghost_dead.py runs/smollm2-1m-10k/hsae --arm ghost --steps 400
  python bench/ghost_dead.py runs/smollm2-1m-10k/hsae --arm none --steps 400
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch

import hsae.train.trainer as trainer_mod
from hsae.data import Store
from hsae.rundir import load_run
from hsae.train.dist import Dist


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="finished run directory")
    p.add_argument("--arm", choices=["ghost", "none"], required=True, help="ghost grads on the dead features, or none")
    p.add_argument("--steps", type=int, default=400, help="steps to continue")
    p.add_argument("--lr-frac", type=float, default=0.4, help="constant learning rate, as a fraction of the run's peak")
    p.add_argument("--rows", type=int, default=8192, help="held-out rows that decide dead and revived")
    a = p.parse_args()
    cfg, model, _ = load_run(a.run)
    cfg.resample = False  # no restart: the dead mask set below stays until the next window closes
    cfg.ghost = True  # the ghost arm's grads even for a run trained with "ghost": false
    trainer_mod.lr_at = lambda step, steps, peak, warmup: a.lr_frac * peak
    store = Store(cfg.acts)
    tr = trainer_mod.Trainer(cfg, store, tempfile.mkdtemp(), Dist("cpu"))
    tr.model.load_state_dict(model.state_dict())
    tr.step = int(0.6 * cfg.steps)  # where the schedule's rate is ~0.4 x its peak; no restarts after half the run
    room = (tr.step // cfg.dead_period + 1) * cfg.dead_period - tr.step - 1  # steps before a window closes
    if a.steps > room:
        raise SystemExit(f"--steps must end before the next dead window closes (at most {room} here)")
    tr.assign()
    lv = tr.model.levels[-1]
    _, rows = store.split(cfg.holdout)
    held = next(iter(store.ordinary_batches(range(rows.start, min(rows.stop, rows.start + a.rows)), a.rows)))
    with torch.no_grad():
        dead = (lv.encode(held) > 0).sum(0) == 0
    if a.arm == "ghost":
        tr.dead[-1] = dead.clone()
        tr._recount_dead()

    @torch.no_grad()
    def report(step: int) -> None:
        h = lv.pre(held)[:, dead]
        t = lv.threshold[dead]
        print(json.dumps({"arm": a.arm, "step": step, "dead": int(dead.sum()), "mean_pre": float(h.mean()),
                          "max_pre_over_threshold": float((h.max(0).values / t).median()),
                          "encoder_norm": float(lv.W_enc[:, dead].norm(dim=0).median()),
                          "b_enc": float(lv.b_enc[dead].median()), "threshold": float(t.median()),
                          # fires: h > t (t > 0), what encode's JumpReLU keeps, without a second encode
                          "revived": int(((h > t).sum(0) > 0).sum())}), flush=True)

    report(0)
    for i in range(a.steps):
        tr.train_step()
        if (i + 1) % 100 == 0:
            report(i + 1)
    tr.batches.close()


if __name__ == "__main__":
    main()
