"""Absorption (SAEBench first-letter method) on constructed cases with a known answer."""

import torch

from hsae.eval.absorption import LETTERS, absorption_eval, absorption_scores, main_features
from hsae.model import HSAE


def test_absorbing_feature_is_found_and_scored():
    d = 8
    e = torch.eye(d)
    probe = e[0]
    # feature 0: the letter's main feature; feature 1: fires instead of it on some words and
    # carries the letter's direction plus its own (absorption); feature 2: unrelated.
    w_dec = torch.stack([e[0], (e[0] + e[1]) / 2 ** 0.5, e[2]])
    codes = torch.tensor([[3.0, 0, 0], [2.0, 0, 1.0], [0, 4.0, 0], [0, 2.0, 1.0]])
    x = codes @ w_dec
    s = absorption_scores(x, codes, w_dec, probe, main=[0])
    assert s["fraction"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert s["full"].tolist() == [False, False, True, True]
    assert s["absorber"].tolist() == [-1, -1, 1, 1]
    # partial absorption: the main feature fires weakly, the absorber carries the rest
    codes = torch.tensor([[1.0, 2 * 2 ** 0.5, 0]])
    s = absorption_scores(codes @ w_dec, codes, w_dec, probe, main=[0])
    assert abs(float(s["fraction"][0]) - 2 / 3) < 1e-6 and not bool(s["full"][0])


def test_main_features_pick_the_letter_feature_and_its_split():
    g = torch.Generator().manual_seed(0)
    n = 400
    y = torch.rand(n, generator=g) < 0.3
    a = torch.rand(n, 6, generator=g) * 0.2
    # the letter is carried by feature 4 on half of its words and by feature 1 on the other half
    half = torch.rand(n, generator=g) < 0.5
    a[y & half, 4] += 2.0
    a[y & ~half, 1] += 2.0
    main = main_features(a[:300], y[:300], a[300:], y[300:])
    assert sorted(main) == [1, 4]


def test_absorption_eval_on_planted_letters():
    """One direction per letter. Level 0 has exactly those features: nothing to absorb into.
    Level 1 adds a word-specific feature that fires instead of 'a' on 3% of the 'a' words (too
    few to count as a split of 'a'): it must be found as absorption of 'a' and nothing else."""
    g = torch.Generator().manual_seed(0)
    d = 64
    letters = torch.cat([torch.zeros(2000, dtype=torch.long), torch.arange(2500) % 25 + 1])
    n = len(letters)
    dirs = torch.nn.functional.normalize(torch.randn(26, d, generator=g), dim=1)
    x = 3 * dirs[letters] + 0.02 * torch.randn(n, d, generator=g)
    u = torch.randn(d, generator=g)
    u = torch.nn.functional.normalize(u - (u @ dirs[0]) * dirs[0], dim=0)  # a word-specific direction
    absorber = (dirs[0] + u) / 2 ** 0.5
    special = (letters == 0) & (torch.arange(n) % 100 < 3)
    x[special] = 4 * absorber + 0.02 * torch.randn(int(special.sum()), d, generator=g)
    m = HSAE(d, [26, 27])
    for lv in m.levels:
        with torch.no_grad():
            lv.W_enc.zero_()
            lv.W_enc[:, :26] = dirs.t()
            lv.W_dec[:26] = dirs
            lv.b_enc.zero_()
            lv.b_dec.zero_()
            lv.log_threshold.fill_(0.0)  # threshold 1: each letter feature fires on its letter's words
    lv = m.levels[1]
    with torch.no_grad():
        # x . dirs[0] is 3 on plain 'a' words and ~2.8 on special ones: threshold 2.9 separates them
        lv.log_threshold[0] = torch.tensor(2.9).log()
        lv.W_enc[:, 26] = absorber
        lv.W_dec[26] = absorber
        lv.log_threshold[26] = torch.tensor(3.0).log()  # x . absorber: 4 on special words, ~2.1 on others
    r = absorption_eval(x, letters, m)
    assert r["letters_skipped"] == 0 and min(r["probe_f1"].values()) > 0.9
    l0, l1 = r["levels"]
    assert l0["absorption_rate"] == 0 and l0["mean_absorption_fraction"] == 0
    a = l1["letters"]["a"]
    assert a["main_features"] == [0]
    assert 0.01 < a["full_absorption_rate"] < 0.08 and a["mean_absorption_fraction"] == a["full_absorption_rate"]
    assert all(l1["letters"][c]["full_absorption_rate"] == 0 for c in LETTERS[1:])
