"""Evaluation: per-level and hierarchy metrics, tree recovery against ground truth."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from ..config import UserError
from ..data.store import Store
from ..data.synth import load_truth
from ..rundir import load_run
from .metrics import evaluate
from .recovery import tree_recovery

__all__ = ["evaluate", "tree_recovery", "evaluate_run"]


def evaluate_run(run: str | Path, acts: str | Path | None = None, batch_size: int = 4096, splice: bool = False,
                 absorption: bool = False, splice_contexts: int = 16, progress: bool = False, wordnet: bool = False, probe: bool = False,
                 chance_draws: int = 5, chance_seed: int = 0) -> dict:
    """Metrics of a finished run on the held-out rows of its store (plus tree recovery if known).

    chance_draws random forests (seed chance_seed) give the hierarchy metrics' chance level
    (eval/chance.py; 0: none); "config" holds the run's TrainConfig, to group runs by seed.
    splice: add the model's CE loss recovered and KL per level (eval/splice.py);
    absorption: add SAEBench first-letter absorption per level (eval/absorption.py);
    wordnet: add the WordNet taxonomy check of the edges, with its chance level (eval/wordnet.py);
    probe: add the probe-based edge rate (Tree SAE), with its chance level (eval/probe.py)."""
    cfg, model, scale = load_run(run)
    acts = acts or cfg.acts
    store = Store(acts)
    if store.d != model.d:
        raise UserError(f"model has d={model.d} but {acts} has d={store.d}")
    # the model works on (its training scale) * raw rows, whatever this store's own estimate is
    store.scale = scale
    _, rows = store.split(cfg.holdout)
    held = store.ordinary[rows.start:rows.stop]
    if not held.any():
        raise UserError(f"{acts}: no ordinary held-out rows (all are special tokens or massive activations)")
    # a callable, so that evaluate can make its two passes (firing counts, then metrics)
    ev = evaluate(model, lambda: store.ordinary_batches(rows, batch_size), chance_draws, chance_seed)
    out = {"run": str(run), "acts": str(acts), "baseline": cfg.baseline, "config": dataclasses.asdict(cfg),
           "rows_excluded": {**store.excluded, "heldout_excluded": int((~held).sum())}, **ev}
    train = train_time(run, cfg.steps)
    if train is not None:
        out["train"] = train
    if store.truth_path is not None and store.truth_path.is_file():
        out["tree_recovery"] = tree_recovery(model, load_truth(store.truth_path))
    if splice:
        from .splice import splice_store

        sp = splice_store(store, rows, model, splice_contexts, progress)
        for lv, s in zip(out["levels"], sp.pop("levels")):
            lv.update(s)
        out["splice"] = sp
    if absorption:
        from .absorption import absorption_store

        ab = absorption_store(store, model)
        for lv, a in zip(out["levels"], ab.pop("levels")):
            lv.update({k: a[k] for k in ("absorption_rate", "mean_absorption_fraction")})
            lv["absorption_letters"] = a["letters"]
        out["absorption"] = ab
    if wordnet:
        from .wordnet import wordnet_store

        out["wordnet"] = wordnet_store(store, model, max(chance_draws, 1), chance_seed)
    if probe:
        from .probe import probe_store

        out["probe"] = probe_store(store, rows, model, max(chance_draws, 1), chance_seed)
    return out


def train_time(run: str | Path, steps: int) -> dict | None:
    """{"seconds_per_step", "steps"} of a run's training, None where it left no record.

    An hsae run: the mean wall time of its logged steps (one in log_every, plus every forest
    update); a Matryoshka run: SAELens's whole fit over its steps. Runs trained at different
    times on a shared machine: a rough figure, not a benchmark (bench/step.py is that)."""
    import json

    from ..rundir import MATRYOSHKA, read_log

    run = Path(run)
    if (run / MATRYOSHKA).is_file():
        info = json.loads((run / MATRYOSHKA).read_text())
        return {"seconds_per_step": info["train_seconds"] / steps, "steps": steps}
    secs = [r["seconds"] for r in read_log(run) if isinstance(r.get("seconds"), (int, float))]
    if not secs:
        return None
    return {"seconds_per_step": sum(secs) / len(secs), "steps": steps}
