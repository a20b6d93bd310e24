"""A run directory: config.json, model.safetensors, train_log.jsonl, checkpoint.safetensors.

model.safetensors keys: levels.{l}.W_enc [d, n], levels.{l}.b_enc [n], levels.{l}.W_dec [n, d],
levels.{l}.b_dec [d], levels.{l}.threshold [n], levels.{l}.parent [n] (int64, l >= 1).
Its metadata records the data's normalisation scale: the model works on scale * x.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .config import TrainConfig, UserError
from .files import save_tensors
from .model import HSAE

CONFIG, MODEL, LOG, CHECKPOINT = "config.json", "model.safetensors", "train_log.jsonl", "checkpoint.safetensors"
OLD_CHECKPOINT = "checkpoint.pt"  # hsae <= format 2 pickled its checkpoints; refused, never loaded


def model_tensors(model: HSAE) -> dict[str, torch.Tensor]:
    """The model as the flat dict stored in model.safetensors."""
    out = {}
    for l, lv in enumerate(model.levels):
        out[f"levels.{l}.W_enc"] = lv.W_enc.detach()
        out[f"levels.{l}.b_enc"] = lv.b_enc.detach()
        out[f"levels.{l}.W_dec"] = lv.W_dec.detach()
        out[f"levels.{l}.b_dec"] = lv.b_dec.detach()
        out[f"levels.{l}.threshold"] = lv.threshold.detach()
        if l:
            out[f"levels.{l}.parent"] = model.parent(l)
    return {k: v.contiguous().cpu() for k, v in out.items()}


def save_model(model: HSAE, path: str | Path, scale: float) -> None:
    """Write model.safetensors atomically."""
    save_tensors(model_tensors(model), path, metadata={"scale": repr(scale), "d": str(model.d)})


def load_model(path: str | Path) -> tuple[HSAE, float]:
    """(model, normalisation scale) from a model.safetensors file."""
    from safetensors import safe_open

    t = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        scale = float((f.metadata() or {}).get("scale", 1.0))
    L = sum(1 for k in t if k.endswith(".W_dec"))
    sizes = [t[f"levels.{l}.W_dec"].shape[0] for l in range(L)]
    model = HSAE(t["levels.0.W_dec"].shape[1], sizes)
    with torch.no_grad():
        for l, lv in enumerate(model.levels):
            for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(lv, name).copy_(t[f"levels.{l}.{name}"])
            lv.log_threshold.copy_(t[f"levels.{l}.threshold"].log())
            if l:
                model.set_parent(l, t[f"levels.{l}.parent"])
    return model, scale


def load_run(run: str | Path) -> tuple[TrainConfig, HSAE, float]:
    """(config, trained model, scale) of a finished run directory."""
    run = Path(run)
    if not (run / MODEL).is_file():
        raise UserError(f"{run}: no {MODEL}; is the run finished? (rerun `hsae train` with --out {run} to resume)")
    return (TrainConfig.load(run / CONFIG), *load_model(run / MODEL))


def read_log(run: str | Path) -> list[dict]:
    """The training log's records (a last line cut short, by a full disk or a kill, is left out)."""
    p = Path(run) / LOG
    if not p.is_file():
        return []
    lines = [ln for ln in p.read_text(errors="replace").splitlines() if ln.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError as e:
            if i == len(lines) - 1:
                break
            raise UserError(f"{p}: line {i + 1} is not a JSON record ({e}); the log is damaged") from None
        out.append(rec)
    return out
