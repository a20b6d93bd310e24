"""Which rows of a store are ordinary: the rows training and every metric use.

Two kinds of rows stay in the store (contexts stay whole, so the splice and the explorer can
rebuild them) but are kept out of training and of the metrics:
- special tokens: rows whose token is one of the tokenizer's special ids (recorded by
  `hsae collect` as source.special_ids; e.g. the end-of-document token between packed
  documents), wherever they fall in a context;
- massive activations: rows whose norm exceeds OUTLIER_FACTOR times the median norm of the
  first SCALE_ROWS non-special rows. In SmolLM2's layer 15 about 0.06% of the rows (mostly
  special tokens and the first tokens of a document) have norms up to 150x the median and
  carry ~90% of the total variance: left in, they dominate the MSE the SAEs are trained on
  and the variance explained they are judged by.
A store without per-row tokens (synthetic, a plain matrix) has only the norm rule. A
collected store keeps the result (`excluded.safetensors`: the excluded row indices, with its
sha256 and the counts in the manifest's `excluded`), so readers do not pass over every row.
"""

from __future__ import annotations

import json

import numpy as np

from ..files import atomic_write, file_sha256, save_tensors
from .store import MANIFEST, OUTLIER_FACTOR, SCALE_ROWS, Store

FILE = "excluded.safetensors"  # int64 "rows": the excluded rows of a collected store, ascending
CHUNK = 65536


def norms(store, chunk: int = CHUNK) -> np.ndarray:
    """Raw (unscaled) L2 norm of every row, float64 [rows], read in chunks."""
    out = np.empty(store.rows)
    for a in range(0, store.rows, chunk):
        b = min(store.rows, a + chunk)
        out[a:b] = np.linalg.norm(store.read(a, b).astype(np.float64), axis=1)
    return out


def special_rows(store) -> np.ndarray:
    """bool [rows]: rows whose token is a special token (none if the store records no ids)."""
    ids = (store.meta.get("source") or {}).get("special_ids")
    if not ids:
        return np.zeros(store.rows, dtype=bool)
    return np.isin(store.read_extra("tokens", 0, store.rows), np.asarray(ids, dtype=np.int64))


def ordinary_mask(norm: np.ndarray, special: np.ndarray, threshold: float) -> np.ndarray:
    """bool: rows that are neither special tokens nor massive (norm above the threshold); a NaN norm
    is not massive: stores hold no non-finite rows, and live rows drop them first (data/live.py)."""
    return ~special & ~(norm > threshold)


def outlier_threshold(n: np.ndarray, special: np.ndarray) -> float:
    """OUTLIER_FACTOR x the median norm of the first SCALE_ROWS non-special rows."""
    first = n[:SCALE_ROWS][~special[:SCALE_ROWS]]
    return OUTLIER_FACTOR * float(np.median(first)) if first.size else float("inf")


def classify(store) -> tuple[np.ndarray, dict]:
    """(ordinary bool [rows], summary with the counts of each excluded kind and the threshold)."""
    saved = (store.meta.get("excluded") or {}) if store.path.is_dir() else {}
    if saved.get("file"):
        return _load(store, saved), saved
    special = special_rows(store)
    n = norms(store)
    thr = outlier_threshold(n, special)
    keep = ordinary_mask(n, special, thr)
    outlier = ~keep & ~special
    summary = {"special": int(special.sum()), "outlier": int(outlier.sum()), "ordinary": int(keep.sum()),
               "outlier_factor": OUTLIER_FACTOR, "outlier_norm": thr}
    return keep, summary


def _load(store, saved: dict) -> np.ndarray:
    """The ordinary mask from a store's excluded.safetensors, checked against its sha256."""
    from safetensors.numpy import load_file

    from ..config import UserError
    from .store import REPAIR

    f = store.path / saved["file"]
    if not f.is_file() or file_sha256(f) != saved["sha256"]:
        raise UserError(f"{f} is missing or does not match its checksum; {REPAIR}")
    rows = load_file(str(f))["rows"]
    if rows.size and (rows.min() < 0 or rows.max() >= store.rows):
        raise UserError(f"{f} names rows outside the store; {REPAIR}")
    keep = np.ones(store.rows, dtype=bool)
    keep[rows] = False
    return keep


def record_exclusions(path) -> dict:
    """Classify a finished store's rows once, write excluded.safetensors and the `excluded`
    summary into its manifest; returns the manifest."""
    store = Store(path)
    keep, summary = classify(store)
    save_tensors({"rows": np.flatnonzero(~keep).astype(np.int64)}, store.path / FILE)
    summary = {**summary, "file": FILE, "sha256": file_sha256(store.path / FILE)}
    manifest = {**store.meta, "excluded": summary}
    atomic_write(store.path / MANIFEST, json.dumps(manifest, indent=2).encode())
    return manifest
