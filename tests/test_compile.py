"""--compile gives the eager loss; --dtype bfloat16 stays close to float32 with float32 weights;
--device cuda without a GPU is a one-line error."""

import pytest
import torch

from hsae.cli import main
from hsae.config import TrainConfig
from hsae.data.store import Store
from hsae.train.trainer import Trainer

STEPS = 30


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "synth"
    assert main(["synth", "--out", str(out), "--d", "16", "--branching", "3,2", "--tokens", "8000", "--quiet"]) == 0
    return out


def _losses(synth, out, **kw):
    """Per-step losses of a short run (a hierarchy update and ghost grads included) and its trainer."""
    cfg = TrainConfig(levels=[3, 6], l0=[1.0], steps=STEPS, batch_size=128, update_every=10)
    store = Store(synth)
    cfg.d = store.d
    tr = Trainer(cfg, store, out, **kw)
    tr._data_init(tr.stream.batch(0))
    try:
        return [tr.train_step()["loss"] for _ in range(STEPS)], tr
    finally:
        tr.batches.close()


@pytest.fixture(scope="module")
def eager(synth, tmp_path_factory):
    return _losses(synth, tmp_path_factory.mktemp("eager"))


def test_compiled_loss_equals_eager(synth, eager, tmp_path):
    losses, tr = _losses(synth, tmp_path, compile=True)
    assert losses == pytest.approx(eager[0], rel=1e-5)
    for (k, a), b in zip(eager[1].model.state_dict().items(), tr.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k


def test_bfloat16_is_close_with_float32_weights(synth, eager, tmp_path):
    losses, tr = _losses(synth, tmp_path, dtype="bfloat16")
    assert losses[0] != eager[0][0]  # the products really ran in bf16
    assert losses[:5] == pytest.approx(eager[0][:5], rel=2e-2)
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())
    assert all(v.dtype == torch.float32 for s in tr.opt.state.values() for v in s.values() if v.numel() > 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_a_user_error(synth, tmp_path, capsys):
    args = ["train", "--acts", str(synth), "--out", str(tmp_path / "r"), "--levels", "3,6", "--l0", "1",
            "--steps", "5", "--device", "cuda", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and len(err.strip().splitlines()) == 1
