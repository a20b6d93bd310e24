"""Neuronpedia export: per-level feature dashboards in the batch JSON Neuronpedia's upload reads, plus the forest.

Shape followed (no Neuronpedia package is installed to check against, so this mirrors the
writer Neuronpedia's own pipeline uses): SAEDashboard's `NeuronpediaDashboardBatch` /
`NeuronpediaDashboardFeature` / `NeuronpediaDashboardActivation.to_dict()`
(github.com/jbloomAus/SAEDashboard, sae_dashboard/neuronpedia/neuronpedia_dashboard.py), i.e.
  batch-N.json = {"model_id", "layer", "sae_set", "features": [{"feature_index", "activations":
  [{"bin_min", "bin_max", "bin_contains", "tokens", "values"}], "pos_str", "pos_values",
  "neg_str", "neg_values", "frac_nonzero", "freq_hist_data_bar_values",
  "freq_hist_data_bar_heights", "logits_hist_data_bar_*", "n_prompts_total",
  "n_tokens_in_prompt", "dataset", ...}]}
Top examples use SAEDashboard's "TOP ACTIVATIONS" bin (bin_min -1, bin_max = max activation,
bin_contains -1); the activation-weighted samples are one interval over all activations
(bin_min 0, bin_max = max, bin_contains 1.0). Explanations (RUN/explanations.json, from
`hsae explain`) follow the fields of Neuronpedia's explanation records (modelId, layer = the
source id, index, description, explanationModelName, typeName).

Activation values are divided by the store scale: raw-activation units, the same as the
SAELens export's encode, so both exports of one run agree.

Layout: OUT/level_{l}/batch-{b}.json, OUT/level_{l}/explanations.json, OUT/hierarchy.json
(every forest edge with held-out firing counts and P(parent | child), P(child | parent)).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from tqdm import tqdm

from ..files import atomic_write
from ..explore.contexts import load_contexts
from ..rundir import EXPLANATIONS, load_run, read_explanations
from .source import model_name, store_source

BATCH = 128  # features per batch file, as in SAEDashboard's runner default


def slug(s: str) -> str:
    """Neuronpedia-style id: lower case, [a-z0-9-]."""
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def source_id(layer, run: str, level: int, n: int) -> str:
    """Neuronpedia source id of one level: '{layer}-hsae-{run}-l{level}-{n}'."""
    return f"{layer if layer is not None else 0}-hsae-{slug(Path(run).name)}-l{level}-{n}"


def _activation(ex, scale: float, bin_min: float, bin_max: float, contains: float) -> dict:
    return {"bin_min": bin_min, "bin_max": bin_max, "bin_contains": contains, "tokens": list(ex.tokens),
            "values": [round(v / scale, 4) + 0.0 if v == v else 0.0 for v in ex.values]}  # + 0.0: no "-0.0"


def feature_json(ctx, l: int, i: int, scale: float, dataset: str) -> dict:
    """One feature in NeuronpediaDashboardFeature.to_dict() shape."""
    top, sampled = ctx.top(l, i), ctx.sampled(l, i)
    mx = round(max((e.act for e in top), default=0.0) / scale, 4)
    hist = ctx.histogram(l, i)
    # bar positions: geometric centre of each bin (the last, open bin: one bin width above its start)
    centres = [math.sqrt(lo * (hi if math.isfinite(hi) else lo * 2 ** 0.25)) / scale for lo, hi, _ in hist]
    promoted = ctx.promoted(l, i)
    logits = ctx.array(l, "promoted_logit")[i].tolist()
    return {
        "feature_index": i,
        "activations": [_activation(e, scale, -1, mx, -1) for e in top]
        + [_activation(e, scale, 0, mx, 1.0) for e in sampled],
        "pos_str": promoted, "pos_values": [round(v, 3) for v in logits[:len(promoted)]],
        "neg_str": [], "neg_values": [],
        "frac_nonzero": ctx.frequency(l, i),
        "freq_hist_data_bar_values": [round(c, 4) for c in centres],
        "freq_hist_data_bar_heights": [c for _, _, c in hist],
        "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [],
        "n_prompts_total": ctx.n_rows, "n_tokens_in_prompt": ctx.before + 1 + ctx.after,
        "dataset": dataset,
        "neuron_alignment_indices": [], "neuron_alignment_values": [], "neuron_alignment_l1": [],
        "correlated_neurons_indices": [], "correlated_neurons_l1": [], "correlated_neurons_pearson": [],
        "correlated_features_indices": [], "correlated_features_l1": [], "correlated_features_pearson": [],
        "decoder_weights_dist": [],
    }


def edge_json(ctx, model, l: int, c: int, sources: list[str]) -> dict:
    """One forest edge (child in level l) with its held-out firing statistics."""
    e = ctx.edge(l, c)
    p = int(model.parent(l)[c])
    return {"parent": {"source": sources[l - 1], "index": p}, "child": {"source": sources[l], "index": c},
            "child_fires": e["child"], "parent_fires": e["parent"], "both": e["both"],
            "p_parent_given_child": e["both"] / e["child"] if e["child"] else None,
            "p_child_given_parent": e["both"] / e["parent"] if e["parent"] else None}


def export_neuronpedia(run: str | Path, out: str | Path, progress: bool = True) -> dict:
    """Write the Neuronpedia files of every level and the forest; returns counts."""

    cfg, model, scale = load_run(run)
    ctx = load_contexts(str(run))
    src = store_source(cfg)
    layer = src.get("layer")
    model_id = slug(model_name(src).split("/")[-1])
    dataset = str(src.get("corpus", cfg.acts))
    sources = [source_id(layer, str(run), l, n) for l, n in enumerate(model.sizes)]
    expl = read_explanations(Path(run) / EXPLANATIONS)
    out = Path(out)
    n_feat = 0
    bar = tqdm(total=sum(model.sizes), desc="neuronpedia", unit="feature", disable=not progress)
    for l, n in enumerate(model.sizes):
        d = out / f"level_{l}"
        d.mkdir(parents=True, exist_ok=True)
        set_name = sources[l].split("-", 1)[1]
        for b, a in enumerate(range(0, n, BATCH)):
            feats = [feature_json(ctx, l, i, scale, dataset) for i in range(a, min(n, a + BATCH))]
            batch = {"model_id": model_id, "layer": layer, "sae_set": set_name, "features": feats}
            atomic_write(d / f"batch-{b}.json", json.dumps(batch).encode())
            n_feat += len(feats)
            bar.update(len(feats))
        recs = [{"modelId": model_id, "layer": sources[l], "index": str(i), "description": expl[f"{l}:{i}"],
                 "explanationModelName": "hsae explain", "typeName": "hsae-explain"}
                for i in range(n) if f"{l}:{i}" in expl]
        atomic_write(d / "explanations.json", json.dumps(recs, indent=1).encode())
    bar.close()
    edges = [edge_json(ctx, model, l, c, sources) for l in range(1, len(model.levels))
             for c in (model.parent(l) >= 0).nonzero().flatten().tolist()]
    hier = {"format": "hsae-hierarchy", "version": 1, "model_id": model_id, "sources": sources,
            "scale": scale, "edges": edges}
    atomic_write(out / "hierarchy.json", json.dumps(hier).encode())
    return {"features": n_feat, "edges": len(edges)}
