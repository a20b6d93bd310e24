"""One table across models and layers: HSAE vs post-hoc per (model, layer), seed means ± std, chance.

Reads RUNS/MODEL-LLAYER/runs/*/eval.json as bench/cross_model.sh leaves them and prints one
Markdown table (the main metrics with chance levels in parentheses, plus HSAE's Hamming
relative to post-hoc's) followed by a JSON object of the same numbers.

  python bench/cross_table.py runs/cross
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from hsae.eval.groups import SEED_SUFFIX, aggregate, cell, stats
from hsae.eval.report import family_sizes, metric_cells, metric_headers, read_eval

CELL = re.compile(r"^(?P<model>.+)-L(?P<layer>\d+)$")


def _evals(root: Path):
    """Yield ((model, layer), {run name: eval dict}) for every cell directory with evaluated runs."""
    for d in sorted(root.iterdir()):
        m = CELL.match(d.name)
        evs = {p.parent.name: read_eval(p) for p in sorted((d / "runs").glob("*/eval.json"))} if m else {}
        if evs:
            yield (m["model"], int(m["layer"])), evs


def families(evs: dict[str, dict]) -> dict[str, dict]:
    """{method: {"dead", "largest", "ratio": stats}} over a cell's runs, per group of seeds: dead
    fraction (mean over levels), largest family, and the largest family over its level's mean
    family (the worst parent level)."""
    per = {}
    for name, ev in evs.items():
        sizes = [fs for fs in map(family_sizes, ev["hierarchy"].get("children_per_parent", [])) if fs]
        dead = [lv["dead_fraction"] for lv in ev["levels"] if "dead_fraction" in lv]
        v = per.setdefault(SEED_SUFFIX.sub("", name), {"dead": [], "largest": [], "ratio": []})
        v["dead"].append(sum(dead) / max(1, len(dead)))
        v["largest"].append(max((top for top, _ in sizes), default=0))
        v["ratio"].append(max((top / mean for top, mean in sizes), default=float("nan")))
    return {n: {k: stats(x) for k, x in v.items()} for n, v in per.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="the RUNS_DIR of bench/cross_model.sh")
    a = p.parse_args()
    evals = dict(sorted(_evals(a.root)))
    table = {key: aggregate(evs, by="name") for key, evs in evals.items()}
    head = ["model", "layer", "method", "seeds", *metric_headers(), "Hamming vs post-hoc"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for (model, layer), groups in table.items():
        base = groups.get("post-hoc", {}).get("columns", {}).get("hamming", {}).get("mean")
        for name, g in groups.items():
            ham = g["columns"]["hamming"]["mean"]
            rel = f"{100 * (ham / base - 1):+.1f}%" if base and name != "post-hoc" else ""
            lines.append(f"| {model} | {layer} | {name} | {g['n']} | " + " | ".join(metric_cells(g)) + f" | {rel} |")
    print("\n".join(lines))
    print("\n| model | layer | method | dead (mean over levels) | largest family | largest / mean family (worst level) |")
    print("|---|---|---|---|---|---|")
    for (model, layer), evs in evals.items():
        for name, g in families(evs).items():
            print(f"| {model} | {layer} | {name} | {cell(g['dead'])} | {cell(g['largest'])} | {cell(g['ratio'])} |")
    finite = {f"{m}-L{l}": {n: {"n": g["n"], **{c: {k: v if v == v else None for k, v in s.items()}  # NaN: null
                                              for c, s in g["columns"].items()}} for n, g in gs.items()}
              for (m, l), gs in table.items()}
    print(json.dumps(finite, indent=1))


if __name__ == "__main__":
    main()
