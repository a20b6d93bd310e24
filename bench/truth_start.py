"""Is the truth the training objective's optimum? Independent levels started at random or at the truth.

  python bench/truth_start.py --out runs/truth-start [--configs issue-a,hard,hard-wide] [--seeds 0,1,2]
                              [--starts random,truth,truth-fixed] [--jobs 2]

For each synthetic configuration and seed (the stores of bench/forest_quality.py), train the
post-hoc baseline's independent JumpReLU levels (the objective both methods share: MSE + lambda
L0 at the config's target L0, no hierarchy term) from up to three starts:
- random: the usual initialisation;
- truth: every level's decoder rows set to the truth's ideal features, encoder columns along
  them (at the random start's mean encoder norm), then trained as usual;
- truth-fixed: the same start, with the decoder held there for the whole run (only encoders,
  biases and thresholds learn): the truth's own score under the objective.
If the truth were the objective's optimum, truth-fixed would end at the best variance explained
and the truth start would keep its match. If truth-fixed ends below the random start at the
same L0, the objective prefers other features, and no optimiser or restart rule brings the
learned dictionary to the truth. Prints one JSON line per run, then a Markdown table of seed
means +- std: per level, Hungarian match to the truth and variance explained at the held L0.
"""

from __future__ import annotations

import sys
from pathlib import Path

from forest_quality import CONFIGS, _store, mean_std, parser, run_grid


def run_one(out: str, config: str, seed: int, start: str) -> dict:
    """Train (or reuse) one run from `start` (random, truth or truth-fixed) and return its per-level figures."""
    import torch

    torch.set_num_threads(1)  # jobs run side by side on a small machine
    from hsae.config import TrainConfig
    from hsae.data.store import Store
    from hsae.eval import evaluate_run
    from hsae.data.synth import load_truth
    from hsae.train.trainer import MODEL, Trainer

    acts, sizes = _store(Path(out), config, seed)
    _, l0, steps = CONFIGS[config]
    run = Path(out) / f"{config}-s{seed}" / start
    if not (run / MODEL).is_file():
        store = Store(acts)
        cfg = TrainConfig(levels=sizes, l0=[l0], steps=steps, seed=seed, baseline=True, d=store.d, acts=str(acts))
        trainer = Trainer(cfg.validate(), store, run)
        if start != "random":
            truth = [torch.nn.functional.normalize(u.float(), dim=1)
                     for u in load_truth(acts / "truth.safetensors")["directions"]]
            with torch.no_grad():
                for lv, u in zip(trainer.model.levels, truth):
                    lv.W_enc.copy_(u.t() * lv.W_enc.norm(dim=0).mean())
                    lv.W_dec.copy_(u)
        if start == "truth-fixed":  # the decoder stays the truth: it runs after every optimiser step
            trainer.model.normalize_decoder = torch.no_grad()(
                lambda: [lv.W_dec.copy_(u) for lv, u in zip(trainer.model.levels, truth)])
        assert trainer.run(progress=False) == 0
    ev = evaluate_run(run)
    return {"config": config, "seed": seed, "start": start,
            "match": ev["tree_recovery"]["feature_match_hungarian_per_level"],
            "var_explained": [lv["var_explained"] for lv in ev["levels"]],
            "l0_error": max(abs(lv["l0"] / l0 - 1) for lv in ev["levels"]),
            "edges_recoverable": ev["tree_recovery"]["edges_recoverable"]}


def _table(results: list[dict]) -> str:
    """Per (config, start): match and variance explained per level, seed means +- std."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["config"], r["start"]), []).append(r)
    lines = ["| config | start | n | match per level | var. expl. per level | edges recoverable | max L0 error |",
             "|---|---|---|---|---|---|---|"]
    for (config, start), rs in sorted(groups.items()):
        levels = range(len(rs[0]["match"]))
        match = " / ".join(mean_std([r["match"][l] for r in rs]) for l in levels)
        ve = " / ".join(mean_std([r["var_explained"][l] for r in rs]) for l in levels)
        lines.append(f"| {config} | {start} | {len(rs)} | {match} | {ve} | "
                     f"{mean_std([r['edges_recoverable'] for r in rs])} | {max(r['l0_error'] for r in rs):.3f} |")
    return "\n".join(lines)


def main() -> int:
    """Run the grid and print JSON lines, then the table."""
    p = parser(__doc__)
    p.add_argument("--starts", default="random,truth,truth-fixed",
                   help="comma-separated: random, truth (decoder starts at the truth), truth-fixed (and stays there)")
    a = p.parse_args()
    grid = [(c, int(s), start) for c in a.configs.split(",") for s in a.seeds.split(",") for start in a.starts.split(",")]
    print(_table(run_grid(run_one, a.out, grid, a.jobs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
