"""Where a run's activations came from: model name, layer and hook name, read from its store."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import TrainConfig

# Hub ids of the embedded models, so exported metadata names a model other tools can find.
HUB_IDS = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma3-270m": "google/gemma-3-270m"}


def store_source(cfg: TrainConfig) -> dict:
    """The `source` block of the run's store manifest ({} for a single-file or missing store)."""
    m = Path(cfg.acts) / "manifest.json" if cfg.acts else None
    if m is None or not m.is_file():
        return {}
    try:
        src = json.loads(m.read_text()).get("source")
    except (ValueError, AttributeError):  # damaged: the store's own reader reports it where it matters
        return {}
    return dict(src) if isinstance(src, dict) else {}


def hook_name(layer: int | None) -> str:
    """TransformerLens name of a block's output (what `hsae collect` stores), as SAELens expects."""
    return f"blocks.{layer}.hook_resid_post" if layer is not None else "unknown"


def model_name(src: dict) -> str:
    """The model name other tools know: a hub id for embedded models, else the stored name."""
    name = str(src.get("model", "unknown"))
    return HUB_IDS.get(name, name)
