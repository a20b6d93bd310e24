"""Logit lens of decoder rows, and token strings, from the language model a store was collected from."""

from __future__ import annotations

import torch


def final_norm_weight(lm) -> torch.Tensor | None:
    """Elementwise weight of the model's final norm (Llama `model.norm`, GPT-2 `transformer.ln_f`), if any."""
    base = getattr(lm, lm.base_model_prefix, lm)
    for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm"):
        mod = getattr(base, name, None)
        if mod is not None and getattr(mod, "weight", None) is not None:
            return mod.weight.detach().float()
    return None


@torch.no_grad()
def promoted(lm, directions: torch.Tensor, m: int = 10, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids [n, m], logits [n, m]): the tokens each direction [n, d] raises most through the unembedding.

    The final norm's weight is applied elementwise; its 1/RMS factor is a positive scalar per
    input and does not change the ranking of one direction's logits.
    """
    W_U = lm.get_output_embeddings().weight.detach().float()  # [vocab, d]
    g = final_norm_weight(lm)
    ids, logits = [], []
    for a in range(0, directions.shape[0], chunk):
        dvec = directions[a:a + chunk].float()
        if g is not None:
            dvec = dvec * g
        v, i = (dvec @ W_U.t()).topk(min(m, W_U.shape[0]), dim=1)
        ids.append(i)
        logits.append(v)
    return torch.cat(ids), torch.cat(logits)


def token_strings(tok, ids) -> dict[int, str]:
    """Each token id decoded on its own (byte-level BPE keeps its leading space)."""
    return {int(i): tok.decode([int(i)]) for i in ids}
