"""Report plots (matplotlib, Agg: no display needed). Every number comes from eval JSON files
and training logs; each function writes one PNG and returns its path, or None if no run has
the data it needs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..files import publish, tmp_of, writing  # noqa: E402
from .metrics import HIST_BINS  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = tmp_of(path)
    with writing(path, tmp):
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    publish(tmp, path)
    return path


def _per_level(evals: dict[str, dict], keys: list[tuple[str, str]], path: Path) -> Path:
    """One panel per (key, label): the level entries' key vs level size, one line per run."""
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys) + 0.5, 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], keys):
        for name, ev in evals.items():
            pts = [(lv["n_features"], lv[key]) for lv in ev["levels"] if key in lv]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("features in level")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def levels_plot(evals: dict[str, dict], path: Path) -> Path:
    """Variance explained (and CE loss recovered, when spliced) vs level size, one line per run."""
    spliced = any("ce_loss_recovered" in lv for ev in evals.values() for lv in ev["levels"])
    return _per_level(evals, [("var_explained", "variance explained")]
                      + ([("ce_loss_recovered", "CE loss recovered")] if spliced else []), path)


def training_plot(logs: dict[str, list[dict]], path: Path, targets: dict[str, list[float]] | None = None) -> Path | None:
    """L0 (with its target, dashed) and lambda of every level during training: one column per run."""
    logs = {n: lg for n, lg in logs.items() if lg}
    if not logs:
        return None
    fig, axes = plt.subplots(2, len(logs), figsize=(4.5 * len(logs), 6), squeeze=False, sharex="col")
    for j, (name, log) in enumerate(logs.items()):
        steps = [r["step"] for r in log]
        for row, key in enumerate(("l0", "lambda")):
            ax = axes[row][j]
            for l in range(len(log[0][key])):
                ax.plot(steps, [r[key][l] for r in log], label=f"level {l}", lw=1, color=f"C{l}")
                if key == "l0" and targets and name in targets:
                    ax.axhline(targets[name][l], color=f"C{l}", ls="--", lw=0.8)
            ax.set_ylabel("L0 (dashed: target)" if key == "l0" else "lambda (sparsity weight)")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(name, fontsize=10)
                ax.legend(fontsize=7)
            else:
                ax.set_xlabel("step")
    return _save(fig, path)


def hierarchy_plot(evals: dict[str, dict], path: Path) -> Path:
    """Hamming, P(p|c) and P(c|p) of every run side by side; its chance level (± spread) as a black tick."""
    keys = [("hamming", "Hamming (lower is better)"), ("p_parent_given_child", "P(parent | child)"),
            ("p_child_given_parent", "P(child | parent)")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    names = list(evals)
    for ax, (key, label) in zip(axes, keys):
        vals = [evals[n]["hierarchy"][key] for n in names]
        bars = ax.bar(range(len(names)), vals, color=[f"C{i}" for i in range(len(names))])
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        chance = [(i, evals[n]["hierarchy"].get("chance")) for i, n in enumerate(names)]
        chance = [(i, c[key], c.get(f"{key}_std", 0.0)) for i, c in chance if c and key in c]
        if chance:
            xs, ys, es = zip(*chance)
            ax.errorbar(xs, ys, yerr=es, fmt="_", color="black", markersize=22, mew=2, capsize=4, label="chance ± sd")
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
    return _save(fig, path)


def children_plot(evals: dict[str, dict], path: Path) -> Path | None:
    """Histogram of children per parent (all parent levels together), one bar series per run."""
    counts = {}
    for name, ev in evals.items():
        per = ev["hierarchy"].get("children_per_parent")
        if per:
            total = [0] * max(len(c) for c in per)
            for c in per:
                for k, v in enumerate(c):
                    total[k] += v
            counts[name] = total
    if not counts:
        return None
    # power-of-two bins (1, 2, 3-4, 5-8, ...): a few hub parents collect hundreds of children
    top = max(len(c) for c in counts.values()) - 1
    los = [1, 2]
    while los[-1] <= top:
        los.append(2 * los[-1] - 1)
    bins = list(zip(los, los[1:]))  # [1], [2], [3, 4], [5, 8], ...
    labels = [str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in bins]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / len(counts)
    for i, (name, c) in enumerate(counts.items()):
        ys = [sum(c[lo:hi]) for lo, hi in bins]
        ax.bar([j + (i - (len(counts) - 1) / 2) * width for j in range(len(bins))], ys, width, label=name)
    ax.set_xticks(range(len(bins)), labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("children per parent (parents with at least one child)")
    ax.set_ylabel("parents")
    ax.legend(fontsize=8)
    return _save(fig, path)


def pairs_plot(evals: dict[str, dict], path: Path) -> Path | None:
    """Distribution of P(p|c) and P(c|p) over the assigned pairs, one step line per run."""
    have = {n: ev["hierarchy"] for n, ev in evals.items() if "p_parent_given_child_hist" in ev["hierarchy"]}
    if not have:
        return None
    edges = [i / HIST_BINS for i in range(HIST_BINS + 1)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in zip(axes, ("p_parent_given_child_hist", "p_child_given_parent_hist"), ("P(p|c)", "P(c|p)")):
        for name, h in have.items():
            c = h[key]
            tot = max(1, sum(c))
            ax.stairs([v / tot for v in c], edges, label=name, lw=1.5)
        ax.set_xlabel(f"{label} of a pair (held-out rows)")
        ax.set_ylabel("fraction of pairs")
        ax.legend(fontsize=8)
    return _save(fig, path)


def absorption_plot(evals: dict[str, dict], path: Path) -> Path | None:
    """Absorption rate and mean absorption fraction per level, one line per run."""
    have = {n: ev for n, ev in evals.items() if "absorption" in ev}
    if not have:
        return None
    return _per_level(have, [("absorption_rate", "full-absorption rate"),
                             ("mean_absorption_fraction", "mean absorption fraction")], path)


def semantic_plot(evals: dict[str, dict], path: Path) -> Path | None:
    """WordNet-consistent and probe-hierarchical fractions per child level, each beside its chance
    level (dashed, same colour), one line per run."""
    checks = [(k, label) for k, label in (("wordnet", "WordNet-consistent edges"), ("probe", "probe-hierarchical edges"))
              if any(k in ev for ev in evals.values())]
    if not checks:
        return None
    keys = {"wordnet": "consistent_fraction", "probe": "hierarchical_fraction"}
    fig, axes = plt.subplots(1, len(checks), figsize=(5 * len(checks) + 0.5, 4), squeeze=False)
    for ax, (k, label) in zip(axes[0], checks):
        for name, ev in evals.items():
            if k not in ev:
                continue
            lv = ev[k]["levels"][1:] if k == "wordnet" else ev[k]["levels"]
            xs = list(range(1, len(lv) + 1))
            line, = ax.plot(xs, [v[keys[k]] for v in lv], marker="o", label=name)
            ax.plot(xs, [v["chance_" + keys[k]] for v in lv], ls="--", color=line.get_color(), alpha=0.7)
        ax.set_xlabel("child level")
        ax.set_ylabel(f"{label} (dashed: chance)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


# methods_plot's panels: (column, title, chance column or None); groups.values() names the columns
METHOD_PANELS = [("hamming", "Hamming (lower is better)", "chance_hamming"),
                 ("p_parent_given_child", "P(parent | child)", "chance_p_parent_given_child"),
                 ("p_child_given_parent", "P(child | parent)", "chance_p_child_given_parent"),
                 ("wordnet_consistent", "WordNet-consistent edges", "chance_wordnet_consistent"),
                 ("probe_rate", "probe-hierarchical edges", "chance_probe_rate"),
                 ("var_explained", "variance explained", None),
                 ("absorption_rate", "absorption (mean over levels)", None),
                 ("dead_fraction", "dead features (mean over levels)", None)]


def methods_plot(evals: dict[str, dict], path: Path) -> Path | None:
    """Methods side by side: per metric, one bar per group of seeds (mean ± std), chance as a black tick.

    None unless some group has more than one run (one run per method: hierarchy_plot shows it)."""
    from .groups import aggregate

    groups = aggregate(evals)
    if not any(g["n"] > 1 for g in groups.values()):
        return None
    last = max(len(ev["levels"]) for ev in evals.values()) - 1
    panels = [p for p in METHOD_PANELS + [(f"ce_loss_recovered@{last}", "CE loss recovered (last level)", None)]
              if any(p[0] in g["columns"] for g in groups.values())]
    names = list(groups)
    cols = 4
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.3 * rows), squeeze=False)
    for ax, (key, title, chance) in zip(axes.flat, panels):
        st = [groups[n]["columns"].get(key, {"mean": float("nan"), "std": float("nan")}) for n in names]
        ax.bar(range(len(names)), [s["mean"] for s in st], yerr=[0 if s["std"] != s["std"] else s["std"] for s in st],
               capsize=4, ecolor="0.45", color=[f"C{i}" for i in range(len(names))])
        ch = [(i, groups[n]["columns"][chance]["mean"]) for i, n in enumerate(names)
              if chance and chance in groups[n]["columns"]]
        if ch:
            ax.plot(*zip(*ch), "_", color="black", markersize=22, mew=2, label="chance")
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(names)), [f"{n} (n={groups[n]['n']})" for n in names], rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    return _save(fig, path)
