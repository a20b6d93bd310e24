"""The paper's ablation (PAPER.md section 6): one store, one seed, seven variants, one table.

Each variant is a normal run directory under the ablation directory; a finished run (and an
existing eval.json) is skipped, an interrupted one resumes, so rerunning the command after a
kill continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..config import TrainConfig
from ..data.store import atomic_write
from .report import _fmt, row

# variant -> TrainConfig overrides (PAPER.md sections 4 and 6)
VARIANTS: dict[str, dict] = {
    "hsae": {},
    "no-constraint": {"rho": 0.0},
    "no-perturbation": {"swap": 0.0},
    "fixed-tree": {"tree": "fixed"},
    "full-tree": {"tree": "full"},
    "binary-tree": {"tree": "binary"},
    "post-hoc": {"baseline": True},
}
# The paper's ablation reports Hamming only (gemma-2-2b layer 13, 4 levels, L0 ~ 50).
PAPER_HAMMING = {"hsae": 21.3, "no-constraint": 29.7, "no-perturbation": 22.2, "fixed-tree": 24.2,
                 "full-tree": 24.0, "binary-tree": 22.8, "post-hoc": 36.1}


def variant_config(base: TrainConfig, name: str) -> TrainConfig:
    """The base config with one variant's overrides."""
    return dataclasses.replace(base, **VARIANTS[name])


def run_ablation(base: TrainConfig, acts: str | Path, out: str | Path, variants: list[str] | None = None,
                 progress: bool = True, **eval_kw) -> dict[str, dict]:
    """Train and evaluate every variant under out/NAME (skipping finished work); {name: eval dict}.

    eval_kw go to evaluate_run (e.g. splice=True)."""
    from ..train import train
    from . import evaluate_run

    out = Path(out)
    evals = {}
    for name in variants or list(VARIANTS):
        run = out / name
        ev_path = run / "eval.json"
        have = json.loads(ev_path.read_text()) if ev_path.is_file() else None
        if have is None or any(eval_kw.get(k) and k not in have for k in ("splice", "absorption")):
            rc = train(variant_config(base, name), acts, run, progress=progress)
            if rc:  # stopped by a signal: the checkpoint is saved, a rerun resumes here
                raise SystemExit(rc)
            ev = evaluate_run(run, **eval_kw)
            atomic_write(ev_path, (json.dumps(ev, indent=2) + "\n").encode())
        evals[name] = json.loads(ev_path.read_text())
    return evals


def ablation_table(evals: dict[str, dict]) -> str:
    """Markdown: our metrics per variant beside the paper's published Hamming."""
    head = "| variant | L0 | var.expl. | P(p\\|c) | P(c\\|p) | Hamming | paper Hamming |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for name, ev in evals.items():
        r = row(ev)
        cols = [r["l0"], r["var_explained"], r["p_parent_given_child"], r["p_child_given_parent"], r["hamming"]]
        lines.append(f"| {name} | " + " | ".join(_fmt(float(v)) for v in cols) + f" | {PAPER_HAMMING.get(name, '')} |")
    return "\n".join(lines)
