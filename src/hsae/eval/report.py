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
    extra = _level_tables(evals)
    return "\n".join(lines + ([""] + extra if extra else [])).rstrip()


def name_of(path: str | Path, ev: dict) -> str:
    """A short row name for an eval file: its run directory's name."""
    return Path(ev.get("run", path)).name


def _level_tables(evals: dict[str, dict]) -> list[str]:
    """Per-level splice and absorption tables (only the runs and columns that have them)."""
    out = []
    sp = {n: ev for n, ev in evals.items() if "splice" in ev}
    if sp:
        out += ["| model | level | features | CE clean | CE spliced | CE zero-abl. | CE loss recovered | KL |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {n} | {i} | {lv['n_features']} | {lv['ce_clean']:.3f} | {lv['ce_spliced']:.3f} | "
                f"{lv['ce_zero_ablation']:.3f} | {lv['ce_loss_recovered']:.3f} | {lv['kl']:.3f} |"
                for n, ev in sp.items() for i, lv in enumerate(ev["levels"])]
        out.append("")
    ab = {n: ev for n, ev in evals.items() if "absorption" in ev}
    if ab:
        out += ["| model | level | features | full-absorption rate | mean absorption fraction | letters kept / skipped |",
                "|---|---|---|---|---|---|"]
        out += [f"| {n} | {i} | {lv['n_features']} | {lv['absorption_rate']:.4f} | {lv['mean_absorption_fraction']:.4f} | "
                f"{ev['absorption']['letters_kept']} / {ev['absorption']['letters_skipped']} |"
                for n, ev in ab.items() for i, lv in enumerate(ev["levels"])]
        out.append("")
    return out


def write_report(runs: list[str | Path], out: str | Path) -> Path:
    """report.md plus PNG plots in `out` for finished, evaluated runs (RUN/eval.json); returns report.md."""
    import json

    from ..config import TrainConfig, UserError
    from ..rundir import read_log
    from . import figures

    out = Path(out)
    evals, logs, targets = {}, {}, {}
    for r in runs:
        p = Path(r) / "eval.json"
        if not p.is_file():
            raise UserError(f"{r}: no eval.json; run `hsae eval {r} --json {p}` first")
        ev = json.loads(p.read_text())
        # the run directory's name, or its whole path where two runs share a name
        name = Path(r).name if [Path(x).name for x in runs].count(Path(r).name) == 1 else str(r)
        evals[name], logs[name] = ev, read_log(r)
        if (Path(r) / "config.json").is_file():
            targets[name] = TrainConfig.load(Path(r) / "config.json").l0_targets
    out.mkdir(parents=True, exist_ok=True)
    plots = [
        ("Per-level reconstruction", figures.levels_plot(evals, out / "levels.png")),
        ("Training: L0 and lambda per level", figures.training_plot(logs, out / "training.png", targets)),
        ("Hierarchy metrics", figures.hierarchy_plot(evals, out / "hierarchy.png")),
        ("Children per parent", figures.children_plot(evals, out / "children.png")),
        ("P(p|c) and P(c|p) over pairs", figures.pairs_plot(evals, out / "pairs.png")),
        ("Absorption per level", figures.absorption_plot(evals, out / "absorption.png")),
    ]
    lines = ["# hsae report", "", "Runs: " + ", ".join(f"`{r}`" for r in runs) + ". Held-out rows of each run's store; "
             "definitions in `hsae/eval/metrics.py`, `splice.py`, `absorption.py`.", "",
             comparison_table(evals), ""]
    for title, png in plots:
        if png is not None:
            lines += [f"## {title}", "", f"![{title}]({png.name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
