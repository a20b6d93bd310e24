"""Runs grouped by seed: the numeric columns of an eval dict, and their mean ± std over a group.

Runs that differ only in their seed form one group (`aggregate`); each column is then the
mean ± standard deviation over its runs (ddof=1) with the number of runs n.
"""

from __future__ import annotations

import json
import math
import re

from ..config import LATER

COLUMNS = ["l0", "var_explained", "p_parent_given_child", "p_child_given_parent", "hamming"]
CHANCE = ["p_parent_given_child", "p_child_given_parent", "hamming"]  # columns shown with their chance level
RECOVERY = ["feature_match", "edge_precision", "edge_recall", "edge_f1", "edges_recoverable", "edge_precision_recovered"]
# a run name's seed suffix: NAME-s3 (hsae ablate), NAME-seed3, NAME_seed-3
SEED_SUFFIX = re.compile(r"(?:-s|[-_]seed[-_]?)\d+$")

# (column, header, chance column or None); extra_values() computes them from an eval dict
SUMMARY = [("wordnet_consistent", "WordNet consistent", "chance_wordnet_consistent"),
           ("wordnet_equal", "WordNet equal", "chance_wordnet_equal"),
           ("probe_rate", "probe-based", "chance_probe_rate"),
           ("absorption_rate", "absorption", None),
           ("dead_fraction", "dead", None),
           ("seconds_per_step", "train s/step", None)]
PER_LEVEL = [("var_explained", "var.expl."), ("ce_loss_recovered", "CE loss recovered"),
             ("absorption_rate", "absorption"), ("dead_fraction", "dead")]


def extra_values(ev: dict) -> dict:
    """The side-by-side columns of one eval dict (missing ones left out); per level as KEY@LEVEL."""
    out = {}
    if "wordnet" in ev:
        w = ev["wordnet"]
        out.update(wordnet_consistent=w["consistent_fraction"], chance_wordnet_consistent=w["chance_consistent_fraction"],
                   wordnet_equal=w["equal_fraction"], chance_wordnet_equal=w["chance_equal_fraction"])
    if "probe" in ev:
        out.update(probe_rate=ev["probe"]["hierarchical_fraction"],
                   chance_probe_rate=ev["probe"]["chance_hierarchical_fraction"])
    if "train" in ev:
        out["seconds_per_step"] = ev["train"]["seconds_per_step"]
    levels = ev["levels"]
    for key, _ in PER_LEVEL:
        vals = [lv[key] for lv in levels if key in lv]
        out.update({f"{key}@{i}": lv[key] for i, lv in enumerate(levels) if key in lv})
        if key in ("absorption_rate", "dead_fraction") and len(vals) == len(levels):
            out[key] = sum(vals) / len(vals)
    return out


def row(ev: dict) -> dict:
    """The table's columns from one eval dict."""
    h = ev["hierarchy"]
    return {"l0": ev["l0"], "var_explained": ev["var_explained"], "p_parent_given_child": h["p_parent_given_child"],
            "p_child_given_parent": h["p_child_given_parent"], "hamming": h["hamming"]}


def values(ev: dict) -> dict:
    """Every numeric column of one eval dict: row(), chance_KEY for the chance levels, tree recovery, extra_values()."""
    out = row(ev)
    chance = ev["hierarchy"].get("chance") or {}
    out.update({f"chance_{k}": chance[k] for k in CHANCE if k in chance})
    out.update({k: v for k, v in (ev.get("tree_recovery") or {}).items() if k in RECOVERY})
    return out | extra_values(ev)


def fmt(v) -> str:
    """A table cell: floats to 3 decimals below 10, to 1 above; anything else as str."""
    return f"{v:.3f}" if isinstance(v, float) and abs(v) < 10 else f"{v:.1f}" if isinstance(v, float) else str(v)


def stats(v: list[float]) -> dict:
    """mean, std (ddof=1; nan below 2 values) and n of the finite values in v."""
    v = [float(x) for x in v if x is not None and math.isfinite(float(x))]
    n = len(v)
    mean = sum(v) / n if n else float("nan")
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else float("nan")
    return {"mean": mean, "std": std, "n": n}


def group_key(name: str, ev: dict, by: str = "config") -> str:
    """The group of one run: its config without the seed, else (or with by="name") its name without a seed suffix."""
    cfg = ev.get("config")
    if by == "config" and cfg is not None:
        # plus the store it was evaluated on: one run evaluated on two stores is not two seeds
        # (a run older than a config field ran as LATER says: the same group as one naming it)
        same = {**LATER, **{k: v for k, v in cfg.items() if k != "seed"}, "eval acts": ev.get("acts")}
        return "config:" + json.dumps(same, sort_keys=True)
    if by == "run":
        return "run:" + name
    return "name:" + (SEED_SUFFIX.sub("", name) or name)


def _unique(label: str, taken) -> str:
    """label, or label #2, #3, ... where it is taken."""
    k = 1
    while (label if k == 1 else f"{label} #{k}") in taken:
        k += 1
    return label if k == 1 else f"{label} #{k}"


def aggregate(evals: dict[str, dict], by: str = "config") -> dict[str, dict]:
    """{group name: {"runs", "n", "columns": {column: {"mean", "std", "n"}}}} over runs equal but for the seed.

    by="config": equal `config` except `seed` (runs without one: by name); "name": the run
    name without its seed suffix (-sN); "run": every run alone. A group is named after its
    first run without the seed suffix (plus " #k" where two groups would share a name)."""
    groups: dict[str, list[str]] = {}
    for name, ev in evals.items():
        groups.setdefault(group_key(name, ev, by), []).append(name)
    out = {}
    for runs in groups.values():
        label = _unique(runs[0] if by == "run" else SEED_SUFFIX.sub("", runs[0]) or runs[0], out)
        vals = [values(evals[r]) for r in runs]
        cols = sorted({c for v in vals for c in v}, key=lambda c: (c not in COLUMNS, c))
        out[label] = {"runs": runs, "n": len(runs), "columns": {c: stats([v.get(c) for v in vals]) for c in cols}}
    return out


def cell(stats: dict | None) -> str:
    """mean ± std with the mean's precision (just the mean for one run); - when missing."""
    if not stats or not stats["n"]:
        return "-"
    m, s = stats["mean"], stats["std"]
    text = fmt(float(m))
    if math.isfinite(s):
        digits = len(text.split(".")[1]) if "." in text else 0
        text += f" ± {s:.{digits}f}"
    return text


def with_chance(cols: dict, key: str, chance: str | None, of: int | None = None) -> str:
    """mean ± std of one column, its chance level's mean in parentheses if it has one, [k/of] if only k of `of` runs have it."""
    text = cell(cols.get(key))
    if chance is not None:
        ch = cols.get(chance)
        text += f" ({fmt(float(ch['mean'])) if ch and ch['n'] else '-'})"
    k = cols[key]["n"] if key in cols else 0
    if of is not None and 0 < k < of:
        text += f" [{k}/{of}]"
    return text
