"""Resampling of dead features (Bricken et al. 2023, adapted to JumpReLU levels).

When a firing window closes, each feature of a level found dead is restarted on the
direction of an input drawn with probability proportional to its squared reconstruction
error (so badly reconstructed inputs are likely, outliers not certain) among the inputs on
which a busy feature fires (one firing above BUSY times the level's mean rate; all inputs if
there is none): on data with a known forest the features that survive while others die are
mostly mergers of two true features firing at twice the usual rate, and what such a feature
fails to reconstruct is the direction that splits it. Its decoder row
becomes the unit residual x - x_hat of that input, its encoder column the same direction at the level's mean
live encoder norm, its bias 0 and its threshold the batch quantile of its new pre-activation
that lets it fire on the level's mean rate (target L0 / n: a restart neither starts dead nor
fires on everything). Adam's
moments of those entries are reset (the first moment to 0, the second to the mean of the live
entries, so the first step after the restart has an ordinary size). Ghost gradients alone
leave a few features of every level dead for good (measured in the forest-quality issue);
restarting them on what the level fails to reconstruct gives them a reason to fire.
Restarts stop after RESAMPLE_UNTIL of the run, so every feature has time to settle.
"""

from __future__ import annotations

import torch

BUSY = 1.5  # a feature firing above this multiple of its level's mean rate is busy
RESAMPLE_UNTIL = 0.5  # fraction of the run after which dead features are no longer restarted


@torch.no_grad()
def resample_level(level, dead: torch.Tensor, x: torch.Tensor, opt: torch.optim.Optimizer, rate: float,
                   seed: int = 0) -> torch.Tensor:
    """Restart the dead features of one level on this batch's worst residuals; their indices.

    rate: the firing rate a restarted feature starts at (its level's target L0 / n). Under
    data parallelism every rank passes the same (global) batch, so all take the same decision."""
    idx = dead.nonzero().squeeze(1)
    live = ~dead
    if idx.numel() == 0 or not bool(live.any()):
        return idx[:0]
    a = level.encode(x)
    x_hat = level.decode(a)
    weight = (x - x_hat).square().sum(1).float().clamp_min(0) + 1e-12
    busy = (a > 0).float().mean(0) > BUSY * rate  # features firing far above the level's mean rate
    on = (a[:, busy] > 0).any(1)
    if bool(on.any()):  # only the rows where a busy feature fires
        weight = weight * on
    idx = idx[:int((weight > 1e-12).sum())]
    if idx.numel() == 0:  # nothing left to reconstruct
        return idx
    g = torch.Generator(device=x.device).manual_seed(seed)
    rows = torch.multinomial(weight, idx.numel(), replacement=False, generator=g)
    u = torch.nn.functional.normalize(x[rows] - x_hat[rows], dim=1, eps=1e-12)
    level.W_dec[idx] = u
    level.W_enc[:, idx] = u.t() * level.W_enc[:, live].norm(dim=0).mean()
    level.b_enc[idx] = 0.0
    h = x @ level.W_enc[:, idx]
    level.log_threshold[idx] = torch.quantile(h, 1 - rate, dim=0).clamp_min(1e-3).log()
    _reset_moments(opt, level, idx, live)
    return idx


def _reset_moments(opt: torch.optim.Optimizer, level, idx: torch.Tensor, live: torch.Tensor) -> None:
    """Adam state of the restarted features: first moment 0, second the live entries' mean."""
    for p, dim in ((level.W_dec, 0), (level.W_enc, 1), (level.b_enc, 0), (level.log_threshold, 0)):
        st = opt.state.get(p)
        if not st:
            continue
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m.index_fill_(dim, idx, 0.0)
        mean_v = v.index_select(dim, live.nonzero().squeeze(1)).mean(dim, keepdim=True)
        v.index_copy_(dim, idx, mean_v.expand_as(v.index_select(dim, idx)).contiguous())
