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

from hsae.eval.groups import aggregate
from hsae.eval.report import metric_cells, metric_headers, read_eval

CELL = re.compile(r"^(?P<model>.+)-L(?P<layer>\d+)$")


def cells(root: Path) -> dict[tuple[str, int], dict[str, dict]]:
    """{(model, layer): {method: aggregate group}} for every cell directory with evaluated runs."""
    out = {}
    for d in sorted(root.iterdir()):
        m = CELL.match(d.name)
        evs = {p.parent.name: read_eval(p) for p in sorted((d / "runs").glob("*/eval.json"))} if m else {}
        if evs:
            out[(m["model"], int(m["layer"]))] = aggregate(evs, by="name")
    return dict(sorted(out.items()))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="the RUNS_DIR of bench/cross_model.sh")
    a = p.parse_args()
    table = cells(a.root)
    head = ["model", "layer", "method", "seeds", *metric_headers(), "Hamming vs post-hoc"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for (model, layer), groups in table.items():
        base = groups.get("post-hoc", {}).get("columns", {}).get("hamming", {}).get("mean")
        for name, g in groups.items():
            ham = g["columns"]["hamming"]["mean"]
            rel = f"{100 * (ham / base - 1):+.1f}%" if base and name != "post-hoc" else ""
            lines.append(f"| {model} | {layer} | {name} | {g['n']} | " + " | ".join(metric_cells(g)) + f" | {rel} |")
    print("\n".join(lines))
    finite = {f"{m}-L{l}": {n: {"n": g["n"], **{c: {k: v if v == v else None for k, v in s.items()}  # NaN: null
                                              for c, s in g["columns"].items()}} for n, g in gs.items()}
              for (m, l), gs in table.items()}
    print(json.dumps(finite, indent=1))


if __name__ == "__main__":
    main()
