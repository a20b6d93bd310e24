"""Plain-text comparison tables of eval JSON files."""

from __future__ import annotations

from pathlib import Path

# PAPER.md section 6 (gemma-2-2b layer 13, 4 levels, L0 ~ 50), for reference beside ours.
PAPER_ROWS = {
    "paper HSAE": {"l0": 50.1, "var_explained": 0.713, "p_parent_given_child": 0.769, "p_child_given_parent": 0.432, "hamming": 21.3},
    "paper post-hoc": {"l0": 49.8, "var_explained": 0.714, "p_parent_given_child": 0.662, "p_child_given_parent": 0.343, "hamming": 36.1},
}
COLUMNS = ["l0", "var_explained", "p_parent_given_child", "p_child_given_parent", "hamming"]
HEADERS = ["L0", "var.expl.", "P(p|c)", "P(c|p)", "Hamming"]
RECOVERY = ["feature_match", "edge_precision", "edge_recall", "edge_f1"]


def row(ev: dict) -> dict:
    """The table's columns from one eval dict."""
    h = ev["hierarchy"]
    return {"l0": ev["l0"], "var_explained": ev["var_explained"], "p_parent_given_child": h["p_parent_given_child"],
            "p_child_given_parent": h["p_child_given_parent"], "hamming": h["hamming"]}


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) and abs(v) < 10 else f"{v:.1f}" if isinstance(v, float) else str(v)


def comparison_table(evals: dict[str, dict], paper: bool = True) -> str:
    """Markdown table: one row per named eval, then the paper's rows."""
    rows = {name: row(ev) for name, ev in evals.items()}
    if paper:
        rows.update(PAPER_ROWS)
    lines = ["| model | " + " | ".join(HEADERS) + " |", "|---" * (len(HEADERS) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for n, r in rows.items()]
    rec = {n: ev["tree_recovery"] for n, ev in evals.items() if "tree_recovery" in ev}
    if rec:
        lines += ["", "| model | " + " | ".join(RECOVERY) + " |", "|---" * (len(RECOVERY) + 1) + "|"]
        lines += [f"| {n} | " + " | ".join(_fmt(r[c]) for c in RECOVERY) + " |" for n, r in rec.items()]
    levels = {n: ev["levels"] for n, ev in evals.items()}
    lines += ["", "| model | level | features | L0 | var.expl. | dead |", "|---|---|---|---|---|---|"]
    for n, lv in levels.items():
        lines += [f"| {n} | {i} | {v['n_features']} | {v['l0']:.2f} | {v['var_explained']:.3f} | {v['dead_fraction']:.3f} |"
                  for i, v in enumerate(lv)]
    return "\n".join(lines)


def name_of(path: str | Path, ev: dict) -> str:
    """A short row name for an eval file: its run directory's name."""
    return Path(ev.get("run", path)).name
