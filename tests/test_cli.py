"""The command line: bad input exits 2 with one line and writes nothing; configs round-trip."""

import json

import numpy as np
import pytest

from hsae.cli import main
from hsae.config import TrainConfig


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "synth"
    assert main(["synth", "--out", str(out), "--d", "16", "--branching", "3,2", "--tokens", "5000", "--quiet"]) == 0
    return out


def _fails(capsys, args, match):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


@pytest.mark.parametrize("flags,match", [
    (["--levels", "6,3"], "strictly increasing"),
    (["--levels", "3,6", "--l0", "3"], "below its level size"),
    (["--levels", "3,6", "--l0", "1,1,1"], "needs 1 or 2 values"),
    (["--levels", "3,6", "--l0", "1", "--tree", "ternary"], "--tree"),
])
def test_bad_config_exits_2_and_writes_nothing(tmp_path, capsys, synth, flags, match):
    out = tmp_path / "run"
    _fails(capsys, ["train", "--acts", str(synth), "--out", str(out), "--quiet", *flags], match)
    assert not out.exists()


def test_nan_rows_are_counted(tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    x[[5, 17, 200], 3] = np.nan
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "run"
    _fails(capsys, ["train", "--acts", str(tmp_path / "x.npy"), "--out", str(out), "--levels", "4,8", "--l0", "1"],
           "3 rows contain NaN or Inf")
    assert not out.exists()


def test_d_mismatch_and_missing_data(tmp_path, capsys, synth):
    cfg = TrainConfig(levels=[3, 6], l0=[1.0], steps=10, d=32)
    (tmp_path / "c.json").write_text(cfg.to_json())
    _fails(capsys, ["train", "--acts", str(synth), "--out", str(tmp_path / "r"), "--config", str(tmp_path / "c.json")],
           "d=32")
    _fails(capsys, ["train", "--acts", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), "--levels", "3,6", "--l0", "1"],
           "not an activation store")
    assert not (tmp_path / "r").exists()


def test_config_round_trips_and_drives_training(tmp_path, capsys, synth):
    cfg = TrainConfig(levels=[3, 6], l0=[1.0, 1.5], steps=40, batch_size=64, tree="full", similarity="decoder")
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    (tmp_path / "c.json").write_text(cfg.to_json())
    out = tmp_path / "run"
    assert main(["train", "--acts", str(synth), "--out", str(out), "--config", str(tmp_path / "c.json"),
                 "--seed", "5", "--quiet"]) == 0
    saved = TrainConfig.load(out / "config.json")
    assert saved.similarity == "decoder" and saved.seed == 5 and saved.d == 16 and saved.l0 == [1.0, 1.5]
    assert main(["eval", str(out), "--json", str(tmp_path / "e.json")]) == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    assert {"levels", "l0", "var_explained", "hierarchy", "tree_recovery"} <= set(ev)
    assert set(ev["hierarchy"]) >= {"hamming", "p_parent_given_child", "p_child_given_parent", "n_pairs"}
    assert set(ev["levels"][0]) >= {"n_features", "l0", "var_explained", "dead_fraction"}
    # a rerun with the same --out reports the finished run; a different config is refused
    capsys.readouterr()
    assert main(["train", "--acts", str(synth), "--out", str(out), "--config", str(tmp_path / "c.json"),
                 "--seed", "5", "--quiet"]) == 0
    assert "already finished" in capsys.readouterr().out
    _fails(capsys, ["train", "--acts", str(synth), "--out", str(out), "--config", str(tmp_path / "c.json"),
                    "--seed", "6", "--quiet"], "different config (seed)")


def test_a_run_written_before_restart_existed_still_loads_as_residual(tmp_path):
    """Runs of an older hsae name no `restart` or `first_update`; they load (and resume) as the
    residual restart and the paper's update schedule they ran with, while any other missing key
    is still an error."""
    import json

    import pytest

    from hsae.config import TrainConfig, UserError

    d = json.loads(TrainConfig().to_json())
    del d["restart"], d["first_update"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    old = TrainConfig.load(tmp_path / "config.json", complete=True)
    assert old.restart == "residual" and old.first_update == 0.0
    del d["rho"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(UserError, match="missing config keys: rho"):
        TrainConfig.load(tmp_path / "config.json", complete=True)
