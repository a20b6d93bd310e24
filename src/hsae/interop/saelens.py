"""SAELens interop: export each HSAE level as a SAELens 6.x JumpReLU SAE, import SAELens SAEs.

Export layout (what `sae_lens.SAE.load_from_disk` reads, checked against sae-lens 6.54):
  OUT/level_{l}/cfg.json                  architecture "jumprelu", d_in, d_sae, dtype, metadata
  OUT/level_{l}/sae_weights.safetensors   exactly W_enc [d, n], b_enc [n], W_dec [n, d], b_dec [d], threshold [n]
  OUT/hierarchy.json                      the forest (parent arrays, level directories)
The loader rejects unexpected tensors, so the forest never goes into the weights file.

Our model works on s * x (s = the store's normalisation scale) with unit-norm decoder rows.
The export works on raw x and keeps the decoder rows unit norm, so its activations are ours / s:
  W_enc' = W_enc, b_enc' = b_enc / s, threshold' = threshold / s, W_dec' = W_dec, b_dec' = b_dec / s,
and apply_b_dec_to_input = False because our encoder does not subtract b_dec.
Import is the inverse (after folding b_dec and the decoder norms of a general SAELens SAE).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from ..config import TrainConfig, UserError
from ..data.store import Store
from ..files import atomic_write, save_tensors, writing
from ..model import HSAE, update_forest
from ..rundir import CONFIG, MODEL, load_run, save_model
from .source import hook_name, model_name, store_source

SAELENS_VERSION = "6.54.12"  # the version whose loader this layout was checked against
HIERARCHY = "hierarchy.json"
IMPORTED = "imported.json"
WEIGHT_KEYS = {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}


def level_cfg(d: int, n: int, src: dict, run: str, level: int, scale: float) -> dict:
    """cfg.json of one exported level (SAELens 6.x fields; hook/model also at top level for readers of older layouts)."""
    meta = {
        "sae_lens_version": SAELENS_VERSION,
        "sae_lens_training_version": None,  # not trained by SAELens
        "model_name": model_name(src),
        "hook_name": hook_name(src.get("layer")),
        "hook_head_index": None,
        "prepend_bos": True,
        "context_size": src.get("ctx"),
        "dataset_path": src.get("corpus"),
        "model_class_name": "HookedTransformer",
        "hsae": {"run": run, "level": level, "store_scale": scale, "source": src},
    }
    return {
        "architecture": "jumprelu", "d_in": d, "d_sae": n, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
        "hook_name": meta["hook_name"], "model_name": meta["model_name"], "metadata": meta,
    }


def raw_level_tensors(model: HSAE, l: int, scale: float) -> dict[str, torch.Tensor]:
    """Level l's weights folded to work on raw activations (see the module docstring)."""
    lv = model.levels[l]
    with torch.no_grad():
        t = {"W_enc": lv.W_enc, "b_enc": lv.b_enc / scale, "W_dec": lv.W_dec,
             "b_dec": lv.b_dec / scale, "threshold": lv.threshold / scale}
        return {k: v.detach().float().contiguous().clone() for k, v in t.items()}


def forest_json(model: HSAE, dirs: list[str]) -> dict:
    """hierarchy.json: level directories and sizes, and every level's parent array (-1 = root/orphan)."""
    return {
        "format": "hsae-hierarchy", "version": 1,
        "levels": [{"dir": d, "d_sae": n} for d, n in zip(dirs, model.sizes)],
        "parents": {str(l): model.parent(l).tolist() for l in range(1, len(model.levels))},
    }


def export_saelens(run: str | Path, out: str | Path) -> list[Path]:
    """Write one SAELens directory per level plus hierarchy.json; returns the level directories."""
    cfg, model, scale = load_run(run)
    src = store_source(cfg)
    out = Path(out)
    dirs = []
    for l, n in enumerate(model.sizes):
        d = out / f"level_{l}"
        with writing(d):
            d.mkdir(parents=True, exist_ok=True)
        save_tensors(raw_level_tensors(model, l, scale), d / "sae_weights.safetensors")
        atomic_write(d / "cfg.json", json.dumps(level_cfg(model.d, n, src, str(run), l, scale), indent=2).encode())
        dirs.append(d)
    atomic_write(out / HIERARCHY, json.dumps(forest_json(model, [d.name for d in dirs])).encode())
    return dirs


# ---- import -----------------------------------------------------------------------------------

def read_saelens(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(cfg.json, weights) of one SAELens JumpReLU directory, with clear errors for what we cannot use."""
    path = Path(path)
    cfg_p, w_p = path / "cfg.json", path / "sae_weights.safetensors"
    if not cfg_p.is_file() or not w_p.is_file():
        raise UserError(f"{path}: not a SAELens SAE directory (needs cfg.json and sae_weights.safetensors)")
    try:
        cfg = json.loads(cfg_p.read_text())
        with safe_open(str(w_p), framework="pt") as f:
            w = {k: f.get_tensor(k).float() for k in f.keys()}
    except Exception as e:  # json and safetensors raise several types for damaged files
        raise UserError(f"{path}: unreadable SAE ({str(e).splitlines()[0]})") from None
    arch = cfg.get("architecture", "standard")
    if arch != "jumprelu":
        raise UserError(f"{path}: architecture {arch!r}; only JumpReLU SAEs can be imported")
    if cfg.get("normalize_activations", "none") not in ("none", None, False):
        raise UserError(f"{path}: normalize_activations={cfg['normalize_activations']!r} is not supported; fold it first")
    if "log_threshold" in w and "threshold" not in w:  # older SAELens training checkpoints
        w["threshold"] = w.pop("log_threshold").exp()
    sf = w.pop("scaling_factor", None)
    if sf is not None and not torch.allclose(sf, torch.ones_like(sf)):
        raise UserError(f"{path}: a finetuning scaling_factor is not supported")
    missing = WEIGHT_KEYS - set(w)
    if missing:
        raise UserError(f"{path}: missing tensors {', '.join(sorted(missing))}")
    return cfg, w


def to_normalised(cfg: dict, w: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """One SAELens SAE as our level's tensors (unit decoder rows, working on scale * x)."""
    W_enc, b_enc, W_dec, b_dec, th = (w[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"))
    if cfg.get("apply_b_dec_to_input", True):
        b_enc = b_enc - b_dec @ W_enc  # (x - b_dec) W_enc + b_enc == x W_enc + (b_enc - b_dec W_enc)
    # a W_dec == (a * norm) (W_dec / norm): scaling a feature's pre-activation and threshold by
    # the same positive factor keeps which inputs fire.
    norm = W_dec.norm(dim=1).clamp_min(1e-8)
    W_enc, b_enc, th, W_dec = W_enc * norm, b_enc * norm, th * norm, W_dec / norm[:, None]
    # on s * x: pre-activation s * (x W_enc + b_enc) means W_enc stays, the biases scale by s
    return {"W_enc": W_enc, "b_enc": b_enc * scale, "W_dec": W_dec, "b_dec": b_dec * scale,
            "threshold": (th * scale).clamp_min(1e-12)}


def mean_l0(model: HSAE, store: Store, rows: range, n: int = 16384, batch: int = 4096) -> list[float]:
    """Mean L0 per level on the ordinary rows among the first n of the given rows (recorded as the
    imported run's target L0)."""
    first = range(rows.start, min(rows.stop, rows.start + n))
    tot = [0.0] * len(model.levels)
    with torch.no_grad():
        for x in store.ordinary_batches(first, batch):
            for l, acts in enumerate(model.encode(x)):
                tot[l] += float((acts > 0).sum())
    return [t / max(1, int(store.ordinary[first.start:first.stop].sum())) for t in tot]


def import_saelens(dirs: list[str | Path], acts: str | Path, out: str | Path, similarity: str = "encoder",
                   tree: str = "partial", orphan_quantile: float = 0.2) -> Path:
    """A run directory (post-hoc forest) from SAELens JumpReLU SAEs of one hook point and its activation store."""
    if similarity not in ("encoder", "decoder"):
        raise UserError("--similarity must be encoder or decoder (co-activation needs training statistics)")
    out = Path(out)
    if (out / MODEL).exists():
        raise UserError(f"{out} already holds a run; use another --out")
    saes = sorted((read_saelens(d) + (str(d),) for d in dirs), key=lambda s: s[1]["W_dec"].shape[0])
    sizes = [s[1]["W_dec"].shape[0] for s in saes]
    d = saes[0][1]["W_dec"].shape[1]
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise UserError(f"SAE sizes must all differ to form levels, got {sizes}")
    if any(s[1]["W_dec"].shape[1] != d for s in saes):
        raise UserError("the SAEs have different d_in")
    hooks = {s[0].get("metadata", {}).get("hook_name") or s[0].get("hook_name") for s in saes}
    if len(hooks) > 1:
        raise UserError(f"the SAEs read different hook points: {', '.join(sorted(map(str, hooks)))}")
    store = Store(acts)
    if store.d != d:
        raise UserError(f"the SAEs have d_in={d} but {acts} has d={store.d}")
    model = HSAE(d, sizes)
    with torch.no_grad():
        for lv, (c, w, _) in zip(model.levels, saes):
            t = to_normalised(c, w, store.scale)
            for k in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(lv, k).copy_(t[k])
            lv.log_threshold.copy_(t["threshold"].log())
    # the post-hoc baseline's final step (trainer.run): one assignment from the finished weights
    update_forest(model, similarity, tree, orphan_quantile)
    cfg = TrainConfig(levels=sizes, steps=0, baseline=True, similarity=similarity, tree=tree,
                      orphan_quantile=orphan_quantile, d=d, acts=str(acts), rho=0.0, swap=0.0)
    cfg.l0 = [round(v, 3) for v in mean_l0(model, store, store.split(cfg.holdout)[0])]
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out / MODEL, store.scale)
    atomic_write(out / CONFIG, cfg.to_json().encode())
    atomic_write(out / IMPORTED, json.dumps({"from": [s[2] for s in saes], "hook_name": hooks.pop()}, indent=2).encode())
    return out
