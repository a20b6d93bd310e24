"""Resampling of dead features (Bricken et al. 2023, adapted to JumpReLU levels).

When a firing window closes, each feature of a level found dead is restarted on the
direction of an input drawn with probability proportional to its squared reconstruction
error (so badly reconstructed inputs are likely, outliers not certain) among the inputs on
which a busy feature fires (one firing above BUSY times the level's mean rate; all inputs if
there is none): on data with a known forest the features that survive while others die are
mostly mergers of two true features firing at twice the usual rate, and what such a feature
fails to reconstruct is the direction that splits it. Its decoder row
becomes the unit residual x - x_hat of that input, its encoder column the same direction, its
bias 0 and its threshold the batch quantile of its new pre-activation that lets it fire on the
level's mean rate (target L0 / n: a restart neither starts dead nor fires on everything). The
encoder and threshold are then scaled together (the same rows fire) so that on the rows where it
fires its activation is, on average, the residual along its direction (between CALIBRATE_MIN and
1 times the level's mean live encoder norm). At that full size, restarts on SmolLM2 layer 15
fired on inputs the other features already reconstruct, added error there and died again within
a window, every window (docs/forest-quality.md, "Restarts that stay alive"). Adam's
moments of those entries are reset (the first moment to 0, the second to the mean of the live
entries, so the first step after the restart has an ordinary size). Ghost gradients alone
leave a few features of every level dead for good (measured in the forest-quality issue);
restarting them on what the level fails to reconstruct gives them a reason to fire.
Restarts stop after RESAMPLE_UNTIL of the run, so every feature has time to settle.

`split_level` (TrainConfig.restart = "split") goes one step further for a merger: the busiest
features' residuals on their own rows are +-(A - B)/2 when they merge A and B, so the first
principal direction u of those residuals, scaled by s = mean |r.u| / a, splits the merger
exactly: d +- s u point along A and B. A dead feature takes d + s u, the busy one d - s u
(encoders along the new decoder rows, at the busy encoder's norm; the same bias and
threshold). Only residuals whose first direction holds at least SPLIT_SHARE of their energy are
split (a frequent true feature's residual is the other features' diffuse error); the other dead
features get the residual restart above.
"""

from __future__ import annotations

import torch

BUSY = 1.5  # a feature firing above this multiple of its level's mean rate is busy
RESAMPLE_UNTIL = 0.5  # fraction of the run after which dead features are no longer restarted
SPLIT_SHARE = 0.2  # least share of a busy feature's residual energy along one direction that is split
CALIBRATE_MIN = 0.2  # least scale of a restarted encoder and threshold: smaller, its firings cost more L0
# penalty than they save error, and it dies again (on a small synthetic forest, 1 seed of 8 at 0.05)


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
    resid = x - level.decode(a)
    weight = resid.square().sum(1).float().clamp_min(0) + 1e-12
    busy = (a > 0).float().mean(0) > BUSY * rate  # features firing far above the level's mean rate
    on = (a[:, busy] > 0).any(1)
    if bool(on.any()):  # only the rows where a busy feature fires
        weight = weight * on
    idx = idx[:int((weight > 1e-12).sum())]
    if idx.numel() == 0:  # nothing left to reconstruct
        return idx
    g = torch.Generator(device=x.device).manual_seed(seed)
    rows = torch.multinomial(weight, idx.numel(), replacement=False, generator=g)
    u = torch.nn.functional.normalize(resid[rows], dim=1, eps=1e-12)
    level.W_dec[idx] = u
    level.W_enc[:, idx] = u.t() * level.W_enc[:, live].norm(dim=0).mean()
    level.b_enc[idx] = 0.0
    h = x @ level.W_enc[:, idx]
    t = torch.quantile(h, 1 - rate, dim=0).clamp_min(1e-3)
    # The encoder sees x, not the residual: at full size a restart adds h * u on rows whose x_hat
    # already holds most of x.u, so firing costs error and the feature is switched off again (on
    # SmolLM2 nearly every restart died within a window). Scale it to the residual it is for.
    fired = h > t
    s = ((resid @ u.t()) * fired).sum(0) / (h * fired).sum(0).clamp_min(1e-12)
    s = s.clamp(CALIBRATE_MIN, 1.0)
    level.W_enc[:, idx] *= s
    level.log_threshold[idx] = (t * s).log()
    _reset_moments(opt, level, idx, live)
    return idx


@torch.no_grad()
def split_level(level, dead: torch.Tensor, x: torch.Tensor, opt: torch.optim.Optimizer, rate: float,
                seed: int = 0) -> torch.Tensor:
    """Restart dead features by splitting the busiest features that look merged; the others by
    resample_level. Returns the restarted (formerly dead) indices; as resample_level otherwise."""
    idx = dead.nonzero().squeeze(1)
    if idx.numel() == 0 or not bool((~dead).any()):
        return idx[:0]
    a = level.encode(x)
    res, fire = x - level.decode(a), a > 0
    rates = fire.float().mean(0).masked_fill(dead, 0.0)
    order = rates.argsort(descending=True)[:idx.numel()]
    pairs = []  # (dead feature, busy feature it splits)
    for k, b in zip(idx.tolist(), order[rates[order] > BUSY * rate].tolist()):
        r = res[fire[:, b]]
        if len(r) < 4:
            continue
        sv = torch.linalg.svd(r, full_matrices=False)
        if float(sv.S[0].square() / sv.S.square().sum()) < SPLIT_SHARE:
            continue
        u = sv.Vh[0]
        s = ((r @ u).abs() / a[fire[:, b], b].clamp_min(1e-6)).mean().clamp(max=2.0)
        d, norm = level.W_dec[b].clone(), level.W_enc[:, b].norm()
        for j, sign in ((k, 1.0), (b, -1.0)):
            level.W_dec[j] = torch.nn.functional.normalize(d + sign * s * u, dim=0)
            level.W_enc[:, j] = level.W_dec[j] * norm
        level.b_enc[k], level.log_threshold[k] = level.b_enc[b], level.log_threshold[b]
        pairs.append((k, b))
    split = torch.tensor([k for k, _ in pairs], dtype=torch.long, device=idx.device)
    if pairs:
        touched = torch.tensor([j for p in pairs for j in p], dtype=torch.long, device=idx.device)
        live = ~dead
        live[touched] = False
        _reset_moments(opt, level, touched, live)
    rest = dead.clone()
    rest[split] = False
    return torch.cat([split, resample_level(level, rest, x, opt, rate, seed)]).sort().values


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
