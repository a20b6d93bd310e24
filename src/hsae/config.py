"""Typed training configuration that round-trips to JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .model.forest import HUBS, SIMILARITIES, TREES


RESTARTS = ("residual", "split")  # train/resample.py: resample_level, split_level
# Fields added after runs were written, with the value that reproduces those runs.
LATER = {"restart": "residual", "first_update": 0.0, "ghost": True}


class UserError(Exception):
    """Bad input from the user: the CLI prints it on one line and exits with status 2."""


@dataclass
class TrainConfig:
    """Everything that determines a training run (with the data, it fixes the result)."""

    levels: list[int] = field(default_factory=lambda: [8, 24, 72])  # features per level, increasing
    l0: list[float] = field(default_factory=lambda: [3.0])  # target L0 per level (one value: all levels)
    steps: int = 3000  # optimiser steps
    batch_size: int = 1024  # activations per step
    lr: float = 5e-3  # Adam peak learning rate
    warmup: float = 0.1  # fraction of steps of linear LR warm-up, then cosine decay to 0
    rho: float = 0.01  # structural constraint weight
    swap: float = 0.05  # per-step probability that a parent is swapped for its children
    update_every: int = 5000  # steps between hierarchy updates (capped at 10% of steps)
    first_update: float = 0.5  # fraction of the run trained as independent levels before the first
    # hierarchy update, so the forest links mature features (0: after one update period, the paper's)
    similarity: str = "encoder"  # encoder | decoder | coactivation
    tree: str = "partial"  # partial | full | binary | fixed
    orphan_quantile: float = 0.2  # partial tree: bottom fraction of children left without parent
    hub: str = "none"  # hub-resistant ranking of parent candidates: none (the paper's argmax) | csls
    baseline: bool = False  # post-hoc baseline: independent levels, forest assigned once at the end
    seed: int = 0
    bandwidth: float = 0.2  # JumpReLU pseudo-derivative (rectangle kernel) width, in normalised units
    threshold_init: float = 0.5  # initial JumpReLU threshold (inputs have E||x|| = sqrt(d))
    lambda_init: float = 0.1  # initial sparsity weight per level
    lambda_gain: float = 0.01  # controller: max change of log lambda per step
    l0_ema: float = 0.9  # controller: momentum of the observed-L0 moving average
    l0_rate: float = 0.001  # controller: desired dL0/step = -rate * (L0 - target), rate >= 20/steps
    dead_steps: int = 1000  # window (capped at 10% of steps) over which firing is counted
    dead_fraction: float = 0.01  # dead: fired < this fraction of its level's mean rate (L0/n) in a window;
    # dead features stay out of the forest
    ghost: bool = True  # ghost grads on dead features (off: 5x fewer dead on SmolLM2, more on small synthetic
    # forests; docs/forest-quality.md, "Ghost grads bury")
    resample: bool = True  # restart dead features during the first half of the run (train/resample.py)
    restart: str = "residual"  # how: residual (on one badly reconstructed input) | split (split merged busy features)
    holdout: float = 0.05  # fraction of the store (its tail) kept for evaluation
    checkpoint_every: int = 500  # steps between checkpoints (also written on SIGINT/SIGTERM)
    log_every: int = 10  # steps between training-log lines
    d: int = 0  # input dimension (0: taken from the data; a mismatch is an error)
    acts: str = ""  # the activation store trained on (set by `hsae train`)

    @property
    def l0_targets(self) -> list[float]:
        """Target L0 of every level (a single --l0 value applies to all)."""
        return [float(self.l0[0])] * len(self.levels) if len(self.l0) == 1 else [float(v) for v in self.l0]

    def validate(self) -> "TrainConfig":
        """Raise UserError with a one-line reason if the configuration cannot train."""
        lv = self.levels
        if not lv or any(n < 1 for n in lv):
            raise UserError(f"levels must be positive integers, got {lv}")
        if any(b <= a for a, b in zip(lv, lv[1:])):
            raise UserError(f"levels must be strictly increasing, got {','.join(map(str, lv))}")
        if len(self.l0) not in (1, len(lv)):
            raise UserError(f"--l0 needs 1 or {len(lv)} values, got {len(self.l0)}")
        for n, t in zip(lv, self.l0_targets):
            if not (0 < t < n) or not math.isfinite(t):
                raise UserError(f"target L0 {t:g} must be > 0 and below its level size {n}")
        if self.similarity not in SIMILARITIES:
            raise UserError(f"--similarity must be one of {', '.join(SIMILARITIES)}")
        if self.tree not in TREES:
            raise UserError(f"--tree must be one of {', '.join(TREES)}")
        if self.hub not in HUBS:
            raise UserError(f"--hub must be one of {', '.join(HUBS)}")
        if self.restart not in RESTARTS:
            raise UserError(f"--restart must be one of {', '.join(RESTARTS)}")
        checks = [
            (self.steps > 0, "--steps must be positive"),
            (0 <= self.seed < 2**31, "--seed must be in [0, 2^31)"),
            (self.batch_size > 0, "--batch-size must be positive"),
            (self.lr > 0, "--lr must be positive"),
            (0 <= self.warmup < 1, "--warmup must be in [0, 1)"),
            (self.rho >= 0, "--rho must be >= 0"),
            (0 <= self.swap <= 1, "--swap must be in [0, 1]"),
            (self.update_every > 0, "--update-every must be positive"),
            (0 <= self.first_update < 1, "--first-update must be in [0, 1)"),
            (0 <= self.orphan_quantile < 1, "--orphan-quantile must be in [0, 1)"),
            (0 < self.holdout < 1, "--holdout must be in (0, 1)"),
            (self.bandwidth > 0 and self.threshold_init > 0 and self.lambda_init > 0, "bandwidth, threshold_init and lambda_init must be positive"),
            (self.checkpoint_every > 0 and self.log_every > 0, "--checkpoint-every and --log-every must be positive"),
            (self.dead_steps > 0 and self.dead_fraction >= 0, "dead_steps must be positive, dead_fraction >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)
        return self

    @property
    def update_period(self) -> int:
        """Steps between hierarchy updates: update_every, capped at 10% of the run."""
        return max(1, min(self.update_every, self.steps // 10))

    @property
    def first_update_step(self) -> int:
        """Step count after which the first hierarchy update runs: at first_update of the run, at
        least one update period in, and at most one from the end (so there is always one)."""
        return max(self.update_period, min(round(self.first_update * self.steps), self.steps - self.update_period))

    @property
    def dead_period(self) -> int:
        """Silent steps after which a feature counts as dead."""
        return max(1, min(self.dead_steps, self.steps // 10))

    def to_json(self) -> str:
        """JSON text of every field."""
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict, complete: bool = False) -> "TrainConfig":
        """Build from a dict, rejecting unknown keys, values of the wrong type and (complete=True) missing keys."""
        if not isinstance(d, dict):
            raise UserError("a config must be a JSON object")
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(d) - set(fields)
        if unknown:
            raise UserError(f"unknown config keys: {', '.join(sorted(unknown))}")
        if complete:  # a run written before a field existed ran as its value in LATER says
            d = {**{k: v for k, v in LATER.items() if k not in d}, **d}
        missing = set(fields) - set(d) if complete else set()
        if missing:
            raise UserError(f"missing config keys: {', '.join(sorted(missing))} (written by another hsae?)")
        for k, v in d.items():
            if not _TYPE_CHECKS[fields[k]](v):
                raise UserError(f"config key {k!r} should be {fields[k]}, got {json.dumps(v)[:60]}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path, complete: bool = False) -> "TrainConfig":
        """Read a config.json (complete=True: a run's own, which must name every field)."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()), complete)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read config {path}: {e}") from None
        except UserError as e:
            raise UserError(f"{path}: {e}") from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return _is_int(v) or isinstance(v, float)


# a field's annotation -> the JSON values it accepts
_TYPE_CHECKS = {"int": _is_int, "float": _is_num, "str": lambda v: isinstance(v, str),
                "bool": lambda v: isinstance(v, bool),
                "list[int]": lambda v: isinstance(v, list) and all(map(_is_int, v)),
                "list[float]": lambda v: isinstance(v, list) and all(map(_is_num, v))}
