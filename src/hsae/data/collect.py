"""Collect one layer's residual-stream activations from a local Hugging Face causal LM.

The forward pass stops at the hooked block (the layers above it never run). Position 0 of
every context (BOS, an attention sink with a norm ~100x the others) is dropped. Each shard
holds the rows of a fixed number of contexts, so a killed collection resumes after its last
complete shard and ends identical to an uninterrupted one.

The writer (hashing, fsync) runs in a background thread, overlapped with the next shard's
forward passes. On a GPU the batch size is tuned to its memory; the rows can then differ in
the last bits from a CPU collection (other kernels), and a resumed collection may pick another
batch size, so there the shards match an uninterrupted run only up to float rounding.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import UserError
from .corpus import pack, read_documents
from .ordinary import record_exclusions
from ..files import atomic_write, file_sha256, output_lock
from .models import decoder_layers, load_model, residual
from .store import MANIFEST, StoreWriter


CPU_BATCH = 16  # contexts per forward pass on the CPU (bigger batches are no faster there)
GPU_MEMORY_FRACTION = 0.7  # of the GPU's memory the tuned batch may use at its peak


def collect(model: str, layer: int, corpus: str, tokens: int, out: str | Path, ctx: int = 128,
            batch_size: int = 0, seed: int = 0, dtype: str = "float16", shard_rows: int = 65536,
            progress: bool = True, repair: bool = False, device: str = "auto") -> dict:
    """Write a store of ~`tokens` activation rows; resumes an unfinished one in `out`.

    batch_size 0: 16 contexts on the CPU, tuned to the GPU's memory on CUDA.
    device: auto (cuda when available), cpu or cuda; GPU and CPU collections agree to
    rounding, not bit for bit.
    repair=True first keeps only the shards before the first one that fails its checksum, so
    the same command re-collects the rest (collection is deterministic).
    """
    from ..device import resolve_device

    out = Path(out)
    if repair:
        _truncate_to_good_shards(out)
    if (out / MANIFEST).is_file():
        raise UserError(f"{out} already holds a finished store")
    if ctx < 2 or tokens < 1 or batch_size < 0:
        raise UserError("--ctx must be >= 2, --tokens >= 1 and --batch-size >= 0")
    dev = resolve_device(device)
    lm, tok = load_model(model, dev)
    if not batch_size:
        batch_size = CPU_BATCH if dev.type == "cpu" else auto_batch_size(lm, layer, ctx, max(1, shard_rows // (ctx - 1)))
    with output_lock(out, "collect"):
        return collect_with(lm, tok, str(model), layer, corpus, tokens, out, ctx, batch_size, seed, dtype, shard_rows,
                            progress)


def auto_batch_size(lm, layer: int, ctx: int, limit: int) -> int:
    """Largest power-of-two batch (<= limit contexts) whose forward pass peaks under
    GPU_MEMORY_FRACTION of the GPU's memory, found by trying doubling sizes."""
    dev = lm.device
    total = torch.cuda.get_device_properties(dev).total_memory
    best, b = 1, 1
    while b <= limit:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        try:
            residual(lm, layer, torch.ones(b, ctx, dtype=torch.long))
        except torch.cuda.OutOfMemoryError:
            break
        if torch.cuda.max_memory_allocated(dev) > GPU_MEMORY_FRACTION * total:
            break
        best, b = b, 2 * b
    torch.cuda.empty_cache()
    return best


def _truncate_to_good_shards(out: Path) -> None:
    """Keep the shards before the first missing or corrupt one; the store becomes unfinished."""
    src = out / MANIFEST if (out / MANIFEST).is_file() else out / StoreWriter.PROGRESS
    if not src.is_file():
        return
    saved = json.loads(src.read_text())
    good = []
    for s in saved["shards"]:
        f = out / s["file"]
        if not f.is_file() or file_sha256(f) != s["sha256"]:
            break
        good.append(s)
    for s in saved["shards"][len(good):]:
        (out / s["file"]).unlink(missing_ok=True)
    meta = {k: saved[k] for k in ("source",) if k in saved} if src.name == MANIFEST else saved["meta"]
    progress = {"d": saved["d"], "dtype": saved["dtype"], "meta": meta, "shards": good}
    atomic_write(out / StoreWriter.PROGRESS, json.dumps(progress).encode())
    (out / MANIFEST).unlink(missing_ok=True)


def contexts_of(tok, corpus: str, ctx: int, seed: int):
    """The corpus's packed contexts, in collection order (see corpus.pack)."""
    eos = tok.eos_token_id
    docs = read_documents(corpus, seed)
    token_docs = (tok(d, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else []) for d in docs)
    return pack(token_docs, ctx, tok.bos_token_id)


def collect_with(lm, tok, model_name: str, layer: int, corpus: str, tokens: int, out: Path, ctx: int = 128,
                 batch_size: int = 16, seed: int = 0, dtype: str = "float16", shard_rows: int = 65536,
                 progress: bool = True, heldout: bool = False) -> dict:
    """collect() with the model already loaded (heldout=True: a streaming run's held-out store,
    which `hsae train --acts` refuses and every reader treats as held out whole)."""
    n_layers = len(decoder_layers(lm))
    if not 0 <= layer < n_layers:
        raise UserError(f"--layer {layer} is out of range: the model has {n_layers} blocks (0..{n_layers - 1})")
    contexts = contexts_of(tok, corpus, ctx, seed)
    per_shard = max(1, shard_rows // (ctx - 1))
    n_contexts = math.ceil(tokens / (ctx - 1))
    d = lm.config.hidden_size
    meta = {"source": {"kind": "model", "model": model_name, "layer": layer, "corpus": str(corpus),
                       "ctx": ctx, "seed": seed, "contexts_per_shard": per_shard,
                       "tokenizer": type(tok).__name__,
                       # rows of these tokens are kept out of training and metrics (data/ordinary.py)
                       "special_ids": sorted(set(int(i) for i in tok.all_special_ids))}}
    if heldout:
        meta["heldout"] = True
    w = StoreWriter(out, d, dtype, meta, resume=True)
    skip = len(w.shards) * per_shard
    done = skip  # contexts in the store so far
    bar = tqdm(total=n_contexts * (ctx - 1), initial=skip * (ctx - 1), unit="tok", disable=not progress, desc="collect")
    buf: list[tuple] = []
    # One shard is written in the background while the next is computed; waiting on the
    # previous write before starting another keeps shards in order and memory bounded.
    writer, pending = ThreadPoolExecutor(1, thread_name_prefix="hsae-writer"), None

    def flush(pending: Future | None, buf: list) -> Future:
        rows = shard_rows_of(lm, layer, buf, batch_size, w.d, bar)
        if pending is not None:
            pending.result()  # raises the writer's error, if any
        return writer.submit(_write, w, ctx - 1, *rows)

    try:
        for i, c in enumerate(contexts):
            if i >= n_contexts:
                break
            if i < skip:
                continue
            buf.append(c)
            if len(buf) == per_shard or i == n_contexts - 1:
                pending = flush(pending, buf)
                done += len(buf)
                buf = []
        if buf:  # the corpus ran out before the requested tokens
            pending = flush(pending, buf)
            done += len(buf)
        if pending is not None:
            pending.result()
    finally:
        writer.shutdown(wait=True)
    bar.close()
    if not w.shards:
        raise UserError(f"{corpus}: too little text for one context of {ctx} tokens")
    # rows of every context collected (this run and resumed ones) minus rows stored
    w.finish(dropped_nonfinite=done * (ctx - 1) - sum(sh["rows"] for sh in w.shards))
    return record_exclusions(out)


def shard_rows_of(lm, layer: int, contexts: list, batch_size: int, d: int, bar=None) -> tuple:
    """Run the contexts: (acts, tokens, doc, pos) of their rows at positions >= 1 (bar: a tqdm or None)."""
    acts, toks, docs, pos = [], [], [], []
    for b in range(0, len(contexts), batch_size):
        chunk = contexts[b:b + batch_size]
        ids = torch.from_numpy(np.stack([c[0] for c in chunk]))
        t0 = time.perf_counter()
        h = residual(lm, layer, ids)[:, 1:].float().reshape(-1, d).cpu().numpy()
        acts.append(h)
        toks.append(ids[:, 1:].reshape(-1).numpy())
        docs.append(np.stack([c[1] for c in chunk])[:, 1:].reshape(-1))
        pos.append(np.stack([c[2] for c in chunk])[:, 1:].reshape(-1))
        if bar is not None:
            bar.update(h.shape[0])
            bar.set_postfix_str(f"{h.shape[0] / (time.perf_counter() - t0):.0f} tok/s")
    return np.concatenate(acts), np.concatenate(toks), np.concatenate(docs), np.concatenate(pos)


def _write(w: StoreWriter, per: int, x: np.ndarray, toks: np.ndarray, docs: np.ndarray, pos: np.ndarray) -> None:
    """Write one shard (the writer thread's job). A context with any non-finite row is dropped
    whole, so every shard holds whole contexts of `per` rows (readers rebuild contexts from that)."""
    with np.errstate(over="ignore"):  # overflow of the store's dtype is what this looks for
        ok = np.isfinite(x.astype(w.dtype)).all(1)
    ok = np.repeat(ok.reshape(-1, per).all(1), per)
    w.write(x[ok], tokens=toks[ok].astype(np.int64), doc=docs[ok].astype(np.int64), pos=pos[ok].astype(np.int64))
