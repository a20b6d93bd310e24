"""`hsae` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
from pathlib import Path

from .config import TrainConfig, UserError


def _ints(s: str) -> list[int]:
    try:
        return [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _floats(s: str) -> list[float]:
    try:
        return [float(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


# `hsae synth` values a --preset may set, with the defaults used when neither it nor a flag does
SYNTH_BASE = {"d": 64, "branching": [8, 3, 3], "active": 3.0, "noise": 0.1}
# harder-generator flags: flag -> (SynthOptions field, parser of its value, help)
SYNTH_FLAGS = {
    "--branching-range": ("branching_range", "range", "LO,HI: every non-leaf node gets a uniform random number of children in [LO, HI] (--branching then gives roots and depth)"),
    "--p-no-child": ("p_no_child", float, "probability that a firing non-leaf node fires no child (default 0)"),
    "--zipf": ("zipf", float, "root i fires with probability proportional to 1/(i+1)^S, mean --active roots (default 0: uniform)"),
    "--child-zipf": ("child_zipf", float, "the k-th sibling is chosen with probability proportional to 1/(k+1)^S (default 0: uniform)"),
    "--magnitude-sigma": ("magnitude_sigma", float, "log-normal firing magnitudes (mean 1) with this log-sd (default off: Uniform(0.5, 1.5))"),
    "--root-correlation": ("root_correlation", float, "Gaussian-copula correlation C of root firings within a group (default 0: independent)"),
    "--root-group": ("root_group", int, "roots per correlated group (default 4)"),
}


def _synth_value(flag: str, kind, s: str):
    """Parse one harder-generator flag ('off' restores that option's default)."""
    from .data.synth import SynthOptions

    field = SYNTH_FLAGS[flag][0]
    if s.strip().lower() == "off":
        return getattr(SynthOptions(), field)
    try:
        if kind == "range":
            lo, hi = (int(v) for v in s.split(","))
            return (lo, hi)
        return kind(s)
    except ValueError:
        raise UserError(f"{flag}: cannot read {s!r}" + (" (expected LO,HI)" if kind == "range" else "")) from None


def _synth_settings(a) -> tuple[dict, dict]:
    """(d/branching/active/noise, SynthOptions fields): defaults < --preset < explicit flags."""
    from .data.synth import PRESETS

    if a.preset is not None and a.preset not in PRESETS:
        raise UserError(f"unknown --preset {a.preset!r}; choose from {', '.join(PRESETS)}")
    merged = {**SYNTH_BASE, **PRESETS.get(a.preset, {})}
    merged.update({k: getattr(a, k) for k in SYNTH_BASE if getattr(a, k) is not None})
    for flag, (field, kind, _) in SYNTH_FLAGS.items():
        raw = getattr(a, field)
        if raw is not None:
            merged[field] = _synth_value(flag, kind, raw)
    base = {k: merged.pop(k) for k in SYNTH_BASE}
    return base, merged


def cmd_synth(a) -> int:
    """Write a synthetic store with a known forest."""
    from tqdm import tqdm

    from .data.synth import SynthOptions, write_synth

    base, opts = _synth_settings(a)
    if a.tokens < 2:
        raise UserError("--tokens must be at least 2")
    options = SynthOptions(**opts)
    with tqdm(total=a.tokens, unit="row", desc="synth", disable=a.quiet) as bar:
        m = write_synth(a.out, base["d"], base["branching"], a.tokens, a.seed, base["active"], base["noise"],
                        progress=bar.update, options=options)
    sizes = m["source"]["sizes"]
    print(f"wrote {m['rows']} rows (d={m['d']}) to {a.out}; truth level sizes {','.join(map(str, sizes))}")
    return 0


def cmd_collect(a) -> int:
    """Collect one layer's activations from a local causal LM into a store."""
    from .data.collect import collect

    m = collect(a.model, a.layer, a.corpus, a.tokens, a.out, ctx=a.ctx, batch_size=a.batch_size, seed=a.seed,
                dtype=a.dtype, shard_rows=a.shard_rows, progress=not a.quiet, repair=a.repair, device=a.device)
    ex = m["excluded"]
    print(f"wrote {m['rows']} rows (d={m['d']}) to {a.out}; {m['dropped_nonfinite']} rows dropped (contexts with "
          f"non-finite activations); kept out of training and metrics: {ex['special']} special-token rows, "
          f"{ex['outlier']} massive-activation rows (norm > {ex['outlier_factor']:g}x the median)")
    return 0


# CLI flags that map one-to-one onto TrainConfig fields: flag -> (field, type, help)
TRAIN_FLAGS = {
    "--levels": ("levels", _ints, "features per level, strictly increasing (e.g. 8,24,72)"),
    "--l0": ("l0", _floats, "target L0 per level, or one value for all (fractions allowed)"),
    "--steps": ("steps", int, "optimiser steps"),
    "--batch-size": ("batch_size", int, "activations per step"),
    "--lr": ("lr", float, "peak Adam learning rate"),
    "--rho": ("rho", float, "structural constraint weight"),
    "--swap": ("swap", float, "per-step parent/children swap probability"),
    "--update-every": ("update_every", int, "steps between hierarchy updates (capped at 10%% of steps)"),
    "--first-update": ("first_update", float, "fraction of the run trained as independent levels before the first hierarchy update (0: the paper's schedule)"),
    "--similarity": ("similarity", str, "parent similarity: encoder, decoder or coactivation"),
    "--tree": ("tree", str, "tree shape: partial, full, binary or fixed"),
    "--orphan-quantile": ("orphan_quantile", float, "partial tree: bottom fraction of children left without parent"),
    "--hub": ("hub", str, "parent ranking: none (the paper's argmax) or csls (discounts parents close to everything)"),
    "--restart": ("restart", str, "dead-feature restarts: residual (on a badly reconstructed input) or split (split merged busy features)"),
    "--seed": ("seed", int, "random seed (init, batches, swaps)"),
    "--holdout": ("holdout", float, "fraction of the store held out for evaluation"),
    "--checkpoint-every": ("checkpoint_every", int, "steps between checkpoints"),
}


def _count(s: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        v = int(s)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}")
    return v


def _write(path: Path, text: str) -> None:
    """Write a text file atomically (readers never see half of it)."""
    from .files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode())


def _train_config(a) -> TrainConfig:
    """--config (or the defaults) with the TRAIN_FLAGS given on the command line applied."""
    cfg = TrainConfig.load(a.config) if a.config else TrainConfig()
    for flag, (name, _, _) in TRAIN_FLAGS.items():
        v = getattr(a, name)
        if v is not None:
            setattr(cfg, name, v)
    return cfg


def cmd_train(a) -> int:
    """Train an HSAE (or the post-hoc baseline), resuming an unfinished run in --out."""
    from .train import train, train_live

    cfg = _train_config(a)
    if a.baseline:
        cfg.baseline = True
    if a.acts:
        return train(cfg, a.acts, a.out, progress=not a.quiet, device=a.device, dtype=a.dtype, compile=a.compile)
    return train_live(cfg, _stream_source(a, cfg), a.out, progress=not a.quiet, device=a.device, dtype=a.dtype,
                      compile=a.compile)


def _stream_source(a, cfg: TrainConfig):
    """The StreamSource of `hsae train --model`; sets one pass over the tokens as the default --steps."""
    from .data.live import ONE_PASS, StreamSource

    missing = [f"--{f}" for f in ("layer", "corpus", "tokens") if getattr(a, f) is None]
    if missing:
        raise UserError(f"training from --model needs {', '.join(missing)}")
    held = a.heldout_tokens if a.heldout_tokens is not None else max(1, round(cfg.holdout * a.tokens))
    src = StreamSource(model=a.model, layer=a.layer, corpus=a.corpus, tokens=a.tokens, heldout_tokens=held,
                       ctx=a.ctx, seed=a.corpus_seed, buffer_rows=a.buffer_rows)
    if a.steps is None and not a.config:
        # ~4% of the rows are not trained on (special tokens, massive rows): a step past the pass's
        # last row would cost a new chunk of forward passes, so one pass is 95% of the tokens
        cfg.steps = max(1, int(ONE_PASS * (src.tokens - src.heldout_tokens)) // cfg.batch_size)
    return src


def cmd_eval(a) -> int:
    """Evaluate a finished run on held-out activations."""
    from .eval import evaluate_run
    from .eval.report import comparison_table

    ev = evaluate_run(a.run, a.acts, splice=a.splice, absorption=a.absorption, wordnet=a.wordnet, probe=a.probe,
                      splice_contexts=a.splice_contexts,
                      progress=not a.quiet, chance_draws=a.chance_draws, chance_seed=a.chance_seed)
    if a.json:
        _write(Path(a.json), json.dumps(ev, indent=2) + "\n")
    print(comparison_table({Path(a.run).name: ev}, paper=False))
    return 0


def cmd_ablate(a) -> int:
    """Train and evaluate the paper's ablation set on one store, over one or more seeds; print the table."""
    from .eval.ablation import VARIANTS, ablation_table, run_ablation

    bad = [v for v in a.variants if v not in VARIANTS]
    if bad:
        raise UserError(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    if a.seeds is not None and (not a.seeds or any(not 0 <= s < 2**31 for s in a.seeds)):
        raise UserError("--seeds must be comma-separated integers in [0, 2^31)")
    evals = run_ablation(_train_config(a), a.acts, a.out, a.variants, seeds=a.seeds, progress=not a.quiet,
                         splice=a.splice, absorption=a.absorption, wordnet=a.wordnet, probe=a.probe,
                         splice_contexts=a.splice_contexts,
                         chance_draws=a.chance_draws, chance_seed=a.chance_seed)
    table = ablation_table(evals)
    _write(Path(a.out) / "ablation.md", table + "\n")
    print(table)
    return 0


def cmd_report(a) -> int:
    """Write a Markdown report with plots for evaluated runs."""
    from .eval.report import write_report

    print(f"report: {write_report(a.runs, a.out)}")
    return 0


def cmd_compare(a) -> int:
    """Print the comparison table of several eval JSON files beside the paper's rows."""
    from .eval.report import comparison_table, name_of, read_eval

    evals = {}
    for p in a.evals:
        ev = read_eval(p)
        name = name_of(p, ev)
        if name in evals:  # two runs of the same name in different directories: keep both
            name = f"{Path(ev.get('run', p)).parent.name}/{name}"
        evals[name] = ev
    print(comparison_table(evals, paper=not a.no_paper, per_run=a.per_run))
    return 0


def cmd_export(a) -> int:
    """Export a run for other tools (SAELens directories per level, or Neuronpedia JSON)."""
    from .interop.commands import run_export

    return run_export(a)


def cmd_import_saelens(a) -> int:
    """Build a run with a post-hoc forest from existing SAELens JumpReLU SAEs."""
    from .interop.commands import run_import

    return run_import(a)


def cmd_steer(a) -> int:
    """Generate with a feature, its parent and its children added at the layer, side by side."""
    from .interop.commands import run_steer

    return run_steer(a)


def cmd_judge(a) -> int:
    """LLM judge of sampled parent-child pairs (PAPER.md section 5) on one or more runs."""
    from .interop.commands import run_judge

    return run_judge(a)


def cmd_explain(a) -> int:
    """One-line LLM explanation per feature, into RUN/explanations.json."""
    from .interop.commands import run_explain

    return run_explain(a)


def _llm_flags(s) -> None:
    """Flags shared by judge and explain: which chat model answers, and how it is called."""
    s.add_argument("--local", action="store_true", help="answer with a local model through transformers (offline)")
    s.add_argument("--local-model", default="smollm2", help="with --local: 'smollm2' (embedded) or a local HF chat model dir")
    s.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1 (default: $OPENAI_BASE_URL)")
    s.add_argument("--api-model", help="model name to request from the endpoint")
    s.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (endpoint only)")
    s.add_argument("--retries", type=int, default=5, help="retries with exponential backoff on 429/5xx/connection errors")
    s.add_argument("--cache", help="response cache directory (default: ~/.cache/hsae/llm)")
    s.add_argument("--no-cache", action="store_true", help="do not read or write the response cache")
    s.add_argument("--window", type=int, default=0, help="tokens kept each side of the activating one (0: the whole stored window)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_contexts(a) -> int:
    """Scan a run's activations once and write RUN/contexts.safetensors (examples, stats, logit lens)."""
    from .explore.contexts import FILE, build_contexts

    info = build_contexts(a.run, a.acts, k=a.k, all_rows=a.all_rows, before=a.before, after=a.after, seed=a.seed,
                          model=a.model, promote=a.promote, chunk=a.chunk, progress=not a.quiet)
    n = info["rows"][1] - info["rows"][0]
    print(f"wrote {Path(a.run) / FILE}: {n} {info['row_mode']} rows scanned in {info['scan_seconds']:.1f} s")
    return 0


def cmd_browse(a) -> int:
    """Write the run's forest as one self-contained offline HTML page."""
    from .explore.browse import browse

    out = browse(a.run, a.out, maps=a.maps, seed=a.seed, progress=not a.quiet)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); open it in a browser")
    return 0


def _train_flags(p) -> None:
    """The TrainConfig flags shared by `train` and `ablate` (unset: the config's value; see _train_config)."""
    p.add_argument("--config", help="config.json to start from (flags override its fields)")
    for flag, (name, typ, hlp) in TRAIN_FLAGS.items():
        p.add_argument(flag, dest=name, type=typ, default=None, help=hlp)


def _eval_flags(p) -> None:
    """Flags shared by `eval` and `ablate`."""
    p.add_argument("--splice", action="store_true", help="also run the model with each level spliced in: CE loss recovered, KL")
    p.add_argument("--splice-contexts", type=int, default=16, help="held-out contexts for --splice")
    p.add_argument("--absorption", action="store_true", help="also measure first-letter feature absorption (SAEBench)")
    p.add_argument("--wordnet", action="store_true",
                   help="also score edges against WordNet's noun taxonomy, beside chance (eval/wordnet.py)")
    p.add_argument("--probe", action="store_true",
                   help="also score edges by linear probes of the children (Tree SAE's measure), beside chance (eval/probe.py)")
    p.add_argument("--chance-draws", type=_count, default=5, help="random forests with the same family sizes for the chance level (0: none)")
    p.add_argument("--chance-seed", type=int, default=0, help="seed of the chance-level forests")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line (not the whole usage) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every subcommand."""
    p = _Parser(prog="hsae", description="Hierarchical sparse autoencoders: train, evaluate, explore.")
    sub = p.add_subparsers(dest="cmd", required=True)
    _data_commands(sub)
    _train_commands(sub)
    _eval_commands(sub)
    _interop_commands(sub)
    _explore_commands(sub)
    return p


def _data_commands(sub) -> None:
    """Add synth and collect: the commands that make activation stores."""
    s = sub.add_parser("synth", help="generate synthetic activations from a known forest")
    s.add_argument("--out", required=True, help="store directory to write")
    s.add_argument("--preset", help="a named harder forest, every option on: hard (d 64) or hard-wide (d 128); flags override it")
    s.add_argument("--d", type=int, help="activation dimension (default 64)")
    s.add_argument("--branching", type=_ints, help="roots, then children per node, per depth (default 8,3,3)")
    s.add_argument("--tokens", type=int, default=200_000, help="rows to generate")
    s.add_argument("--active", type=float, help="expected number of firing roots (root-to-leaf paths) per row (default 3)")
    s.add_argument("--noise", type=float, help="expected norm of the Gaussian noise per row (default 0.1)")
    for flag, (field, _, help_) in SYNTH_FLAGS.items():
        s.add_argument(flag, dest=field, help=help_)
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_synth)

    k = sub.add_parser("collect", help="collect residual-stream activations from a local Hugging Face model")
    k.add_argument("--model", required=True, help="embedded model (smollm2, gemma3-270m), local model directory or a name "
                                                  "in the local Hugging Face cache")
    k.add_argument("--layer", type=int, required=True, help="block whose output (residual stream) is collected, from 0")
    k.add_argument("--corpus", required=True, help=".txt/.md/.rst/.jsonl file or a directory of them")
    k.add_argument("--tokens", type=int, default=1_000_000, help="activation rows to collect")
    k.add_argument("--out", required=True, help="store directory (rerun to resume an unfinished one)")
    k.add_argument("--ctx", type=int, default=128, help="tokens per context")
    k.add_argument("--batch-size", type=int, default=0,
                   help="contexts per forward pass (0: 16 on the CPU, tuned to the GPU's memory on CUDA)")
    k.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs (auto: cuda if available)")
    k.add_argument("--seed", type=int, default=0, help="document order seed")
    k.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored activation dtype")
    k.add_argument("--shard-rows", type=int, default=65536, help="about this many rows per shard")
    k.add_argument("--repair", action="store_true", help="drop shards from the first corrupt one on, then re-collect them")
    k.add_argument("--quiet", action="store_true", help="no progress bar")
    k.set_defaults(fn=cmd_collect)


def _train_commands(sub) -> None:
    """Add train: an HSAE or the post-hoc baseline, from a store or a live model."""
    from .data.live import BUFFER_ROWS

    t = sub.add_parser("train", help="train an HSAE or the post-hoc baseline")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--acts", help="activation store directory, or one .npy/.safetensors [N, d] file")
    src.add_argument("--model", help="train from this model's forward passes, no store (embedded name, local directory "
                                     "or local Hugging Face cache name); needs --layer, --corpus, --tokens")
    t.add_argument("--layer", type=int, help="with --model: block whose output (residual stream) is trained on, from 0")
    t.add_argument("--corpus", help="with --model: corpus name or .txt/.md/.rst/.jsonl file or directory")
    t.add_argument("--tokens", type=int, help="with --model: corpus tokens used, held-out ones first (default --steps: one pass)")
    t.add_argument("--heldout-tokens", type=int, help="with --model: the first tokens, written to RUN/heldout/ and never "
                                                       "trained on (default: --holdout of --tokens)")
    t.add_argument("--ctx", type=int, default=128, help="with --model: tokens per context")
    t.add_argument("--corpus-seed", type=int, default=0, help="with --model: document order seed (as `collect --seed`)")
    t.add_argument("--buffer-rows", type=int, default=BUFFER_ROWS,
                   help="with --model: rows per chunk of the shuffle buffer (it holds about twice this many)")
    t.add_argument("--out", required=True, help="run directory (rerun with the same --out to resume)")
    t.add_argument("--baseline", action="store_true", help="post-hoc baseline: independent levels, forest assigned at the end")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    # Not part of the run's identity: a run may resume on another device, precision or world size.
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train (auto: cuda if available)")
    t.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="precision of the matrix products (bfloat16: autocast; weights and loss terms stay float32)")
    t.add_argument("--compile", action="store_true", help="compile each level's dense encode (matmul + JumpReLU + L0) with torch.compile")
    _train_flags(t)
    t.set_defaults(fn=cmd_train)


def _eval_commands(sub) -> None:
    """Add eval, ablate, report and compare: metrics of trained runs."""
    e = sub.add_parser("eval", help="metrics of a trained run on held-out activations")
    e.add_argument("run", help="run directory")
    e.add_argument("--acts", help="activation store (default: the one it was trained on)")
    e.add_argument("--json", help="write the metrics JSON here")
    _eval_flags(e)
    e.set_defaults(fn=cmd_eval)

    b = sub.add_parser("ablate", help="train and evaluate the paper's ablation set (resumable) and print its table")
    b.add_argument("--acts", required=True, help="activation store directory")
    b.add_argument("--out", required=True, help="directory of the ablation's runs (rerun to resume; finished runs are skipped)")
    b.add_argument("--variants", type=lambda s: [v for v in s.split(",") if v],
                   default="hsae,no-constraint,no-perturbation,fixed-tree,full-tree,binary-tree,post-hoc",
                   help="comma-separated variants (default: the paper's seven; also matryoshka: SAELens's Matryoshka BatchTopK SAE, its prefixes as levels)")
    _train_flags(b)
    b.add_argument("--seeds", type=_ints, help="train every variant with each of these seeds (runs NAME, NAME-sS); default: --seed")
    _eval_flags(b)
    b.set_defaults(fn=cmd_ablate)

    r = sub.add_parser("report", help="Markdown report with PNG plots of evaluated runs")
    r.add_argument("runs", nargs="+", help="run directories, each with an eval.json")
    r.add_argument("--out", required=True, help="directory for report.md and the plots")
    r.set_defaults(fn=cmd_report)

    c = sub.add_parser("compare", help="table of several eval JSON files beside the paper's numbers")
    c.add_argument("evals", nargs="+", help="eval JSON files")
    c.add_argument("--no-paper", action="store_true", help="leave out the paper's rows")
    c.add_argument("--per-run", action="store_true", help="one row per eval file instead of seed means +- std per configuration")
    c.set_defaults(fn=cmd_compare)


def _interop_commands(sub) -> None:
    """Add export, import-saelens, steer, judge and explain: other tools and LLMs."""
    x = sub.add_parser("export", help="export a run as SAELens SAEs (one per level) or Neuronpedia JSON")
    x.add_argument("run", help="run directory")
    x.add_argument("--format", required=True, choices=["saelens", "neuronpedia"], help="output format")
    x.add_argument("--out", required=True, help="output directory")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    x.set_defaults(fn=cmd_export)

    im = sub.add_parser("import-saelens", help="build a run with a post-hoc forest from SAELens JumpReLU SAEs")
    im.add_argument("dirs", nargs="+", help="SAELens SAE directories (cfg.json + sae_weights.safetensors), one hook point")
    im.add_argument("--acts", required=True, help="activation store of that hook point (normalisation scale, eval rows)")
    im.add_argument("--out", required=True, help="run directory to write")
    im.add_argument("--similarity", default="encoder", choices=["encoder", "decoder"], help="parent similarity")
    im.add_argument("--tree", default="partial", choices=["partial", "full", "binary"], help="tree shape")
    im.add_argument("--orphan-quantile", type=float, default=0.2, help="partial tree: bottom fraction of children left without parent")
    im.set_defaults(fn=cmd_import_saelens)

    st = sub.add_parser("steer", help="generate with a feature / its parent / its children added at the layer")
    st.add_argument("run", help="run directory")
    st.add_argument("--feature", required=True, help="LEVEL:ID of the feature, e.g. 1:42")
    st.add_argument("--strength", type=float, required=True, help="activation added, in the run's (normalised) units")
    st.add_argument("--prompt", required=True, help="text to continue")
    st.add_argument("--model", help="an embedded model (smollm2, gemma3-270m) or a local HF causal LM dir (default: the one the store names)")
    st.add_argument("--layer", type=int, help="block whose output is steered (default: the store's layer)")
    st.add_argument("--max-new-tokens", type=int, default=40, help="tokens to generate per variant")
    st.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every variant")
    st.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)")
    st.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    st.add_argument("--columns", type=int, default=3, help="variants side by side per block")
    st.add_argument("--json", help="also write the continuations here")
    st.add_argument("--quiet", action="store_true", help="no progress bar")
    st.set_defaults(fn=cmd_steer)

    j = sub.add_parser("judge", help="LLM judge of sampled parent-child pairs against as many random pairs: Yes rates, their difference, AUC (--local)")
    j.add_argument("runs", nargs="+", help="run directories with contexts (`hsae contexts`), e.g. HSAE and post-hoc")
    j.add_argument("--pairs", type=int, default=200, help="parent-child pairs sampled per run (and as many random control pairs)")
    j.add_argument("--seed", type=int, default=0, help="pair sampling seed")
    j.add_argument("--json", help="write the summary and every raw answer here")
    _llm_flags(j)
    j.set_defaults(fn=cmd_judge)

    ex = sub.add_parser("explain", help="one-line LLM explanation per feature into RUN/explanations.json")
    ex.add_argument("run", help="run directory with contexts (`hsae contexts`)")
    ex.add_argument("--levels", type=_ints, help="levels to explain (default: all)")
    ex.add_argument("--max-per-level", type=int, default=0, help="explain at most this many features per level (0: all)")
    ex.add_argument("--out", help="explanations file (default: RUN/explanations.json; existing entries are kept)")
    _llm_flags(ex)
    ex.set_defaults(fn=cmd_explain)


def _explore_commands(sub) -> None:
    """Add contexts and browse: what a run's features fire on, and the forest to browse."""
    x = sub.add_parser("contexts", help="per-feature contexts, statistics and promoted tokens of a run")
    x.add_argument("run", help="run directory (writes RUN/contexts.safetensors)")
    x.add_argument("--acts", help="activation store (default: the one it was trained on); needs per-row tokens")
    x.add_argument("--k", type=int, default=20, help="top and sampled examples kept per feature")
    x.add_argument("--all-rows", action="store_true", help="scan every row of the store, not only the held-out tail")
    x.add_argument("--before", type=int, default=12, help="tokens shown before the activating one")
    x.add_argument("--after", type=int, default=4, help="tokens shown after the activating one")
    x.add_argument("--seed", type=int, default=0, help="seed of the activation-weighted sampling")
    x.add_argument("--model", help="language model for tokens and logit lens (default: the store's source model)")
    x.add_argument("--promote", type=int, default=10, help="promoted tokens kept per feature")
    x.add_argument("--chunk", type=int, default=2048, help="rows encoded at a time (memory ~ chunk x features)")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    x.set_defaults(fn=cmd_contexts)

    w = sub.add_parser("browse", help="offline HTML browser of a run's forest (needs `hsae contexts` first)")
    w.add_argument("run", help="run directory with contexts.safetensors")
    w.add_argument("--out", required=True, help="HTML file to write")
    w.add_argument("--maps", default="auto", choices=["auto", "umap", "pca"], help="2-D maps: UMAP, PCA, or auto (PCA below 200 points)")
    w.add_argument("--seed", type=int, default=0, help="UMAP seed")
    w.add_argument("--quiet", action="store_true", help="no progress bar")
    w.set_defaults(fn=cmd_browse)


# The directory each writing command holds the one-writer lock of (files.py) ...
WRITES = {"synth": "out", "collect": "out", "train": "out", "ablate": "out", "export": "out",
          "import-saelens": "out", "contexts": "run", "explain": "run"}
# ... and the inputs a command refuses while another process is still writing them.
READS = {"train": ["acts"], "eval": ["run", "acts"], "ablate": ["acts"], "report": ["runs"], "export": ["run"],
         "import-saelens": ["acts"], "steer": ["run"], "judge": ["runs"], "contexts": ["acts"], "browse": ["run"]}


def _run_guarded(a) -> int:
    """Run a parsed subcommand holding its output's lock, after checking no input is being written."""
    from .files import check_not_writing, output_lock

    for key in READS.get(a.cmd, []):
        v = getattr(a, key, None)
        for p in [v] if isinstance(v, str) else v or []:
            check_not_writing(p)
    out = getattr(a, WRITES[a.cmd]) if a.cmd in WRITES else None
    with output_lock(out, a.cmd) if out else contextlib.nullcontext():
        return a.fn(a)


class _Stopped(BaseException):
    """SIGTERM, raised like Ctrl-C so every command unwinds the same way (temporary files removed)."""


def _on_term(signum, _frame):
    raise _Stopped(signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; bad input, a full disk or an interrupt exits with one line, no traceback."""
    from .files import write_failed

    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    old = signal.signal(signal.SIGTERM, _on_term) if main_thread else None
    try:
        return _run_guarded(args)
    except UserError as e:
        print(f"hsae: error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, _Stopped) as e:
        print("hsae: interrupted; finished parts are kept, rerun the same command to continue", file=sys.stderr)
        return 128 + (e.args[0] if isinstance(e, _Stopped) else signal.SIGINT)
    except BrokenPipeError:  # output piped into a reader that stopped (`| head`): not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:  # a write that failed where no helper could name the file (files.py)
        err = write_failed(getattr(e, "filename", None) or "an output file", e)
        if err is None:
            raise
        print(f"hsae: error: {err}", file=sys.stderr)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":
    sys.exit(main())
