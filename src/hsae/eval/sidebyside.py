"""Methods side by side: the quality and meaning columns, mean ± std over seeds.

One row per group of runs equal but for the seed (groups.aggregate), for what the main table
leaves out: the WordNet and probe-based edge rates with their chance levels, absorption and
dead features (mean over levels), the training's wall time per step; then a per-level table of
variance explained, CE loss recovered, absorption and dead fraction. A column appears where at
least one run has it (`hsae eval --wordnet --probe --splice --absorption`).
"""

from __future__ import annotations

from .groups import PER_LEVEL, SUMMARY, with_chance


def side_by_side(groups: dict[str, dict]) -> list[str]:
    """Markdown lines of the two side-by-side tables of aggregate()'s groups (empty where no run has any of their columns)."""
    present = [c for c in SUMMARY if any(c[0] in g["columns"] for g in groups.values())]
    out = []
    if present:
        head = ["model", "n"] + [h + (" (chance)" if ch else "") for _, h, ch in present]
        out += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        out += [f"| {n} | {g['n']} | " + " | ".join(with_chance(g["columns"], k, ch, g["n"]) for k, _, ch in present) + " |"
                for n, g in groups.items()]
        out.append("")
    n_levels = max((int(c.split("@")[1]) + 1 for g in groups.values() for c in g["columns"] if "@" in c), default=0)
    keys = [(k, h) for k, h in PER_LEVEL if any(f"{k}@0" in g["columns"] for g in groups.values())]
    if keys and any(k in ("ce_loss_recovered", "absorption_rate") for k, _ in keys):
        head = ["model", "n", "level"] + [h for _, h in keys]
        out += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        out += [f"| {n} | {g['n']} | {i} | " + " | ".join(with_chance(g["columns"], f"{k}@{i}", None, g["n"]) for k, _ in keys) + " |"
                for n, g in groups.items() for i in range(n_levels) if f"var_explained@{i}" in g["columns"]]
        out.append("")
    return out
