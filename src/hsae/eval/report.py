"""Plain-text comparison tables of eval JSON files.

Runs that differ only in their seed form one group (`aggregate`): the tables then show one
row per group, each value as mean ± standard deviation over its runs (ddof=1) with the
number of runs n. Beside every hierarchy metric, in parentheses, is its chance level
(eval/chance.py; the mean over the group's runs), `-` where an eval file has none.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..files import atomic_write
from .groups import CHANCE, COLUMNS, RECOVERY, aggregate, cell, stats, with_chance
from .sidebyside import side_by_side

HEADERS = ["L0", "var.expl.", "P(p\\|c)", "P(c\\|p)", "Hamming"]  # \| : a literal | inside a Markdown cell

# PAPER.md section 6 (gemma-2-2b layer 13, 4 levels, L0 ~ 50), for reference beside ours.
PAPER_ROWS = {
    "paper HSAE": {"l0": 50.1, "var_explained": 0.713, "p_parent_given_child": 0.769, "p_child_given_parent": 0.432, "hamming": 21.3},
    "paper post-hoc": {"l0": 49.8, "var_explained": 0.714, "p_parent_given_child": 0.662, "p_child_given_parent": 0.343, "hamming": 36.1},
}


def read_eval(path: str | Path) -> dict:
    """An eval JSON file (`hsae eval --json`), or a one-line UserError naming it."""
    from ..config import UserError

    try:
        ev = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bytes that are not UTF-8
        raise UserError(f"cannot read eval file {path}: {e}") from None
    if not isinstance(ev, dict) or not isinstance(ev.get("levels"), list):
        raise UserError(f"{path}: not an eval file of `hsae eval --json` (no 'levels' list)")
    return ev


def metric_cells(group: dict) -> list[str]:
    """The main table's cells of one group: COLUMNS, each hierarchy metric with its chance level."""
    return [with_chance(group["columns"], c, f"chance_{c}" if c in CHANCE else None) for c in COLUMNS]


def metric_headers() -> list[str]:
    """Headers of metric_cells."""
    return [h + (" (chance)" if c in CHANCE else "") for c, h in zip(COLUMNS, HEADERS)]


def _paper_groups() -> dict[str, dict]:
    """The paper's rows as groups (n: unknown, left blank)."""
    return {n: {"runs": [n], "n": None, "columns": {c: stats([v]) for c, v in r.items()}}
            for n, r in PAPER_ROWS.items()}


def comparison_table(evals: dict[str, dict], paper: bool = True, per_run: bool = False) -> str:
    """Markdown tables: one row per group of runs equal but for the seed (per_run: per run), then the paper's rows."""
    groups = aggregate(evals, by="run" if per_run else "config")
    n_col = any(g["n"] > 1 for g in groups.values())
    rows = {**groups, **(_paper_groups() if paper else {})}
    lead = ["model"] + (["n"] if n_col else [])

    def line(name: str, g: dict, cells: list[str]) -> str:
        return f"| {name} | " + (f"{'' if g['n'] is None else g['n']} | " if n_col else "") + " | ".join(cells) + " |"

    lines = ["| " + " | ".join(lead + metric_headers()) + " |", "|---" * (len(lead) + len(COLUMNS)) + "|"]
    lines += [line(n, g, metric_cells(g)) for n, g in rows.items()]
    rec = {n: g for n, g in groups.items() if RECOVERY[0] in g["columns"]}
    if rec:
        lines += ["", "| " + " | ".join(lead + RECOVERY) + " |", "|---" * (len(lead) + len(RECOVERY)) + "|"]
        lines += [line(n, g, [cell(g["columns"].get(c)) for c in RECOVERY]) for n, g in rec.items()]
    lines += ["", "| model | level | features | L0 | var.expl. | dead | children per parent: largest / mean |",
              "|---|---|---|---|---|---|---|"]
    for n, ev in evals.items():
        fams = ev["hierarchy"].get("children_per_parent", [])
        lines += [f"| {n} | {i} | {v['n_features']} | {v['l0']:.2f} | {v['var_explained']:.3f} | {v['dead_fraction']:.3f} | "
                  f"{family_cell(fams[i]) if i < len(fams) else '-'} |" for i, v in enumerate(ev["levels"])]
    extra = side_by_side(groups) + _level_tables(evals)
    return "\n".join(lines + ([""] + extra if extra else [])).rstrip()


def family_sizes(hist: list[int]) -> tuple[int, float] | None:
    """(largest, mean) family size from a children-per-parent histogram (hist[k] parents with k
    children); None if no parent has a child."""
    n = sum(hist[1:])
    if not n:
        return None
    return max(k for k, c in enumerate(hist) if c and k), sum(k * c for k, c in enumerate(hist)) / n


def family_cell(hist: list[int]) -> str:
    """'largest / mean' family size from a children-per-parent histogram."""
    fs = family_sizes(hist)
    return "-" if fs is None else f"{fs[0]} / {fs[1]:.1f}"


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
    wn = {n: ev for n, ev in evals.items() if "wordnet" in ev}
    if wn:
        out += ["WordNet taxonomy (eval/wordnet.py): edges with both ends labelled; consistent = the child's "
                "synset strictly under the parent's; chance = the same families under random parents.", "",
                "| model | child level | labelled edges | consistent (chance) | equal (chance) | mean synset depth |",
                "|---|---|---|---|---|---|"]
        for n, ev in wn.items():
            for i, lv in enumerate(ev["wordnet"]["levels"][1:], start=1):
                out.append(f"| {n} | {i} | {lv['labelled_edges']} | {lv['consistent_fraction']:.3f} "
                           f"({lv['chance_consistent_fraction']:.3f}) | {lv['equal_fraction']:.3f} | {lv['mean_depth']:.2f} |")
            w = ev["wordnet"]
            out.append(f"| {n} | all | {w['labelled_edges']} | {w['consistent_fraction']:.3f} "
                       f"({w['chance_consistent_fraction']:.3f}) | {w['equal_fraction']:.3f} "
                       f"({w['chance_equal_fraction']:.3f}) | |")
        out.append("")
    pr = {n: ev for n, ev in evals.items() if "probe" in ev}
    if pr:
        out += ["Probe-based edges (eval/probe.py, Tree SAE): the child's probe has both decoder rows in its "
                "top 5; chance = the same families under random parents.", "",
                "| model | child level | edges | hierarchical (chance) |", "|---|---|---|---|"]
        for n, ev in pr.items():
            p = ev["probe"]
            out += [f"| {n} | {i} | {lv['edges']} | {lv['hierarchical_fraction']:.3f} ({lv['chance_hierarchical_fraction']:.3f}) |"
                    for i, lv in enumerate(p["levels"], start=1)]
            out.append(f"| {n} | all | {p['edges']} | {p['hierarchical_fraction']:.3f} ({p['chance_hierarchical_fraction']:.3f}) |")
        out.append("")
    return out


def write_report(runs: list[str | Path], out: str | Path) -> Path:
    """report.md plus PNG plots in `out` for finished, evaluated runs (RUN/eval.json); returns report.md."""
    from ..config import TrainConfig, UserError
    from ..rundir import read_log
    from . import figures

    out = Path(out)
    evals, logs, targets = {}, {}, {}
    for r in runs:
        p = Path(r) / "eval.json"
        if not p.is_file():
            raise UserError(f"{r}: no eval.json; run `hsae eval {r} --json {p}` first")
        ev = read_eval(p)
        # the run directory's name, or its whole path where two runs share a name
        name = Path(r).name if [Path(x).name for x in runs].count(Path(r).name) == 1 else str(r)
        evals[name], logs[name] = ev, read_log(r)
        if (Path(r) / "config.json").is_file():
            targets[name] = TrainConfig.load(Path(r) / "config.json", complete=True).l0_targets
    out.mkdir(parents=True, exist_ok=True)
    plots = [
        ("Per-level reconstruction", figures.levels_plot(evals, out / "levels.png")),
        ("Training: L0 and lambda per level", figures.training_plot(logs, out / "training.png", targets)),
        ("Hierarchy metrics", figures.hierarchy_plot(evals, out / "hierarchy.png")),
        ("Children per parent", figures.children_plot(evals, out / "children.png")),
        ("P(p|c) and P(c|p) over pairs", figures.pairs_plot(evals, out / "pairs.png")),
        ("Absorption per level", figures.absorption_plot(evals, out / "absorption.png")),
        ("Meaning: WordNet and probe-based edges", figures.semantic_plot(evals, out / "semantic.png")),
        ("Methods side by side (mean ± std over seeds)", figures.methods_plot(evals, out / "methods.png")),
    ]
    lines = ["# hsae report", "", "Runs: " + ", ".join(f"`{r}`" for r in runs) + ". Held-out rows of each run's store; "
             "definitions in `hsae/eval/metrics.py`, `splice.py`, `absorption.py`.", "",
             comparison_table(evals), ""]
    for title, png in plots:
        if png is not None:
            lines += [f"## {title}", "", f"![{title}]({png.name})", ""]
    path = out / "report.md"
    atomic_write(path, "\n".join(lines).encode())
    return path
