"""Host synchronisations per training step: a CUDA step runs ahead of the host until the host
reads a device value, so the step reads as few as it can (patch and count, on the CPU).

Budget per ordinary step (no window closing, no hierarchy update): one read of all the step's
statistics (loss, per-level MSE, L0, constraint, ghost: the controller and the log need them),
plus the data-dependent shapes of the sparse algorithm: per child level, its support's entries
(on a CPU two scans: the nonzero words, then their bytes); per level pair, the swapped parents and
their children and the (input, parent) groups with siblings; with co-activation statistics, the
number of co-firing pairs
and the two activity lists they are enumerated from. Adam's own reads are left out: on CUDA the trainer uses its fused
kernel, which reads nothing. Both forms of the couplings are counted: the torch form that CUDA
runs, and the CPU's compiled loops (model/kernel.py).
"""

import collections
import traceback

import pytest
import torch

from hsae.cli import main
from hsae.config import TrainConfig
from hsae.data import Store
from hsae.model import kernel
from hsae.train.dist import Dist
from hsae.train.trainer import Trainer

READS = ["item", "tolist", "__bool__", "__int__", "__float__", "__index__"]
SHAPES = ["nonzero", "unique", "masked_select", "argwhere"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("sync")
    assert main(["synth", "--out", str(d / "s"), "--d", "16", "--branching", "4,3,2", "--tokens", "20000",
                 "--quiet"]) == 0
    return d / "s"


def _counting(monkeypatch):
    """Patch torch so every host read / data-dependent shape made outside torch.optim is counted."""
    counts = collections.Counter()

    def wrap(owner, name, kind):
        orig = getattr(owner, name)

        def f(*a, **k):
            if not any("torch/optim" in fr.filename for fr in traceback.extract_stack(limit=12)):
                counts[kind] += 1
            return orig(*a, **k)
        monkeypatch.setattr(owner, name, f)

    for n in READS:
        wrap(torch.Tensor, n, "reads")
    for n in SHAPES:
        wrap(torch.Tensor, n, "shapes")
        wrap(torch, n, "shapes")
    return counts


@pytest.mark.parametrize("form", ["torch", "kernel"])
@pytest.mark.parametrize("similarity", ["encoder", "coactivation"])
def test_an_ordinary_step_reads_the_device_once(store, tmp_path, monkeypatch, similarity, form):
    monkeypatch.setattr(kernel, "ENABLED", form == "kernel")
    cfg = TrainConfig(levels=[4, 12, 24], l0=[2.0], steps=1000, batch_size=256, update_every=50, first_update=0.0, dead_steps=100,
                      similarity=similarity, d=16, acts=str(store))
    t = Trainer(cfg, Store(store), tmp_path / "r", Dist("cpu"))
    t.out.mkdir(parents=True)
    t._resume_or_start()
    for _ in range(55):  # past the first hierarchy update: the constraint and the swaps are live
        t.train_step()
    assert t.assigned and any(int((t.model.parent(l) >= 0).sum()) for l in (1, 2))
    counts = _counting(monkeypatch)
    pairs = len(cfg.levels) - 1
    for step in range(55, 65):  # no window closes (99) and no update (100) among them
        counts.clear()
        t.train_step()
        coact = similarity == "coactivation"  # + per pair: the co-firing pairs' count and two nonzero
        assert counts["reads"] == 1 + (pairs if coact else 0), (step, counts)
        assert counts["shapes"] <= 2 * pairs + 3 * pairs + (2 * pairs if coact else 0), (step, counts)
