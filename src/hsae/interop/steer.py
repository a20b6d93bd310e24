"""Steering: add a feature's decoder direction to one block's output while the model generates.

The direction is the feature's unit decoder row divided by the store scale, so `strength` is in
the HSAE's own activation units (a feature firing at a adds a * W_dec / scale to the raw
residual stream). Each variant (no steering, the feature, its parent, each child) is
generated from the same seed, so the only difference between columns is the added vector.
"""

from __future__ import annotations

import shutil
import textwrap
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..config import UserError
from ..data.models import decoder_layers
from ..model import HSAE


@dataclass
class Variant:
    """One generation: a label, the feature steered with (None: unsteered), its continuation."""

    label: str
    feature: tuple[int, int] | None
    text: str = ""


def parse_feature(spec: str, model: HSAE) -> tuple[int, int]:
    """'LEVEL:ID' -> (level, id), checked against the model's sizes."""
    try:
        l, i = (int(v) for v in spec.split(":"))
    except ValueError:
        raise UserError(f"--feature must be LEVEL:ID (e.g. 1:42), got {spec!r}") from None
    if not 0 <= l < len(model.levels) or not 0 <= i < model.sizes[l]:
        raise UserError(f"feature {spec} does not exist (levels {len(model.levels)}, sizes {model.sizes})")
    return l, i


def family(model: HSAE, l: int, i: int) -> list[Variant]:
    """Variants to compare: unsteered, the feature, its parent (if any), each child (if any)."""
    out = [Variant("no steering", None), Variant(f"feature {l}:{i}", (l, i))]
    if l > 0 and int(model.parent(l)[i]) >= 0:
        out.append(Variant(f"parent {l - 1}:{int(model.parent(l)[i])}", (l - 1, int(model.parent(l)[i]))))
    if l + 1 < len(model.levels):
        for c in (model.parent(l + 1) == i).nonzero().flatten().tolist():
            out.append(Variant(f"child {l + 1}:{c}", (l + 1, c)))
    return out


def direction(model: HSAE, scale: float, l: int, i: int) -> torch.Tensor:
    """Raw-activation-space vector of one unit of feature (l, i): its decoder row / scale."""
    return model.levels[l].W_dec.detach()[i].float() / scale


@contextmanager
def added_to_block(lm, layer: int, vec: torch.Tensor | None):
    """Within the block, `vec` is added to block `layer`'s output at every position."""
    if vec is None:
        yield
        return

    def hook(_mod, _inp, out):
        if isinstance(out, tuple):
            return (out[0] + vec.to(out[0].dtype),) + tuple(out[1:])
        return out + vec.to(out.dtype)

    h = decoder_layers(lm)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        h.remove()


@torch.inference_mode()
def generate(lm, tok, prompt: str, layer: int, vec: torch.Tensor | None, max_new_tokens: int = 40,
             seed: int = 0, temperature: float = 0.0, chat: bool = False) -> str:
    """The continuation of `prompt` with `vec` added at `layer` (greedy if temperature is 0)."""
    if chat and getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        if tok.bos_token_id is not None and (ids.shape[1] == 0 or ids[0, 0] != tok.bos_token_id):
            ids = torch.cat([torch.tensor([[tok.bos_token_id]]), ids], 1)  # as in collection
    torch.manual_seed(seed)  # the same sampling noise for every variant
    kw = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with added_to_block(lm, layer, vec):
        out = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                          pad_token_id=pad, **kw)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def steer(lm, tok, model: HSAE, scale: float, layer: int, feature: tuple[int, int], strength: float,
          prompt: str, max_new_tokens: int = 40, seed: int = 0, temperature: float = 0.0,
          chat: bool = False, progress=None) -> list[Variant]:
    """Generate every variant of the feature's family; `progress(label)` is called before each."""
    if not 0 <= layer < len(decoder_layers(lm)):
        raise UserError(f"layer {layer} is out of range for this model")
    if lm.config.hidden_size != model.d:
        raise UserError(f"the run has d={model.d} but the model's hidden size is {lm.config.hidden_size}")
    variants = family(model, *feature)
    for v in variants:
        if progress:
            progress(v.label)
        vec = None if v.feature is None else strength * direction(model, scale, *v.feature)
        v.text = generate(lm, tok, prompt, layer, vec, max_new_tokens, seed, temperature, chat)
    return variants


def side_by_side(variants: list[Variant], columns: int = 3, width: int | None = None) -> str:
    """The variants as columns (label on top, wrapped text below), `columns` per block."""
    width = width or shutil.get_terminal_size((120, 20)).columns
    blocks = []
    for s in range(0, len(variants), columns):
        group = variants[s:s + columns]
        w = max(16, (width - 3 * (len(group) - 1)) // len(group))
        cols = [[v.label, "-" * min(w, len(v.label))] + textwrap.wrap(" ".join(v.text.split()) or "(empty)", w)
                for v in group]
        rows = max(len(c) for c in cols)
        lines = [" | ".join((c[r] if r < len(c) else "").ljust(w) for c in cols).rstrip() for r in range(rows)]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
