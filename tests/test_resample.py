"""Restarting dead features (train/resample.py) on what a busy, merged feature fails to reconstruct."""

import json

import torch

from hsae.cli import main
from hsae.config import TrainConfig
from hsae.eval import evaluate_run
from hsae.model import HSAE
from hsae.train import train
from hsae.train.resample import resample_level


def _merged_level(d=32, rows=4000, seed=0):
    """Four true directions; the level has feature 0 = a merger of directions 0 and 1 (busy),
    features 1, 2 = directions 2, 3, and feature 3 dead. Rows: one direction each, equally often."""
    g = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(4, d, generator=g), dim=1)
    which = torch.randint(0, 4, (rows,), generator=g)
    x = u[which] * (1 + 0.1 * torch.rand(rows, 1, generator=g))
    m = HSAE(d, [4], threshold_init=0.1, seed=seed)
    lv = m.levels[0]
    with torch.no_grad():
        dec = torch.stack([torch.nn.functional.normalize(u[0] + u[1], dim=0), u[2], u[3], -u[0]])
        lv.W_dec.copy_(dec)
        lv.W_enc.copy_(dec.t())
        lv.b_enc.zero_()
        lv.b_enc[3] = -10.0  # never fires
        lv.b_dec.zero_()
    return lv, x, u, which


def test_dead_feature_restarts_on_the_split_of_the_merged_feature():
    lv, x, u, which = _merged_level()
    opt = torch.optim.Adam(lv.parameters(), lr=1e-3)
    (lv.decode(lv.encode(x)) - x).square().sum().backward()
    opt.step()  # Adam state exists, as in training
    dead = torch.tensor([False, False, False, True])
    idx = resample_level(lv, dead, x, opt, rate=0.25, seed=0)
    assert idx.tolist() == [3]
    new = lv.W_dec[3].detach()
    # the residual of the merger is +-(u0 - u1)/2: the restart points along the split, not along u2 or u3
    split = torch.nn.functional.normalize(u[0] - u[1], dim=0)
    assert abs(float(new @ split)) > 0.9
    assert abs(float(new @ u[2])) < 0.3 and abs(float(new @ u[3])) < 0.3
    # it fires on about the level's mean rate, on rows of one of the two merged directions only
    fires = lv.encode(x)[:, 3].detach() > 0
    assert 0.15 < float(fires.float().mean()) < 0.35
    on_merged = (which[fires] <= 1).float().mean()
    assert on_merged > 0.8, on_merged
    st = opt.state[lv.W_dec]
    assert torch.all(st["exp_avg"][3] == 0) and torch.all(st["exp_avg_sq"][3] > 0)


def test_nothing_dead_nothing_restarted():
    lv, x, _, _ = _merged_level()
    before = lv.W_dec.detach().clone()
    opt = torch.optim.Adam(lv.parameters())
    assert resample_level(lv, torch.zeros(4, dtype=torch.bool), x, opt, 0.25).numel() == 0
    assert torch.equal(before, lv.W_dec.detach())


def test_split_restart_cuts_the_merged_feature_into_its_two_directions():
    """--restart split: the dead feature and the merger become the two merged directions, one each;
    the features that were fine are untouched, and a level without a merger falls back to the
    residual restart (the dead feature still restarts)."""
    from hsae.train.resample import split_level

    lv, x, u, _ = _merged_level()
    opt = torch.optim.Adam(lv.parameters(), lr=1e-3)
    (lv.decode(lv.encode(x)) - x).square().sum().backward()
    opt.step()
    before = lv.W_dec.detach().clone()
    dead = torch.tensor([False, False, False, True])
    assert split_level(lv, dead, x, opt, rate=0.25, seed=0).tolist() == [3]
    W = lv.W_dec.detach()
    cos = W[[0, 3]] @ u[:2].t()  # [feature 0 / 3, direction 0 / 1]
    assert cos.max(1).values.min() > 0.95 and cos.argmax(1).unique().numel() == 2, cos
    assert torch.equal(W[1:3], before[1:3])
    assert torch.allclose(lv.W_enc.detach()[:, 3] / lv.W_enc.detach()[:, 3].norm(), W[3], atol=1e-5)
    st = opt.state[lv.W_dec]
    assert torch.all(st["exp_avg"][[0, 3]] == 0)

    # no merger (the busy feature is a true direction, its residual is diffuse): residual restart
    g = torch.Generator().manual_seed(1)
    x2 = u[0] * (1 + 0.1 * torch.rand(4000, 1, generator=g)) + 0.05 * torch.randn(4000, u.shape[1], generator=g)
    lv2, _, _, _ = _merged_level()
    with torch.no_grad():
        lv2.W_dec[0] = u[0]
        lv2.W_enc[:, 0] = u[0]
    opt2 = torch.optim.Adam(lv2.parameters())
    assert split_level(lv2, dead, x2, opt2, rate=0.25, seed=0).tolist() == [3]
    assert torch.allclose(lv2.W_dec.detach()[0], u[0])  # the true feature is not cut


def test_restart_fills_the_residual_without_overshooting():
    """A restart along a direction the live features already reconstruct most of (here 90% of
    v2) takes on the residual's size there: the batch's error falls. At the live encoders' full
    size it would add ~x.v2 on top of 0.9 x.v2 and raise the error, and training would switch
    the new feature off again."""
    g = torch.Generator().manual_seed(0)
    d, rows = 16, 2000
    v = torch.linalg.qr(torch.randn(d, 2, generator=g)).Q.t()  # two orthonormal directions
    c = 0.5 + torch.rand(rows, 2, generator=g)
    x = c @ v + 1e-3 * torch.randn(rows, d, generator=g)
    lv = HSAE(d, [3], threshold_init=0.01, seed=0).levels[0]
    with torch.no_grad():
        lv.W_dec.copy_(torch.stack([v[0], v[1], -v[0]]))
        lv.W_enc.copy_(torch.stack([v[0], 0.9 * v[1], -v[0]]).t())
        lv.b_enc.copy_(torch.tensor([0.0, 0.0, -10.0]))
        lv.b_dec.zero_()

    def err():
        with torch.no_grad():
            return float((lv.decode(lv.encode(x)) - x).square().sum(1).mean())

    before = err()
    opt = torch.optim.Adam(lv.parameters())
    idx = resample_level(lv, torch.tensor([False, False, True]), x, opt, rate=0.25, seed=0)
    assert idx.tolist() == [2] and abs(float(lv.W_dec[2].detach() @ v[1])) > 0.99
    fires = lv.encode(x)[:, 2].detach() > 0
    assert 0.15 < float(fires.float().mean()) < 0.35
    assert err() < before, (err(), before)


def test_no_feature_of_the_regular_forest_ends_dead(tmp_path):
    """`make demo-synth`'s forest (8/24/72 features for 8 roots x 3 x 3), one seed, post-hoc (the
    HSAE's first half): with restarts at the live encoders' full size its last level ends with
    dead features (7.4 +- 4.0% of the worst level over the seeds of docs/forest-quality.md, ~5 of
    72); the calibrated restarts keep every feature of every level firing on the held-out rows, or
    all but one: zero on the machines of earlier sessions, one of the last level's 72 on another
    CPU with the same code (2026-12-06: float summation order differs between CPUs)."""
    acts = tmp_path / "synth"
    assert main(["synth", "--out", str(acts), "--d", "64", "--branching", "8,3,3", "--tokens", "100000",
                 "--seed", "0", "--quiet"]) == 0
    cfg = TrainConfig(levels=[8, 24, 72], l0=[3.0], steps=3000, baseline=True)
    assert train(cfg, acts, tmp_path / "run", progress=False) == 0
    ev = evaluate_run(tmp_path / "run")
    dead = [round(lv["dead_fraction"] * n) for lv, n in zip(ev["levels"], cfg.levels)]
    assert dead[:2] == [0, 0] and dead[2] <= 1, dead


def test_ghost_off_trains_dead_features_without_ghost_grads(tmp_path):
    """ghost=False (a config field, for wide models whose dead features ghost grads bury): dead
    features are still found, but no ghost term is trained; ghost=True trains one. The field
    round-trips through the run's config.json."""
    acts = tmp_path / "synth"
    assert main(["synth", "--out", str(acts), "--d", "16", "--branching", "4,2", "--tokens", "20000",
                 "--seed", "0", "--quiet"]) == 0
    logs = {}
    for ghost in (True, False):
        cfg = TrainConfig(levels=[4, 64], l0=[1.0], steps=200, batch_size=256, dead_steps=20,
                          resample=False, baseline=True, ghost=ghost)
        run = tmp_path / f"ghost-{ghost}"
        assert train(cfg, acts, run, progress=False) == 0
        assert TrainConfig.load(run / "config.json", complete=True).ghost is ghost
        logs[ghost] = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert any(r["dead"][1] > 0 for r in logs[False])
    assert all(g == 0 for r in logs[False] for g in r["ghost"])
    assert any(r["ghost"][1] > 0 for r in logs[True])
