"""Feature contexts of a run: `hsae contexts RUN` writes RUN/contexts.safetensors; `load_contexts` reads it.

Stable Python API (the LLM judge and the Neuronpedia export are built on it):

    from hsae.explore.contexts import load_contexts
    c = load_contexts("runs/smollm2-hsae")
    c.sizes                      # features per level, e.g. [256, 512, 1024, 2048]
    ex = c.top(level, fid)       # up to k examples, highest activation first
    ex = c.sampled(level, fid)   # up to k activation-weighted random examples (may repeat top ones)
    ex[0].tokens                 # list[str]: the token window, each token decoded on its own
    ex[0].values                 # list[float]: this feature's activation on every token of the window
    ex[0].index                  # int: position of the activating token in the window
    ex[0].act                    # float: activation on that token (== values[index])
    ex[0].row                    # int: row of the activation store
    ex[0].text("<<", ">>")       # the window as one string, the activating token marked
    c.frequency(level, fid)      # fraction of the scanned ordinary rows on which it fires
    c.mean_act(level, fid)       # mean activation over the rows where it fires (0 if never)
    c.histogram(level, fid)      # list of (lo, hi, count): activations in [lo, hi); last hi is inf
    c.promoted(level, fid)       # list[str]: tokens its decoder row raises most (logit lens)
    c.feature(level, fid)        # all of the above in one Feature object
    c.edge(level, fid)           # (level >= 1) held-out firing counts of it, its parent and both

Activations are in the model's normalised units (the SAE's input is scale * x). Windows hold
`before` tokens, the activating one, and up to `after` tokens, cut at the row's own context.

File format (one safetensors file; metadata "hsae_contexts" is JSON with format, version, k,
before, after, seed, rows [start, stop) scanned, row_mode "holdout"|"all", edge_rows, store,
model, layer, bins_per_octave, and vocab {token id: string} for every id used):
  rows.tokens              int32 [R]        token id of each scanned row
  levels.{l}.fires         int64 [n]        rows on which the feature fires
  levels.{l}.act_sum       float64 [n]      sum of its activations
  levels.{l}.hist          int64 [n, 32]    counts in bins [t 2^(i/4), t 2^((i+1)/4)), t = threshold
  levels.{l}.threshold     float32 [n]
  levels.{l}.{top,sample}_row     int64 [n, k]      store row, -1 = empty slot
  levels.{l}.{top,sample}_act     float32 [n, k]
  levels.{l}.{top,sample}_values  float16 [n, k, before + 1 + after]  NaN = outside the context
  levels.{l}.promoted      int32 [n, m], levels.{l}.promoted_logit float32 [n, m]
  levels.{l}.edge_fires    int64 [n]        firing count on the held-out rows
  levels.{l}.edge_both     int64 [n]        (l >= 1) held-out rows where it and its parent both fire
  levels.{l}.parent        int64 [n]        (l >= 1) the run's parent array, -1 = none
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import safe_open

from ..config import UserError
from ..data.store import Store
from ..files import file_sha256, save_tensors
from ..rundir import MODEL, load_run
from .scan import BINS_PER_OCTAVE, N_BINS, scan

FILE = "contexts.safetensors"
FORMAT, VERSION = "hsae-contexts", 2  # 2: records the sha256 of the model.safetensors it was made from


@dataclass
class Example:
    """One activating row shown with its token window."""

    tokens: list[str]
    values: list[float]
    index: int
    act: float
    row: int

    def text(self, left: str = "<<", right: str = ">>") -> str:
        """The window as one string with the activating token between `left` and `right`."""
        t = list(self.tokens)
        t[self.index] = f"{left}{t[self.index]}{right}"
        return "".join(t)


@dataclass
class Feature:
    """Everything the contexts file holds about one feature."""

    level: int
    id: int
    frequency: float
    mean_act: float
    histogram: list[tuple[float, float, int]]
    promoted: list[str]
    top: list[Example] = field(repr=False)
    sampled: list[Example] = field(repr=False)


class Contexts:
    """Read access to a contexts file (see the module docstring)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_dir():
            path = path / FILE
        if not path.is_file():
            raise UserError(f"{path}: no contexts file; run `hsae contexts {path.parent}` first")
        try:
            with safe_open(str(path), framework="np") as f:
                self.info = json.loads((f.metadata() or {})["hsae_contexts"])
                self._t = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises several types for damaged files
            raise UserError(f"{path}: unreadable contexts file ({e}); rerun `hsae contexts`") from None
        if not isinstance(self.info, dict) or self.info.get("format") != FORMAT or self.info.get("version") != VERSION:
            raise UserError(f"{path}: not a version-{VERSION} contexts file; rerun `hsae contexts {path.parent}`")
        self.path = path
        try:
            self.vocab = {int(k): v for k, v in self.info["vocab"].items()}
            self.k, self.before, self.after = self.info["k"], self.info["before"], self.info["after"]
            self.row_start = self.info["rows"][0]
            self.n_rows = self.info["rows"][1] - self.row_start
            # rows a feature could fire on: the scanned rows minus those kept out of training (data/ordinary.py)
            self.n_ordinary = self.info.get("ordinary_rows", self.n_rows)
            self.sizes = [len(self._t[f"levels.{l}.fires"]) for l in range(self.info["levels"])]
            self.tokens = self._t["rows.tokens"]
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise UserError(f"{path}: malformed contexts file ({type(e).__name__}: {e}); rerun `hsae contexts`") from None

    def check_made_for(self, model_file: Path) -> None:
        """UserError unless this file was made from exactly this model.safetensors (not another run's)."""
        if self.info.get("model_sha256") != file_sha256(model_file):
            raise UserError(f"{self.path} was made for another model than {model_file} (copied from another run?); "
                            f"rerun `hsae contexts {model_file.parent}`")

    def array(self, level: int, name: str) -> np.ndarray:
        """A raw per-level array of the file, e.g. array(0, 'fires')."""
        return self._t[f"levels.{level}.{name}"]

    def _check(self, level: int, fid: int) -> None:
        if not 0 <= level < len(self.sizes) or not 0 <= fid < self.sizes[level]:
            raise UserError(f"no feature {level}:{fid} (levels have {self.sizes} features)")

    def _examples(self, kind: str, level: int, fid: int) -> list[Example]:
        self._check(level, fid)
        rows = self.array(level, f"{kind}_row")[fid]
        acts = self.array(level, f"{kind}_act")[fid]
        vals = self.array(level, f"{kind}_values")[fid].astype(np.float32)
        out = []
        for r, a, v in zip(rows, acts, vals):
            if r < 0:
                continue
            inside = np.flatnonzero(~np.isnan(v))  # a contiguous run containing the centre
            i0, i1 = int(inside[0]), int(inside[-1]) + 1
            base = int(r) - self.row_start - self.before
            toks = [self.vocab[int(t)] for t in self.tokens[base + i0:base + i1]]
            out.append(Example(toks, [float(x) for x in v[i0:i1]], self.before - i0, float(a), int(r)))
        return out

    def top(self, level: int, fid: int) -> list[Example]:
        """Top-k activating examples of feature `fid` of `level`, highest first."""
        return self._examples("top", level, fid)

    def sampled(self, level: int, fid: int) -> list[Example]:
        """Activation-weighted random examples (without replacement among rows), in key order."""
        return self._examples("sample", level, fid)

    def frequency(self, level: int, fid: int) -> float:
        """Fraction of the scanned rows on which the feature fires."""
        self._check(level, fid)
        return float(self.array(level, "fires")[fid]) / max(1, self.n_ordinary)

    def mean_act(self, level: int, fid: int) -> float:
        """Mean activation over the rows where it fires (0.0 if it never fires)."""
        self._check(level, fid)
        n = int(self.array(level, "fires")[fid])
        return float(self.array(level, "act_sum")[fid]) / n if n else 0.0

    def histogram(self, level: int, fid: int) -> list[tuple[float, float, int]]:
        """(lo, hi, count) bins of its activations: lo = threshold * 2^(i/4); the last bin is open."""
        self._check(level, fid)
        t = float(self.array(level, "threshold")[fid])
        counts = self.array(level, "hist")[fid]
        bpo = self.info["bins_per_octave"]
        edges = [t * 2 ** (i / bpo) for i in range(len(counts))] + [math.inf]
        return [(edges[i], edges[i + 1], int(c)) for i, c in enumerate(counts)]

    def promoted(self, level: int, fid: int) -> list[str]:
        """Tokens its decoder row promotes most through the unembedding, strongest first."""
        self._check(level, fid)
        return [self.vocab[int(i)] for i in self.array(level, "promoted")[fid]]

    def feature(self, level: int, fid: int) -> Feature:
        """All stored information on one feature."""
        return Feature(level, fid, self.frequency(level, fid), self.mean_act(level, fid), self.histogram(level, fid),
                       self.promoted(level, fid), self.top(level, fid), self.sampled(level, fid))

    def edge(self, level: int, fid: int) -> dict:
        """Held-out firing counts of feature `fid` (level >= 1): {'parent_id' (-1: none), 'child', 'parent', 'both'}."""
        self._check(level, fid)
        if level == 0:
            raise UserError("level 0 features have no parent")
        p = int(self.array(level, "parent")[fid])
        return {"parent_id": p, "child": int(self.array(level, "edge_fires")[fid]),
                "parent": int(self.array(level - 1, "edge_fires")[p]) if p >= 0 else 0,
                "both": int(self.array(level, "edge_both")[fid])}


def load_contexts(run: str | Path) -> Contexts:
    """The contexts of a run directory, checked to belong to its model (or of a contexts.safetensors file)."""
    ctx = Contexts(run)
    if Path(run).is_dir() and (Path(run) / MODEL).is_file():
        ctx.check_made_for(Path(run) / MODEL)
    return ctx


def build_contexts(run: str | Path, acts: str | Path | None = None, k: int = 20, all_rows: bool = False,
                   before: int = 12, after: int = 4, seed: int = 0, model: str | None = None, promote: int = 10,
                   chunk: int = 2048, progress: bool = True, lm=None) -> dict:
    """Scan the store, compute the logit lens, and write RUN/contexts.safetensors atomically; returns its info.

    Rows scanned: the held-out tail (`cfg.holdout`) by default, every row with all_rows=True
    (many more examples for rare features, but most rows were trained on). Edge statistics
    always use the held-out rows. `lm` = (model, tokenizer) skips loading the language model.
    """
    if k < 1 or before < 0 or after < 0 or chunk < 1 or promote < 1:
        raise UserError("--k, --chunk and --promote must be >= 1, window sizes >= 0")
    run = Path(run)
    cfg, hsae, _ = load_run(run)
    store = Store(acts or cfg.acts)
    if store.d != hsae.d:
        raise UserError(f"model has d={hsae.d} but {store.path} has d={store.d}")
    from .lens import promoted, token_strings
    from .rows import row_text

    _, held = store.split(cfg.holdout)
    rows = range(0, store.rows) if all_rows else held
    tokens, context = row_text(store, rows)  # first: a store without text fails before the model loads
    src = store.meta.get("source", {})
    spec = model or src.get("model")
    if lm is None:
        if not spec:
            raise UserError(f"{store.path}: the manifest names no model; pass --model")
        from ..data.models import load_model

        lm = load_model(spec)
    t0 = time.perf_counter()
    levels = scan(hsae, store, rows, context, held, k, before, after, seed, chunk, progress)
    seconds = time.perf_counter() - t0
    tensors = {"rows.tokens": tokens.astype(np.int32)}
    used = set(np.unique(tokens).tolist())
    for l, (d, lv) in enumerate(zip(levels, hsae.levels)):
        ids, logits = promoted(lm[0], lv.W_dec.detach(), promote)
        used |= set(ids.unique().tolist())
        d["promoted"], d["promoted_logit"] = ids.int().numpy(), logits.float().numpy()
        d["threshold"] = lv.threshold.detach().float().numpy()
        if l:
            d["parent"] = hsae.parent(l).numpy()
        d["act_sum"] = d["act_sum"].astype(np.float64)
        for name, arr in d.items():
            tensors[f"levels.{l}.{name}"] = np.ascontiguousarray(arr)
    info = {"format": FORMAT, "version": VERSION, "levels": len(levels), "k": k, "before": before, "after": after,
            "seed": seed, "rows": [rows.start, rows.stop], "row_mode": "all" if all_rows else "holdout",
            "edge_rows": [held.start, held.stop], "store": str(store.path), "model": str(spec),
            "model_sha256": file_sha256(run / MODEL),
            "ordinary_rows": int(store.ordinary[rows.start:rows.stop].sum()),
            "layer": src.get("layer"), "bins_per_octave": BINS_PER_OCTAVE, "n_bins": N_BINS,
            "scan_seconds": round(seconds, 2), "vocab": token_strings(lm[1], sorted(used))}
    save_tensors(tensors, run / FILE, metadata={"hsae_contexts": json.dumps(info)})
    return info
