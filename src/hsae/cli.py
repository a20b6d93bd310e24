"""`hsae` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
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


def cmd_synth(a) -> int:
    """Write a synthetic store with a known forest."""
    import numpy as np
    from tqdm import tqdm

    from .data.synth import write_synth

    if a.d < 1 or a.tokens < 2 or not a.branching or min(a.branching) < 1:
        raise UserError("--d, --tokens and every --branching value must be positive")
    with tqdm(total=a.tokens, unit="row", desc="synth", disable=a.quiet) as bar:
        m = write_synth(a.out, a.d, a.branching, a.tokens, a.seed, a.active, a.noise, progress=bar.update)
    sizes = [int(v) for v in np.cumprod(a.branching)]
    print(f"wrote {m['rows']} rows (d={m['d']}) to {a.out}; truth level sizes {','.join(map(str, sizes))}")
    return 0


def cmd_collect(a) -> int:
    """Collect one layer's activations from a local causal LM into a store."""
    from .data.collect import collect

    m = collect(a.model, a.layer, a.corpus, a.tokens, a.out, ctx=a.ctx, batch_size=a.batch_size, seed=a.seed,
                dtype=a.dtype, shard_rows=a.shard_rows, progress=not a.quiet, repair=a.repair)
    print(f"wrote {m['rows']} rows (d={m['d']}) to {a.out}; {m['dropped_nonfinite']} non-finite rows dropped")
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
    "--similarity": ("similarity", str, "parent similarity: encoder, decoder or coactivation"),
    "--tree": ("tree", str, "tree shape: partial, full, binary or fixed"),
    "--orphan-quantile": ("orphan_quantile", float, "partial tree: bottom fraction of children left without parent"),
    "--seed": ("seed", int, "random seed (init, batches, swaps)"),
    "--holdout": ("holdout", float, "fraction of the store held out for evaluation"),
    "--checkpoint-every": ("checkpoint_every", int, "steps between checkpoints"),
}


def cmd_train(a) -> int:
    """Train an HSAE (or the post-hoc baseline), resuming an unfinished run in --out."""
    from .train import train

    cfg = TrainConfig.load(a.config) if a.config else TrainConfig()
    for flag, (name, _, _) in TRAIN_FLAGS.items():
        v = getattr(a, name)
        if v is not None:
            setattr(cfg, name, v)
    if a.baseline:
        cfg.baseline = True
    return train(cfg, a.acts, a.out, progress=not a.quiet)


def cmd_eval(a) -> int:
    """Evaluate a finished run on held-out activations."""
    from .eval import evaluate_run

    ev = evaluate_run(a.run, a.acts)
    text = json.dumps(ev, indent=2)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(text + "\n")
    from .eval.report import comparison_table

    print(comparison_table({Path(a.run).name: ev}, paper=False))
    return 0


def cmd_compare(a) -> int:
    """Print the comparison table of several eval JSON files beside the paper's rows."""
    from .eval.report import comparison_table, name_of

    evals = {}
    for p in a.evals:
        try:
            ev = json.loads(Path(p).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read eval file {p}: {e}") from None
        evals[name_of(p, ev)] = ev
    print(comparison_table(evals, paper=not a.no_paper))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every subcommand."""
    p = argparse.ArgumentParser(prog="hsae", description="Hierarchical sparse autoencoders: train, evaluate, explore.")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synth", help="generate synthetic activations from a known forest")
    s.add_argument("--out", required=True, help="store directory to write")
    s.add_argument("--d", type=int, default=64, help="activation dimension")
    s.add_argument("--branching", type=_ints, default=[8, 3, 3], help="roots, then children per node, per depth")
    s.add_argument("--tokens", type=int, default=200_000, help="rows to generate")
    s.add_argument("--active", type=float, default=3.0, help="expected number of firing root-to-leaf paths per row")
    s.add_argument("--noise", type=float, default=0.1, help="expected norm of the Gaussian noise per row")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_synth)

    k = sub.add_parser("collect", help="collect residual-stream activations from a local Hugging Face model")
    k.add_argument("--model", required=True, help="local model directory or a name in the local Hugging Face cache")
    k.add_argument("--layer", type=int, required=True, help="block whose output (residual stream) is collected, from 0")
    k.add_argument("--corpus", required=True, help=".txt/.md/.rst/.jsonl file or a directory of them")
    k.add_argument("--tokens", type=int, default=1_000_000, help="activation rows to collect")
    k.add_argument("--out", required=True, help="store directory (rerun to resume an unfinished one)")
    k.add_argument("--ctx", type=int, default=128, help="tokens per context")
    k.add_argument("--batch-size", type=int, default=16, help="contexts per forward pass")
    k.add_argument("--seed", type=int, default=0, help="document order seed")
    k.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored activation dtype")
    k.add_argument("--shard-rows", type=int, default=65536, help="about this many rows per shard")
    k.add_argument("--repair", action="store_true", help="drop shards from the first corrupt one on, then re-collect them")
    k.add_argument("--quiet", action="store_true", help="no progress bar")
    k.set_defaults(fn=cmd_collect)

    t = sub.add_parser("train", help="train an HSAE or the post-hoc baseline")
    t.add_argument("--acts", required=True, help="activation store directory, or one .npy/.safetensors [N, d] file")
    t.add_argument("--out", required=True, help="run directory (rerun with the same --out to resume)")
    t.add_argument("--config", help="config.json to start from (flags override its fields)")
    t.add_argument("--baseline", action="store_true", help="post-hoc baseline: independent levels, forest assigned at the end")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    for flag, (name, typ, hlp) in TRAIN_FLAGS.items():
        t.add_argument(flag, dest=name, type=typ, default=None, help=hlp)
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="metrics of a trained run on held-out activations")
    e.add_argument("run", help="run directory")
    e.add_argument("--acts", help="activation store (default: the one it was trained on)")
    e.add_argument("--json", help="write the metrics JSON here")
    e.set_defaults(fn=cmd_eval)

    c = sub.add_parser("compare", help="table of several eval JSON files beside the paper's numbers")
    c.add_argument("evals", nargs="+", help="eval JSON files")
    c.add_argument("--no-paper", action="store_true", help="leave out the paper's rows")
    c.set_defaults(fn=cmd_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; bad input exits 2 with a one-line error."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UserError as e:
        print(f"hsae: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
