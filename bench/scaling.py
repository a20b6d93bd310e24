"""HSAE vs post-hoc as the token budget grows: seed means and spreads per budget, beside chance.

Reads the eval.json files of `hsae ablate --variants hsae,post-hoc --seeds ...` directories
(one per token budget and step count; a series is a method at one step count, read from the
config each eval.json carries), prints one JSON object (per budget and series: mean, std and n of
Hamming, P(p|c), P(c|p), variance explained, last-level dead fraction and largest family /
mean family at the last parent level, and the chance levels) and draws one PNG of the curves.

  python bench/scaling.py 200000=runs/smollm2-seeds 1000000=runs/smollm2-1m --png docs/scaling.png
  python bench/scaling.py 200000=runs/smollm2-seeds 200000=runs/smollm2-0.2m-3000 ... (two step counts)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hsae.eval.groups import aggregate, stats, values
from hsae.eval.report import read_eval

METRICS = ["hamming", "p_parent_given_child", "p_child_given_parent", "var_explained", "dead_last", "hub_ratio"]
TITLES = dict(zip(METRICS, ["Hamming (lower: tighter)", "P(parent | child)", "P(child | parent)",
                            "variance explained (mean of levels)", "dead fraction, last level",
                            "largest / mean family, last parent level"]))


def _extra(ev: dict) -> dict:
    """Per-run columns groups.values() lacks: the last level's dead fraction, largest / mean family."""
    hist = ev["hierarchy"]["children_per_parent"][-1]  # the last parent level's histogram
    n = sum(hist[1:])
    mean = sum(k * c for k, c in enumerate(hist)) / n if n else float("nan")
    largest = max((k for k, c in enumerate(hist) if c and k), default=0)
    return {"dead_last": ev["levels"][-1]["dead_fraction"], "hub_ratio": largest / mean if n else float("nan")}


def budget_table(root: Path) -> dict:
    """{'method, N steps': {metric: stats, 'chance_X': stats}} over the seeds of one ablation directory."""
    evals = {p.parent.name: read_eval(p) for p in sorted(root.glob("*/eval.json"))}
    out = {}
    for name, g in aggregate(evals, by="name").items():
        label = f"{name}, {evals[g['runs'][0]]['config']['steps']} steps"
        cols = dict(g["columns"])
        for m in ("dead_last", "hub_ratio"):
            cols[m] = stats([_extra(evals[r])[m] for r in g["runs"]])
        out[label] = {"n": g["n"], **{k: v for k, v in cols.items() if k in METRICS or k.startswith("chance_")}}
    return out


def plot(table: dict, png: Path) -> None:
    """One panel per metric: mean +- std against tokens, a line per series, chance dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted(table, key=int)
    methods = sorted({k for b in budgets for k in table[b]})
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, m in zip(axes.flat, METRICS):
        for i, method in enumerate(methods):
            colour = f"C{i}"  # one colour per method in every panel; its chance level dashed
            pts = [(int(b), table[b][method][m]) for b in budgets if method in table[b]]
            ax.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts], yerr=[p[1]["std"] for p in pts],
                        marker="o", capsize=3, color=colour, label=method)
            ch = [(int(b), table[b][method].get(f"chance_{m}")) for b in budgets if method in table[b]]
            if all(c for _, c in ch):
                ax.plot([c[0] for c in ch], [c[1]["mean"] for c in ch], "--", color=colour, alpha=0.5,
                        label=f"{method}: chance")
        ax.set_xscale("log")
        ax.set_xticks([int(b) for b in budgets], [f"{int(b) / 1e6:g}M" for b in budgets])
        ax.minorticks_off()
        ax.set_title(TITLES[m])
        ax.set_xlabel("training tokens")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> int:
    """Entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("budgets", nargs="+", help="TOKENS=ABLATION_DIR, one per token budget")
    ap.add_argument("--png", help="write the curves here")
    a = ap.parse_args()
    table = {}
    for spec in a.budgets:
        tokens, _, d = spec.partition("=")
        if not tokens.isdigit() or not Path(d).is_dir():
            sys.exit(f"scaling.py: error: expected TOKENS=DIR, got {spec!r}")
        table.setdefault(tokens, {}).update(budget_table(Path(d)))
    if a.png:
        plot(table, Path(a.png))
    print(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
