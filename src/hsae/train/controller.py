"""Adaptive sparsity weight per level (PAPER.md section 4 and appendix A.2).

The paper's intent: compare the observed L0 trajectory with a desired one that approaches
the target, raise lambda while L0 stays denser than desired and lower it when L0 falls
faster. Our law (the paper gives none), per level, with u = log lambda:

  desired   r_{t+1} = r_t + rate (target - r_t),  r_0 = the first batch's L0,
            rate = max(l0_rate, 20 / steps), so r reaches the target by ~25% of any run
  observed  m_t = EMA of the batch L0 with momentum beta (a short one: a few tens of steps)
  error     e_t = log(m_t / r_t)          (dimensionless; +0.1 means 10% too dense)
  update    u += clip(kp (e_t - e_{t-1}) + ki e_t, -gain, gain)

This is a PI controller in velocity form: ki e_t is the integral action that removes any
steady offset, kp (e_t - e_{t-1}) the proportional action that damps it. The plant (Adam
moving thresholds by ~lr per step) integrates lambda into L0, so an integral-only law (what
the paper's literal formula reduces to with beta = 0.999, eta = 0.001) is a double integrator
and oscillates; the proportional term turns it into a damped loop. The reference trajectory
keeps the early, dense phase from being pushed to the target in a few steps (which kills
features).
"""

from __future__ import annotations

import math

KP, KI = 2.0, 0.02  # proportional and integral gains on the log-error (see module docstring)


class L0Controller:
    """Per-level lambda that steers each level's L0 toward its target."""

    def __init__(self, targets: list[float], lambda_init: float, gain: float, beta: float = 0.9,
                 rate: float = 0.001, steps: int = 0):
        self.targets, self.gain, self.beta = list(targets), gain, beta
        self.rate = min(1.0, max(rate, 20.0 / steps) if steps else rate)  # r never overshoots the target
        self.lambdas = [lambda_init] * len(targets)
        self.ema: list[float] | None = None  # observed L0 (m_t)
        self.ref: list[float] | None = None  # desired L0 (r_t)
        self.err: list[float] | None = None  # last error (e_{t-1})

    def update(self, l0: list[float]) -> None:
        """Fold in one step's batch L0 per level and adjust lambdas."""
        if self.ema is None:
            self.ema, self.ref = list(l0), [max(x, t) for x, t in zip(l0, self.targets)]
            self.err = [0.0] * len(l0)
            return
        for i, (x, t) in enumerate(zip(l0, self.targets)):
            self.ema[i] = self.beta * self.ema[i] + (1 - self.beta) * x
            self.ref[i] += self.rate * (t - self.ref[i])
            e = math.log(max(self.ema[i], 1e-3) / self.ref[i])
            du = KP * (e - self.err[i]) + KI * e
            self.lambdas[i] *= math.exp(max(-self.gain, min(self.gain, du)))
            self.err[i] = e

    def state_dict(self) -> dict:
        """Plain-JSON state for checkpoints."""
        return {"lambdas": self.lambdas, "ema": self.ema, "ref": self.ref, "err": self.err}

    def load_state_dict(self, s: dict) -> None:
        """Restore from state_dict()."""
        self.lambdas, self.ema, self.ref, self.err = list(s["lambdas"]), s["ema"], s["ref"], s["err"]
