"""What the interop subcommands do (export, import-saelens, steer, judge, explain); cli.py only parses flags."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from ..config import UserError
from ..files import atomic_write
from ..explore.contexts import load_contexts
from ..rundir import EXPLANATIONS, load_run, read_explanations


def run_export(a) -> int:
    """`hsae export`: SAELens directories per level, or Neuronpedia JSON."""
    if a.format == "saelens":
        from .saelens import export_saelens

        dirs = export_saelens(a.run, a.out)
        print(f"wrote {len(dirs)} SAELens JumpReLU SAEs ({', '.join(d.name for d in dirs)}) and hierarchy.json to {a.out}")
        return 0
    from .neuronpedia import export_neuronpedia

    n = export_neuronpedia(a.run, a.out, progress=not a.quiet)
    print(f"wrote {n['features']} features and {n['edges']} forest edges in Neuronpedia format to {a.out}")
    return 0


def run_import(a) -> int:
    """`hsae import-saelens`: a run directory with a post-hoc forest over existing SAELens SAEs."""
    from .saelens import import_saelens

    out = import_saelens(a.dirs, a.acts, a.out, a.similarity, a.tree, a.orphan_quantile)
    cfg, model, _ = load_run(out)
    n_edges = sum(int((model.parent(l) >= 0).sum()) for l in range(1, len(model.levels)))
    print(f"wrote {out}: levels {','.join(map(str, model.sizes))}, {n_edges} forest edges, "
          f"measured L0 {'/'.join(f'{v:.1f}' for v in cfg.l0)}")
    return 0


def run_steer(a) -> int:
    """`hsae steer`: continuations without steering, with the feature, its parent and each child."""
    from ..data.models import load_model
    from .source import store_source
    from .steer import parse_feature, side_by_side, steer

    cfg, model, scale = load_run(a.run)
    src = store_source(cfg)
    spec = a.model or src.get("model")
    layer = a.layer if a.layer is not None else src.get("layer")
    if not spec or layer is None:
        raise UserError("the run's store does not name its model and layer: pass --model and --layer")
    feat = parse_feature(a.feature, model)
    lm, tok = load_model(spec)
    if a.columns < 1:
        raise UserError("--columns must be at least 1")
    bar = tqdm(desc="steer", unit="variant", disable=a.quiet)
    variants = steer(lm, tok, model, scale, int(layer), feat, a.strength, a.prompt, a.max_new_tokens, a.seed,
                     a.temperature, a.chat, progress=lambda label: (bar.set_postfix_str(label), bar.update(0)))
    bar.close()
    if a.json:
        rec = {"run": str(a.run), "model": spec, "layer": int(layer), "feature": a.feature, "strength": a.strength,
               "prompt": a.prompt, "seed": a.seed, "temperature": a.temperature,
               "variants": [{"label": v.label, "text": v.text} for v in variants]}
        atomic_write(Path(a.json), (json.dumps(rec, indent=2) + "\n").encode())
    print(f"prompt: {a.prompt!r}  (strength {a.strength:g} at block {layer} of {spec})\n")
    print(side_by_side(variants, a.columns))
    return 0


def backend_from(a, prefill: str = "", max_tokens: int = 60):
    """The chat backend the flags ask for: --local (a local model, its answer started with `prefill`,
    at most `max_tokens` new tokens) or an OpenAI-compatible endpoint (free-form answer)."""
    from .llm import LocalChat, OpenAIChat, ResponseCache, default_cache_dir

    cache = ResponseCache(None if a.no_cache else (a.cache or default_cache_dir()))
    if a.local:
        b = LocalChat(a.local_model, cache, max_tokens=max_tokens)
        b.prefill = prefill
        return b
    return OpenAIChat(a.base_url, a.api_model, cache=cache, concurrency=a.concurrency, retries=a.retries)


def _stats(b) -> str:
    s = b.stats
    last = getattr(b, "last_error", None)  # why requests failed, when they did
    return (f"{s['requests']} requests, {s['cached']} cached, {s['retries']} retries, {s['failed']} failed"
            + (f" (last error: {last.splitlines()[0][:200]})" if s["failed"] and last else ""))


def run_judge(a) -> int:
    """`hsae judge`: the LLM judge's Yes rate on sampled parent-child pairs, per run."""
    from .judge import format_report, judge_run

    if a.pairs < 1:
        raise UserError("--pairs must be positive")
    jobs = [(r, load_run(r)[1], load_contexts(r)) for r in a.runs]  # fail on a bad run before any request
    backend = backend_from(a, prefill="HaveRelationship:", max_tokens=16)
    results = {}
    for run, model, ctx in jobs:
        with tqdm(total=2 * a.pairs, desc=f"judge {Path(run).name}", unit="pair", disable=a.quiet) as bar:
            results[str(run)] = judge_run(model, ctx, backend, a.pairs, a.seed, bar.update, a.window)
    names = [Path(r).name for r in results]  # the directory's name unless two runs share it
    print(format_report({(n if names.count(n) == 1 else r): v for n, (r, v) in zip(names, results.items())}))
    print(f"judge: {backend.name} {backend.model_id}; {_stats(backend)}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(a.json), json.dumps({"backend": backend.name, "model": backend.model_id,
                                            "stats": backend.stats, "runs": results}, indent=2).encode() + b"\n")
    return 0


def run_explain(a) -> int:
    """`hsae explain`: one-line explanation per feature into RUN/explanations.json."""
    from .judge import examples_of, explain_features, merge_explanations

    _, model, _ = load_run(a.run)
    ctx = load_contexts(a.run)
    levels = a.levels if a.levels is not None else list(range(len(model.levels)))
    if any(not 0 <= l < len(model.levels) for l in levels):
        raise UserError(f"--levels must be within 0..{len(model.levels) - 1}")
    if a.max_per_level < 0:
        raise UserError("--max-per-level must be >= 0 (0: all)")
    out = Path(a.out) if a.out else Path(a.run) / EXPLANATIONS
    read_explanations(out)  # a damaged file stops us before any model is asked anything
    feats = []
    for l in levels:
        have = [(l, i) for i in range(model.sizes[l]) if examples_of(ctx, l, i)]
        feats += have[: a.max_per_level] if a.max_per_level else have
    backend = backend_from(a, prefill="Explanation:", max_tokens=40)
    with tqdm(total=len(feats), desc="explain", unit="feature", disable=a.quiet) as bar:
        new, counts = explain_features(ctx, feats, backend, bar.update, a.window)
    allx = merge_explanations(out, new)
    print(f"explained {counts['explained']} of {len(feats)} features ({counts['malformed']} malformed, "
          f"{counts['failed']} failed); {len(allx)} explanations in {out}")
    print(f"explain: {backend.name} {backend.model_id}; {_stats(backend)}")
    return 0
