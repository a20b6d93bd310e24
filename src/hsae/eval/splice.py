"""Splice evaluation: the language model's loss with one layer's residual stream replaced by
each level's reconstruction (SAELens' "CE loss recovered").

For every held-out context the model runs three ways: clean, with the layer's output at
positions >= 1 replaced by a level's reconstruction (normalisation undone: x_hat / scale), and
with it replaced by zeros. Position 0 (BOS, never trained on) keeps its clean activation, and
so, in every run, do the rows training never sees (data/ordinary.py: special tokens and
massive activations): the loss recovered is that of the ordinary rows.
Cross-entropy is averaged over the next-token predictions made at positions 1..T-2 (the
positions whose residual was replaced; position 0's prediction is identical in every run):
  ce_loss_recovered = (ce_zero_ablation - ce_spliced) / (ce_zero_ablation - ce_clean)
  kl = mean over those positions of KL(clean next-token distribution || spliced one).
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import UserError
from ..data.models import decoder_layers, load_model, residual
from ..data.store import Store
from ..model import HSAE


@functools.lru_cache(maxsize=1)
def cached_lm(spec: str):
    """load_model(spec), kept for the next call (the ablation evaluates seven runs on one model)."""
    return load_model(spec)


@functools.lru_cache(maxsize=2)
def cached_pass(fn: Callable, spec: str, layer: int, items: tuple) -> torch.Tensor:
    """fn(lm, tok, layer, list(items)) on model `spec`, kept: every run evaluated on one store reads
    the same inputs (the WordNet nouns, the absorption words), and that model pass is most of such
    an evaluation's time. Raw scale; callers must not modify the tensor."""
    lm, tok = cached_lm(spec)
    return fn(lm, tok, layer, list(items))


def held_out_contexts(store: Store, rows: range, bos: int, ctx: int, limit: int) -> tuple[torch.Tensor, list[int]]:
    """Up to `limit` whole contexts [N, ctx] (BOS + stored tokens) inside `rows`, and their first rows.

    A collected shard holds whole contexts of ctx-1 rows (the collector drops a context with a
    non-finite row whole); a shard whose row count says otherwise (an older store) is skipped.
    """
    if limit < 1:
        raise UserError("--splice-contexts must be at least 1")
    per, out, starts = ctx - 1, [], []
    for i, n in enumerate(store.shard_rows):
        o = int(store.offsets[i])
        if n % per or o + n <= rows.start:
            continue
        first = max(0, -(-(rows.start - o) // per))  # first context of this shard inside rows
        toks = store.read_extra("tokens", o, o + n)
        for c in range(first, n // per):
            out.append(np.concatenate([[bos], toks[c * per:(c + 1) * per]]))
            starts.append(o + c * per)
            if len(out) == limit:
                return torch.from_numpy(np.stack(out)).long(), starts
    if not out:
        raise UserError(f"{store.path}: no whole held-out contexts to splice")
    return torch.from_numpy(np.stack(out)).long(), starts


def _replace_output(block, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Forward hook on a block: its output at positions >= 1 becomes fn(output[:, 1:])."""

    def hook(_mod, _inp, out):
        h = out[0] if isinstance(out, tuple) else out
        h = torch.cat([h[:, :1], fn(h[:, 1:]).to(h.dtype)], 1)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    return block.register_forward_hook(hook)


@torch.inference_mode()
def splice_eval(lm, layer: int, model: HSAE, scale: float, contexts: torch.Tensor, batch_size: int = 8,
                progress: bool = False, special_ids: list[int] = (), outlier_norm: float = float("inf")) -> dict:
    """{"ce_clean", "ce_zero_ablation", "levels": [{"ce_spliced", "ce_loss_recovered", "kl"}]} (see module doc).

    Rows whose token is in special_ids or whose raw norm exceeds outlier_norm keep their clean value."""
    block = decoder_layers(lm)[layer]
    L = len(model.levels)
    special = torch.tensor(sorted(special_ids), dtype=torch.long)
    batch_special: dict = {}  # the current batch's special-token mask [B, T-1]

    def clean_where_excluded(h, new):
        keep = batch_special["mask"] | (h.float().norm(dim=-1) > outlier_norm)
        return torch.where(keep[..., None], h.float(), new)

    def recon(h, lv):
        x = h.float().reshape(-1, h.shape[-1]) * scale
        return clean_where_excluded(h, (lv.decode(lv.encode(x)) / scale).reshape(h.shape))

    fns = [lambda h: clean_where_excluded(h, torch.zeros_like(h, dtype=torch.float32))]
    fns += [lambda h, lv=lv: recon(h, lv) for lv in model.levels]
    ce = torch.zeros(L + 2, dtype=torch.float64)  # clean, zero, level 0..L-1
    kl = torch.zeros(L, dtype=torch.float64)
    n = 0
    for b in tqdm(range(0, len(contexts), batch_size), disable=not progress, desc="splice", unit="batch"):
        ids = contexts[b:b + batch_size]
        batch_special["mask"] = torch.isin(ids[:, 1:], special)
        target = ids[:, 2:].reshape(-1)

        def logp(fn=None):
            h = _replace_output(block, fn) if fn else None
            try:
                logits = lm(input_ids=ids, use_cache=False).logits[:, 1:-1].float()
            finally:
                if h:
                    h.remove()
            return F.log_softmax(logits.reshape(-1, logits.shape[-1]), -1)

        clean = logp()
        ce[0] += F.nll_loss(clean, target, reduction="sum").double()
        for j, fn in enumerate(fns):
            lp = logp(fn)
            ce[j + 1] += F.nll_loss(lp, target, reduction="sum").double()
            if j:
                kl[j - 1] += F.kl_div(lp, clean, log_target=True, reduction="sum").double()
        n += target.numel()
    ce, kl = ce / n, kl / n
    clean_ce, zero_ce = float(ce[0]), float(ce[1])
    levels = [{"ce_clean": clean_ce, "ce_zero_ablation": zero_ce, "ce_spliced": float(ce[l + 2]),
               "ce_loss_recovered": (zero_ce - float(ce[l + 2])) / (zero_ce - clean_ce), "kl": float(kl[l])}
              for l in range(L)]
    return {"ce_clean": clean_ce, "ce_zero_ablation": zero_ce, "n_predictions": n, "levels": levels}


def splice_store(store: Store, rows: range, model: HSAE, n_contexts: int = 16, progress: bool = False) -> dict:
    """splice_eval on the held-out contexts of a collected store, with the model that made it.

    Checks first that the model reproduces the stored activations, so a store from another
    model, layer or tokenizer is an error rather than a wrong number.
    """
    src = store.meta.get("source", {})
    if src.get("kind") != "model":
        raise UserError(f"{store.path}: --splice needs a store collected from a model (this one is {src.get('kind')!r})")
    lm, tok = cached_lm(src["model"])
    if tok.bos_token_id is None:
        raise UserError(f"{src['model']}: --splice needs a tokenizer with a BOS token to rebuild the contexts")
    contexts, starts = held_out_contexts(store, rows, tok.bos_token_id, int(src["ctx"]), n_contexts)
    got = residual(lm, int(src["layer"]), contexts[:1])[0, 1:].float()
    want = torch.from_numpy(store.read(starts[0], starts[0] + contexts.shape[1] - 1))
    err = float((got - want).norm() / want.norm())
    if err > 1e-2:
        raise UserError(f"{store.path}: model {src['model']} layer {src['layer']} does not reproduce the stored "
                        f"activations (relative error {err:.3g}); was the store collected with another model?")
    return splice_eval(lm, int(src["layer"]), model, store.scale, contexts, progress=progress,
                       special_ids=src.get("special_ids") or [], outlier_norm=store.excluded["outlier_norm"])
