"""`hsae browse`: one self-contained offline HTML file to read a run's feature forest.

The page (assets/page.{html,css,js}, all inlined, no network) gets one JSON blob: per-level
feature columns (frequency, mean activation, parent, edge statistics, promoted tokens,
histogram, map coordinates, explanation) and base64 binary arrays for the examples (store row,
activation, per-token activation quantised to a byte relative to the feature's top
activation, 255 = outside the context) plus the token stream of the scanned rows. Examples are
decoded only when a feature is shown, so the page opens fast even for thousands of features.

Edge statistics come from the held-out rows of the contexts pass: P(p|c) = both / child
fires, P(c|p) = both / parent fires, co-activation count = both; decoder cosine from the model.
"""

from __future__ import annotations

import base64
import html
import json
from importlib import resources
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..config import UserError
from ..files import atomic_write, writing
from ..rundir import EXPLANATIONS, load_run, read_explanations
from .contexts import Contexts, load_contexts
from .layout import UMAP_MIN, map2



def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _round(a, digits: int = 4) -> list:
    return [float(f"{v:.{digits}g}") for v in np.asarray(a, np.float64)]


def roots_of(parents: list[np.ndarray], sizes: list[int]) -> list[np.ndarray]:
    """Per level, the (level, id) of each feature's tree root, packed as level * 2^20 + id."""
    out = [np.arange(sizes[0], dtype=np.int64)]
    for l in range(1, len(sizes)):
        p = parents[l]
        own = l * (1 << 20) + np.arange(sizes[l], dtype=np.int64)
        out.append(np.where(p >= 0, out[l - 1][np.clip(p, 0, None)], own))
    return out


def _wordnet(run: Path, sizes: list[int]) -> dict | None:
    """The WordNet check of RUN/eval.json (`hsae eval --wordnet`), if it has one for these levels."""
    from ..eval.report import read_eval

    p = run / "eval.json"
    if not p.is_file():
        return None
    wn = read_eval(p).get("wordnet")
    if not isinstance(wn, dict) or [len(x) for x in wn.get("labels", [])] != sizes or "edge_status" not in wn:
        return None
    return wn


def page_data(run: str | Path, maps: str = "auto", seed: int = 0, progress: bool = True) -> dict:
    """The JSON object the page reads (see module docstring)."""
    run = Path(run)
    cfg, model, _ = load_run(run)
    c: Contexts = load_contexts(run)
    if c.sizes != model.sizes:
        raise UserError(f"{run}: contexts were made for levels {c.sizes}, the model has {model.sizes}; rerun `hsae contexts`")
    L = len(c.sizes)
    # local vocabulary: only the token ids the page needs, renumbered densely
    ids = set(np.unique(c.tokens).tolist())
    for l in range(L):
        ids |= set(np.unique(c.array(l, "promoted")).tolist())
    ids = sorted(ids)
    lut = np.zeros(max(ids) + 1, np.int64)
    lut[ids] = np.arange(len(ids))
    tok_dtype = np.uint16 if len(ids) < 65536 else np.uint32
    parents = [np.full(c.sizes[0], -1)] + [model.parent(l).numpy() for l in range(1, L)]
    roots = roots_of(parents, c.sizes)
    expl = read_explanations(run / EXPLANATIONS)
    wn = _wordnet(run, c.sizes)
    levels = []
    for l, lv in enumerate(tqdm(model.levels, desc="browse (levels; UMAP maps)", unit="level", disable=not progress)):
        n = c.sizes[l]
        W = lv.W_dec.detach().numpy()
        fires = c.array(l, "fires")
        act_sum = c.array(l, "act_sum")
        mean = np.where(fires > 0, act_sum / np.maximum(fires, 1), 0.0)
        top_act = c.array(l, "top_act")
        fmax = np.maximum(top_act.max(1), 1e-6)  # a feature's strongest kept activation
        ex = {}
        for kind in ("top", "sample"):
            v = c.array(l, f"{kind}_values").astype(np.float32)
            q = np.where(np.isnan(v), 255, np.clip(np.round(v / fmax[:, None, None] * 254), 0, 254)).astype(np.uint8)
            ex[kind] = {"row": _b64(c.array(l, f"{kind}_row").astype(np.int32)),
                        "act": _b64(c.array(l, f"{kind}_act").astype(np.float32)), "q": _b64(q)}
        hist = c.array(l, "hist")
        d = {"n": n, "freq": _round(fires / max(1, c.n_ordinary)), "mean": _round(mean, 3), "max": _round(fmax, 3),
             "thr": _round(c.array(l, "threshold"), 3), "hist": hist.tolist(),
             "promoted": lut[c.array(l, "promoted")].tolist(),
             "root": roots[l].tolist(), "ex": ex, "map": _round(map2(W, maps, seed).ravel(), 3),
             "expl": {int(k.split(":")[1]): v for k, v in expl.items() if k.split(":")[0] == str(l)},
             # WordNet synset per labelled feature and the status of its edge to its parent (eval/wordnet.py)
             "wn": {i: lab[1] for i, lab in enumerate(wn["labels"][l]) if lab} if wn else {},
             "wns": {i: s for i, s in enumerate(wn["edge_status"][l - 1]) if s} if wn and l else {}}
        if l:
            d.update(_edges(c, l, parents[l], W, model.levels[l - 1].W_dec.detach().numpy()))
        levels.append(d)
    trees = tree_maps(model, roots, maps, seed)
    return {"meta": {"run": str(run), "model": c.info["model"], "layer": c.info["layer"], "sizes": c.sizes,
                     "k": c.k, "before": c.before, "after": c.after, "rows": c.n_rows, "row_mode": c.info["row_mode"],
                     "edge_rows": c.info["edge_rows"][1] - c.info["edge_rows"][0], "bpo": c.info["bins_per_octave"],
                     "row_start": c.row_start, "baseline": cfg.baseline},
            "vocab": [c.vocab[t] for t in ids], "tokdtype": np.dtype(tok_dtype).name,
            "tokens": _b64(lut[c.tokens].astype(tok_dtype)), "levels": levels, "trees": trees}


def _edges(c: Contexts, l: int, p: np.ndarray, W: np.ndarray, Wp: np.ndarray) -> dict:
    """Level l's edges to its parents p: decoder cosines, co-firing counts, P(parent | child) and
    P(child | parent) on the scanned rows (-1 where the denominator never fired)."""
    has = p >= 0
    cos = np.where(has, (W * Wp[np.clip(p, 0, None)]).sum(1), 0.0)
    both = c.array(l, "edge_both")
    cf, pf = c.array(l, "edge_fires"), c.array(l - 1, "edge_fires")[np.clip(p, 0, None)]
    return dict(parent=p.tolist(), cos=_round(cos, 3), both=both.tolist(),
                pc=_round(np.where(cf > 0, both / np.maximum(cf, 1), -1), 3),
                cp=_round(np.where((pf > 0) & has, both / np.maximum(pf, 1), -1), 3))


def tree_maps(model, roots: list[np.ndarray], maps: str, seed: int) -> dict:
    """Per tree with at least 2 features: its members' (level, id) and 2-D map of their decoder rows."""
    members: dict[int, list[tuple[int, int]]] = {}
    for l, r in enumerate(roots):
        for i, key in enumerate(r.tolist()):
            members.setdefault(key, []).append((l, i))
    out = {}
    for key, mem in members.items():
        if len(mem) < 2:
            continue
        x = np.stack([model.levels[l].W_dec[i].detach().numpy() for l, i in mem])
        xy = map2(x, "pca" if len(mem) < UMAP_MIN or maps == "pca" else maps, seed)
        out[str(key)] = {"m": [l * (1 << 20) + i for l, i in mem], "xy": _round(xy.ravel(), 3)}
    return out


def render(data: dict) -> str:
    """The HTML page with its CSS, JS and data inlined."""
    assets = resources.files(__package__) / "assets"
    page = (assets / "page.html").read_text()
    # "<" escaped: token text like "</script>" or "<!--" must not end or confuse the script element
    blob = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    return (page.replace("/*CSS*/", (assets / "page.css").read_text())
            .replace("/*JS*/", (assets / "page.js").read_text())
            .replace("{{TITLE}}", html.escape(f"HSAE forest: {Path(data['meta']['run']).name}"))
            .replace("/*DATA*/", blob))


def browse(run: str | Path, out: str | Path, maps: str = "auto", seed: int = 0, progress: bool = True) -> Path:
    """Write the browser page of a run (needs RUN/contexts.safetensors) to `out`; returns its path."""
    if maps not in ("auto", "umap", "pca"):
        raise UserError("--maps must be auto, umap or pca")
    out = Path(out)
    text = render(page_data(run, maps, seed, progress))
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, text.encode("utf-8"))
    return out
