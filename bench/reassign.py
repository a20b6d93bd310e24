"""The assignment rule alone: re-assign a finished run's forest on its final weights with each
hub rule, and evaluate each forest on the held-out rows (JSON lines).

  python bench/reassign.py RUN [RUN ...] [--hubs none,csls]

Training is not repeated, so for an HSAE run this measures the rule on the weights the paper's
rule shaped; for a post-hoc run it is exactly the baseline with another rule. Features that
never fire on the held-out rows stay out of the forest (the trainer uses its last firing
window instead, which this file does not keep).
"""

import argparse
import json

import torch


def main() -> None:
    """Print one JSON object per (run, hub rule)."""
    from hsae.data.store import Store
    from hsae.eval.metrics import evaluate
    from hsae.model import update_forest
    from hsae.rundir import load_run

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="finished run directories")
    p.add_argument("--hubs", default="none,csls", help="comma-separated hub rules")
    a = p.parse_args()
    for run in a.runs:
        cfg, model, scale = load_run(run)
        store = Store(cfg.acts)
        store.scale = scale
        _, rows = store.split(cfg.holdout)
        batches = lambda: store.ordinary_batches(rows, 4096)  # noqa: E731
        with torch.no_grad():
            fires = [torch.zeros(n) for n in model.sizes]
            for x in batches():
                for l, act in enumerate(model.encode(x)):
                    fires[l] += (act > 0).sum(0)
        live = [f > 0 for f in fires]
        for hub in a.hubs.split(","):
            update_forest(model, cfg.similarity, "partial" if cfg.tree == "fixed" else cfg.tree, cfg.orphan_quantile,
                          None, live, hub)
            h = evaluate(model, batches)["hierarchy"]
            fam = [max((k for k, c in enumerate(hist) if c and k), default=0) / max(1e-9, sum(k * c for k, c in enumerate(hist)) / max(1, sum(hist[1:])))
                   for hist in h["children_per_parent"]]
            print(json.dumps({"run": run, "hub": hub, "hamming": h["hamming"], "hamming_chance": h["chance"]["hamming"],
                              "p_parent_given_child": h["p_parent_given_child"],
                              "p_parent_given_child_chance": h["chance"]["p_parent_given_child"],
                              "p_child_given_parent": h["p_child_given_parent"], "n_pairs": h["n_pairs"],
                              "largest_over_mean_family": fam}), flush=True)


if __name__ == "__main__":
    main()
