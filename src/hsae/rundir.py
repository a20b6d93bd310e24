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
EXPLANATIONS = "explanations.json"  # `hsae explain`: {"LEVEL:ID": one line}
MATRYOSHKA = "matryoshka.json"  # a Matryoshka run (interop/matryoshka.py): SAELens version, k, widths, time
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
    """(model, normalisation scale) from a model.safetensors file; UserError if damaged or mis-shaped."""
    from safetensors import safe_open

    try:
        t = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            scale = float((f.metadata() or {}).get("scale", 1.0))
    except Exception as e:  # safetensors, OSError, a bad scale string: all mean "not a model file"
        raise UserError(f"{path}: unreadable model file ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
    sizes = check_model_tensors(t, path)
    model = HSAE(t["levels.0.W_dec"].shape[1], sizes)
    with torch.no_grad():
        for l, lv in enumerate(model.levels):
            for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(lv, name).copy_(t[f"levels.{l}.{name}"])
            lv.log_threshold.copy_(t[f"levels.{l}.threshold"].log())
            if l:
                model.set_parent(l, t[f"levels.{l}.parent"])
    return model, scale


def check_model_tensors(t: dict[str, torch.Tensor], path) -> list[int]:
    """The level sizes of a model.safetensors dict, or UserError naming the first key that is wrong."""
    L = sum(1 for k in t if k.startswith("levels.") and k.endswith(".W_dec"))
    if L == 0 or "levels.0.W_dec" not in t or t["levels.0.W_dec"].ndim != 2:
        raise UserError(f"{path}: no levels.0.W_dec [n, d]; not an hsae model file")
    d = t["levels.0.W_dec"].shape[1]
    sizes = []
    for l in range(L):
        n = t.get(f"levels.{l}.W_dec", torch.empty(0, 0)).shape[0]
        want = {"W_enc": (d, n), "b_enc": (n,), "W_dec": (n, d), "b_dec": (d,), "threshold": (n,)}
        if l:
            want["parent"] = (n,)
        for name, shape in want.items():
            v = t.get(f"levels.{l}.{name}")
            if v is None or tuple(v.shape) != shape:
                got = "missing" if v is None else list(v.shape)
                raise UserError(f"{path}: levels.{l}.{name} is {got}, expected {list(shape)}")
            if not (v.is_floating_point() if name != "parent" else v.dtype == torch.int64):
                raise UserError(f"{path}: levels.{l}.{name} has dtype {v.dtype}")
        if l and not ((t[f"levels.{l}.parent"] >= -1) & (t[f"levels.{l}.parent"] < sizes[-1])).all():
            raise UserError(f"{path}: levels.{l}.parent names features outside level {l - 1}")
        if not (t[f"levels.{l}.threshold"] > 0).all():
            raise UserError(f"{path}: levels.{l}.threshold must be positive")
        sizes.append(n)
    if min(sizes) < 1 or any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise UserError(f"{path}: level sizes {sizes} are not positive and strictly increasing")
    return sizes


def load_run(run: str | Path) -> tuple[TrainConfig, HSAE, float]:
    """(config, trained model, scale) of a finished run directory."""
    run = Path(run)
    if not (run / MODEL).is_file():
        raise UserError(f"{run}: no {MODEL}; is the run finished? (rerun `hsae train` with --out {run} to resume)")
    cfg = TrainConfig.load(run / CONFIG, complete=True)
    model, scale = load_model(run / MODEL)
    if model.sizes != cfg.levels:
        raise UserError(f"{run / MODEL} has levels {model.sizes} but {run / CONFIG} says {cfg.levels}")
    return cfg, model, scale


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


def read_explanations(p: Path) -> dict[str, str]:
    """An explanations file (RUN/explanations.json: {"LEVEL:ID": one line}) if present, else {}."""
    if not p.is_file():
        return {}
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: unreadable explanations ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"{p}: expected a JSON object mapping 'LEVEL:ID' to an explanation")
    for k in d:
        lv, _, fid = str(k).partition(":")
        if not (lv.isdigit() and fid.isdigit()):
            raise UserError(f"{p}: key {k!r} is not 'LEVEL:ID' (two integers, e.g. '1:42')")
        if not isinstance(d[k], str):
            raise UserError(f"{p}: the explanation of {k} is not a string")
    return d
