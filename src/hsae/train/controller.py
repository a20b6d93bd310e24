"""Adaptive sparsity weight per level (PAPER.md section 4 and appendix A.2).

The L0 of each level is tracked by an EMA (momentum beta). The desired trajectory is
dL0/step = -rate * (L0 - target). Each step the observed change of the EMA is compared
with the desired one: L0 falling faster than desired (or rising when it should not) lowers
lambda, staying denser than desired raises it. The update is multiplicative (our choice):
  lambda *= exp(gain * clip(err, -1, 1)),  err = (observed - desired) / ((1 - beta) * target)
The normalisation makes err dimensionless (it is (L0_batch - target) / target when
rate = 1 - beta), so `gain` bounds the relative change of lambda per step.
"""

from __future__ import annotations

import math


class L0Controller:
    """Per-level lambda that steers each level's L0 toward its target."""

    def __init__(self, targets: list[float], lambda_init: float, gain: float, beta: float = 0.999, rate: float = 0.001):
        self.targets, self.gain, self.beta, self.rate = list(targets), gain, beta, rate
        self.lambdas = [lambda_init] * len(targets)
        self.ema: list[float] | None = None

    def update(self, l0: list[float]) -> None:
        """Fold in one step's batch L0 per level and adjust lambdas."""
        if self.ema is None:
            self.ema = list(l0)
            return
        for i, (x, t) in enumerate(zip(l0, self.targets)):
            prev = self.ema[i]
            self.ema[i] = self.beta * prev + (1 - self.beta) * x
            observed, desired = self.ema[i] - prev, -self.rate * (prev - t)
            err = (observed - desired) / ((1 - self.beta) * t)
            self.lambdas[i] *= math.exp(self.gain * max(-1.0, min(1.0, err)))

    def state_dict(self) -> dict:
        """Plain-JSON state for checkpoints."""
        return {"lambdas": self.lambdas, "ema": self.ema}

    def load_state_dict(self, s: dict) -> None:
        """Restore from state_dict()."""
        self.lambdas, self.ema = list(s["lambdas"]), s["ema"]
