"""Collection throughput: `hsae collect` vs a bare truncated forward pass over the same batches.

Prints JSON: tokens/s of each (same model, contexts and batch size, one process) and their
ratio (goal >= 0.9). The model is loaded once, outside both timings.

  python bench/collect.py                         # embedded SmolLM2, layer 15, corpus mix
  python bench/collect.py --model DIR --corpus PATH --layer 6
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hsae.data.collect import collect_with, contexts_of
from hsae.data.models import load_model, residual
from hsae.device import resolve_device


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2", help="embedded name or local model directory")
    p.add_argument("--corpus", default="mix", help="corpus name or path")
    p.add_argument("--layer", type=int, default=15, help="block to collect")
    p.add_argument("--ctx", type=int, default=128, help="tokens per context")
    p.add_argument("--batch-size", type=int, default=16, help="contexts per forward pass")
    p.add_argument("--contexts", type=int, default=256, help="contexts to run")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    a = p.parse_args()
    lm, tok = load_model(a.model, resolve_device(a.device))
    ctxs = list(itertools.islice(contexts_of(tok, a.corpus, a.ctx, 0), a.contexts))
    tokens = len(ctxs) * (a.ctx - 1)
    residual(lm, a.layer, torch.from_numpy(np.stack([c[0] for c in ctxs[:2]])))  # warm-up

    t0 = time.perf_counter()
    for b in range(0, len(ctxs), a.batch_size):
        residual(lm, a.layer, torch.from_numpy(np.stack([c[0] for c in ctxs[b:b + a.batch_size]])))
    if lm.device.type == "cuda":
        torch.cuda.synchronize()  # the GPU may still be running the last batch
    bare = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        collect_with(lm, tok, a.model, a.layer, a.corpus, tokens, Path(tmp) / "s", a.ctx, a.batch_size,
                     progress=False)
        full = time.perf_counter() - t0
    print(json.dumps({
        "model": a.model, "device": str(lm.device), "layer": a.layer, "ctx": a.ctx, "batch_size": a.batch_size, "tokens": tokens,
        "threads": torch.get_num_threads(), "bare_forward_tokens_per_s": tokens / bare,
        "collect_tokens_per_s": tokens / full, "ratio": bare / full,
    }, indent=2))


if __name__ == "__main__":
    main()
