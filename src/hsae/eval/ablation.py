"""The paper's ablation (PAPER.md section 6): one store, seven variants, one or more seeds, one table.

Each (variant, seed) is a normal run directory under the ablation directory: out/NAME for the
base config's own seed (so an ablation directory from before seeds existed is that seed's
run and is reused), out/NAME-sS for every other seed S. A finished run (and an existing
eval.json) is skipped, an interrupted one resumes, so rerunning the command after a kill, or
with more seeds, trains only what is missing. The table shows mean ± std over the seeds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..config import TrainConfig
from ..files import atomic_write
from .report import aggregate, metric_cells, metric_headers, read_eval
from .sidebyside import side_by_side

# variant -> TrainConfig overrides (PAPER.md sections 4 and 6)
VARIANTS: dict[str, dict] = {
    "hsae": {},
    "no-constraint": {"rho": 0.0},
    "no-perturbation": {"swap": 0.0},
    "fixed-tree": {"tree": "fixed"},
    "full-tree": {"tree": "full"},
    "binary-tree": {"tree": "binary"},
    "post-hoc": {"baseline": True},
    # not the paper's: SAELens's Matryoshka BatchTopK SAE, its prefixes as levels (interop/matryoshka.py)
    "matryoshka": {},
}
PAPER_VARIANTS = [v for v in VARIANTS if v != "matryoshka"]
# The paper's ablation reports Hamming only (gemma-2-2b layer 13, 4 levels, L0 ~ 50).
PAPER_HAMMING = {"hsae": 21.3, "no-constraint": 29.7, "no-perturbation": 22.2, "fixed-tree": 24.2,
                 "full-tree": 24.0, "binary-tree": 22.8, "post-hoc": 36.1}


def variant_config(base: TrainConfig, name: str) -> TrainConfig:
    """The base config with one variant's overrides."""
    return dataclasses.replace(base, **VARIANTS[name])


def run_name(name: str, seed: int, base_seed: int) -> str:
    """The run directory's name of one variant and seed (see the module docstring)."""
    return name if seed == base_seed else f"{name}-s{seed}"


def _eval_kw(have: dict | None, eval_kw: dict) -> dict | None:
    """evaluate_run's arguments if the run needs (re-)evaluating, else None.

    Re-evaluated: no eval.json, a requested splice/absorption/wordnet missing, or no chance level
    (an eval.json from before chance levels); what the old one had is computed again."""
    want_chance = eval_kw.get("chance_draws", 1) > 0
    if have is not None and ("chance" in have["hierarchy"] or not want_chance) and \
            not any(eval_kw.get(k) and k not in have for k in ("splice", "absorption", "wordnet", "probe")):
        return None
    return {**eval_kw, **{k: True for k in ("splice", "absorption", "wordnet", "probe") if have and k in have}}


def run_ablation(base: TrainConfig, acts: str | Path, out: str | Path, variants: list[str] | None = None,
                 seeds: list[int] | None = None, progress: bool = True, **eval_kw) -> dict[str, dict]:
    """Train and evaluate every variant for every seed (default [base.seed]), skipping finished work.

    Returns {run name: eval dict}, variant by variant, seeds in the given order; eval_kw go to
    evaluate_run (e.g. splice=True)."""
    from ..interop.matryoshka import train_matryoshka
    from ..train import train
    from . import evaluate_run

    out = Path(out)
    evals = {}
    for name in variants or PAPER_VARIANTS:
        for seed in seeds if seeds is not None else [base.seed]:
            rname = run_name(name, seed, base.seed)
            run, ev_path = out / rname, out / rname / "eval.json"
            kw = _eval_kw(read_eval(ev_path) if ev_path.is_file() else None, eval_kw)
            if kw is not None:
                cfg = dataclasses.replace(variant_config(base, name), seed=seed)
                fit = train_matryoshka if name == "matryoshka" else train
                rc = fit(cfg, acts, run, progress=progress)
                if rc:  # stopped by a signal: the checkpoint is saved, a rerun resumes here
                    raise SystemExit(rc)
                atomic_write(ev_path, (json.dumps(evaluate_run(run, **kw), indent=2) + "\n").encode())
            evals[rname] = read_eval(ev_path)
    return evals


def ablation_table(evals: dict[str, dict]) -> str:
    """Markdown: mean ± std over seeds per variant (chance levels in parentheses) beside the paper's Hamming."""
    # grouped by run name (NAME, NAME-sS), not config: two variants may share a config
    groups = aggregate(evals, by="name")
    head = ["variant", "seeds", *metric_headers(), "paper Hamming"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, g in groups.items():
        lines.append(f"| {name} | {g['n']} | " + " | ".join(metric_cells(g)) + f" | {PAPER_HAMMING.get(name, '')} |")
    extra = side_by_side(groups)
    return "\n".join(lines + ([""] + extra if extra else [])).rstrip()
