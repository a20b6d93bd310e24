"""Learning-rate schedule: linear warm-up, then cosine decay to zero (PAPER.md section 4)."""

import math


def lr_at(step: int, steps: int, peak: float, warmup: float) -> float:
    """Learning rate for 0-based `step` of `steps`."""
    w = int(warmup * steps)
    if step < w:
        return peak * (step + 1) / w
    t = (step - w) / max(1, steps - w)
    return peak * 0.5 * (1 + math.cos(math.pi * t))
