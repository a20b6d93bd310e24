"""Where the HSAE step's extra time goes: the trainer's step with each coupling switched off in turn.

  python bench/couplings.py [--only demo] [--rounds 40]

One process, one HSAE trainer (forest assigned, thresholds at the target L0: bench/step.py's
setup) and one of independent levels; per round each variant runs one step, in turn, so they
share the machine's drift. Variants: full (constraint + swap), swap only (rho = 0), constraint
only (no swap), neither (an HSAE trainer with no coupling: what the forest itself costs).
Prints JSON: per variant the median seconds per step and its ratio to the independent levels.
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import step as bench_step  # noqa: E402


def main() -> None:
    """Print the variants' medians and ratios."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="demo", choices=list(bench_step.CONFIGS), help="configuration (bench/step.py)")
    p.add_argument("--rounds", type=int, default=40, help="timed rounds (two more are warm-up)")
    a = p.parse_args()
    c = bench_step.CONFIGS[a.only]
    with tempfile.TemporaryDirectory() as tmp:
        trs = {}
        for mode in ("hsae", "independent"):
            (Path(tmp) / mode).mkdir()
            trs[mode] = bench_step._trainer(Path(tmp) / mode, c, mode)[0]
        h = trs["hsae"]
        rho, swap = h.cfg.rho, h.cfg.swap
        variants = {"independent": (trs["independent"], None), "full": (h, (rho, swap)),
                    "swap_only": (h, (0.0, swap)), "constraint_only": (h, (rho, 0.0)), "neither": (h, (0.0, 0.0))}
        times = {k: [] for k in variants}
        for r in range(a.rounds + 2):
            for k, (tr, couplings) in variants.items():
                if couplings:
                    tr.cfg.rho, tr.cfg.swap = couplings
                t = bench_step.time.perf_counter()
                tr.train_step()
                if r >= 2:
                    times[k].append(bench_step.time.perf_counter() - t)
        for tr in trs.values():
            tr.batches.close()
    base = statistics.median(times["independent"])
    print(json.dumps({"config": a.only, **c, "rounds": a.rounds,
                      "variants": {k: {"seconds_per_step": statistics.median(v),
                                       "over_independent": statistics.median(v) / base} for k, v in times.items()}},
                     indent=1))


if __name__ == "__main__":
    main()
