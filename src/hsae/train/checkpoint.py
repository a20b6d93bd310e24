"""Checkpoints as one safetensors file: every tensor in it, everything else as JSON in its header.

A nested state (dicts, lists, numbers, strings, tensors: the trainer's, the optimiser's, the
controller's and the forest statistics) is split into named tensors and a JSON skeleton that
refers to them by name. Loading parses the safetensors header and JSON only: nothing in a
checkpoint can run code, whoever wrote it. One file, so one atomic rename publishes it whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import UserError
from ..files import save_tensors

KEY = "hsae_checkpoint"


def _split(obj, tensors: dict, name: str):
    """The JSON skeleton of obj; its tensors go into `tensors` under their path names."""
    if isinstance(obj, torch.Tensor):
        tensors[name] = obj.detach().contiguous().cpu()
        return {"$tensor": name}
    if isinstance(obj, dict):  # keys may be ints (an optimiser's state): keep them as pairs
        return {"$dict": [[k, _split(v, tensors, f"{name}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_split(v, tensors, f"{name}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint {type(obj).__name__} at {name}")


def _join(skel, tensors: dict):
    """Inverse of _split."""
    if isinstance(skel, list):
        return [_join(v, tensors) for v in skel]
    if isinstance(skel, dict):
        if "$tensor" in skel:
            return tensors[skel["$tensor"]]
        return {k: _join(v, tensors) for k, v in skel["$dict"]}
    return skel


def save_checkpoint(state: dict, path: Path) -> None:
    """Write a nested state atomically as one safetensors file."""
    tensors: dict[str, torch.Tensor] = {}
    skel = _split(state, tensors, "s")
    save_tensors(tensors, path, metadata={KEY: json.dumps(skel)})


def load_checkpoint(path: Path) -> dict:
    """The state saved by save_checkpoint; a damaged or foreign file is a one-line UserError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            skel = json.loads((f.metadata() or {})[KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return _join(skel, tensors)
    except Exception as e:  # safetensors, json and a wrong skeleton raise different types; all mean "unusable"
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise UserError(f"{path}: unreadable checkpoint ({why}); delete it (or use another --out) "
                        "to restart the run") from None
