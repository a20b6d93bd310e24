"""The training loop: Adam steps with the tree fixed, hierarchy updates every K steps.

Everything random in a step (batch, swap mask) is a function of (seed, step), and all other
state is in the checkpoint, so a run killed at any point and resumed ends bit-identical to
an uninterrupted one.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import TrainConfig, UserError
from ..data.batches import BatchStream
from ..data.store import Store, atomic_write, publish
from ..model import HSAE, CoActivation, hsae_loss, update_forest
from ..rundir import CHECKPOINT, CONFIG, LOG, MODEL, save_model
from .controller import L0Controller
from .schedule import lr_at


class Trainer:
    """Owns the model, optimiser, controller and statistics of one run directory."""

    def __init__(self, cfg: TrainConfig, store: Store, out: str | Path):
        self.cfg, self.store, self.out = cfg, store, Path(out)
        self.train_rows, _ = store.split(cfg.holdout)
        self.stream = BatchStream(store, self.train_rows, cfg.batch_size, cfg.seed)
        self.model = HSAE(store.d, cfg.levels, cfg.threshold_init, seed=cfg.seed)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=(0.0, 0.995))
        self.ctrl = L0Controller(cfg.l0_targets, cfg.lambda_init, cfg.lambda_gain, cfg.l0_ema, cfg.l0_rate)
        # Firing counts over the current window of dead_period steps, and the dead mask from
        # the last complete window (features that fired far less than their level's average).
        self.fires = [torch.zeros(n, dtype=torch.long) for n in cfg.levels]
        self.dead = [torch.zeros(n, dtype=torch.bool) for n in cfg.levels]
        self.coact = ([CoActivation(a, b) for a, b in zip(cfg.levels, cfg.levels[1:])]
                      if cfg.similarity == "coactivation" else None)
        self.step = 0
        self.assigned = False  # has the forest been assigned at least once
        self._stop_signal: int | None = None

    # ---- state -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly where this step left off."""
        return {
            "step": self.step, "assigned": self.assigned, "model": self.model.state_dict(),
            "opt": self.opt.state_dict(), "ctrl": self.ctrl.state_dict(), "fires": self.fires, "dead": self.dead,
            "coact": [c.state_dict() for c in self.coact] if self.coact else None,
        }

    def load_state_dict(self, s: dict) -> None:
        """Restore from state_dict()."""
        self.step, self.assigned = s["step"], s["assigned"]
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
        self.ctrl.load_state_dict(s["ctrl"])
        self.fires, self.dead = s["fires"], s["dead"]
        if self.coact:
            for c, cs in zip(self.coact, s["coact"]):
                c.load_state_dict(cs)

    def save_checkpoint(self) -> None:
        """Write checkpoint.pt atomically."""
        tmp = self.out / (CHECKPOINT + ".tmp")
        torch.save(self.state_dict(), tmp)
        publish(tmp, self.out / CHECKPOINT)

    def _resume_or_start(self) -> None:
        ck = self.out / CHECKPOINT
        if ck.is_file():
            self.load_state_dict(torch.load(ck, weights_only=False))
            # Drop log lines written after the checkpoint; they will be written again.
            log = self.out / LOG
            if log.is_file():
                keep = [ln for ln in log.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] < self.step]
                atomic_write(log, "".join(ln + "\n" for ln in keep).encode())
        else:
            (self.out / LOG).unlink(missing_ok=True)
            self._data_init(self.stream.batch(0))

    @torch.no_grad()
    def _data_init(self, x: torch.Tensor) -> None:
        """Start every decoder bias at the data mean (of the first batch)."""
        for lv in self.model.levels:
            lv.b_dec.copy_(x.mean(0))

    # ---- one step ----------------------------------------------------------------------
    def _swap_masks(self) -> list[torch.Tensor | None]:
        cfg = self.cfg
        if cfg.baseline or cfg.swap <= 0 or not self.assigned:
            return [None] * len(cfg.levels)
        g = torch.Generator().manual_seed((cfg.seed << 32) + self.step)
        return [torch.rand(n, generator=g) < cfg.swap for n in cfg.levels[:-1]] + [None]

    def train_step(self) -> dict:
        """One optimiser step; returns the log record."""
        cfg, m = self.cfg, self.model
        lr = lr_at(self.step, cfg.steps, cfg.lr, cfg.warmup)
        for grp in self.opt.param_groups:
            grp["lr"] = lr
        x = self.stream.batch(self.step)
        dead = list(self.dead)  # this step's masks; a window closing below replaces them
        rho = 0.0 if cfg.baseline else cfg.rho
        out = hsae_loss(m, x, self.ctrl.lambdas, rho, self._swap_masks(), dead, cfg.bandwidth)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        m.remove_parallel_grad()
        self.opt.step()
        m.normalize_decoder()

        for l, act in enumerate(out.active):
            self.fires[l] += act.sum(0)
        if (self.step + 1) % cfg.dead_period == 0:
            self._update_dead()
        if self.coact:
            for c, a, b in zip(self.coact, out.active, out.active[1:]):
                c.update(a, b)
        lambdas = list(self.ctrl.lambdas)
        self.ctrl.update(out.l0)
        self.step += 1
        if not cfg.baseline and self.step % cfg.update_period == 0 and not (cfg.tree == "fixed" and self.assigned):
            self.assign()
        return {"step": self.step - 1, "lr": lr, "loss": out.loss.item(), "mse": out.mse, "l0": out.l0,
                "lambda": lambdas, "constraint": out.constraint, "ghost": out.ghost,
                "dead": [int(d.sum()) for d in dead]}

    def _update_dead(self) -> None:
        """Close a window: features that fired < dead_fraction of their level's mean rate are dead."""
        cfg = self.cfg
        for l, (n, t) in enumerate(zip(cfg.levels, cfg.l0_targets)):
            expected = t / n * cfg.dead_period * cfg.batch_size
            self.dead[l] = self.fires[l] < max(1.0, cfg.dead_fraction * expected)
            self.fires[l].zero_()

    def assign(self) -> None:
        """Hierarchy update with the configured similarity and tree shape."""
        tree = "partial" if self.cfg.tree == "fixed" else self.cfg.tree
        update_forest(self.model, self.cfg.similarity, tree, self.cfg.orphan_quantile, self.coact)
        self.assigned = True

    # ---- the loop ----------------------------------------------------------------------
    def _on_signal(self, signum, _frame):
        self._stop_signal = signum

    def run(self, progress: bool = True) -> int:
        """Train to cfg.steps (resuming if a checkpoint exists). Returns 0, or 128+signal if stopped."""
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write(self.out / CONFIG, self.cfg.to_json().encode())
        self._resume_or_start()
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not progress, unit="step",
                   dynamic_ncols=True, mininterval=1.0)
        try:
            with open(self.out / LOG, "a") as log:
                while self.step < self.cfg.steps:
                    t0 = time.perf_counter()
                    rec = self.train_step()
                    rec["seconds"] = time.perf_counter() - t0
                    if rec["step"] % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                        log.write(json.dumps(rec) + "\n")
                        log.flush()
                        bar.set_postfix_str("L0 " + "/".join(f"{v:.1f}" for v in rec["l0"])
                                            + " mse " + "/".join(f"{v:.2f}" for v in rec["mse"]))
                    bar.update(1)
                    if self._stop_signal is not None:
                        log.flush()
                        self.save_checkpoint()
                        bar.close()
                        tqdm.write(f"stopped at step {self.step}; checkpoint saved, rerun the same command to resume")
                        return 128 + self._stop_signal
                    if self.step % self.cfg.checkpoint_every == 0 and self.step < self.cfg.steps:
                        log.flush()
                        self.save_checkpoint()
        finally:
            bar.close()
            for s, h in old.items():
                signal.signal(s, h)
        if self.cfg.baseline:
            self.assign()  # post-hoc: the forest is assigned once, after training
        save_model(self.model, self.out / MODEL, self.store.scale)
        (self.out / CHECKPOINT).unlink(missing_ok=True)
        return 0


def check_resumable(cfg: TrainConfig, out: Path) -> str | None:
    """'done' if out holds a finished run of this config, None otherwise; UserError on a clash."""
    cpath = out / CONFIG
    if not cpath.is_file():
        return None
    old = TrainConfig.load(cpath)
    if old != cfg:
        diff = [k for k in cfg.__dataclass_fields__ if getattr(old, k) != getattr(cfg, k)]
        raise UserError(f"{out} holds a run with a different config ({', '.join(diff)}); use another --out")
    return "done" if (out / MODEL).is_file() else None


def train(cfg: TrainConfig, acts: str | Path, out: str | Path, progress: bool = True) -> int:
    """Validate inputs, then train (or resume, or report an already finished run)."""
    cfg.validate()
    store = Store(acts)
    if cfg.d and cfg.d != store.d:
        raise UserError(f"config says d={cfg.d} but {acts} has d={store.d}")
    cfg.d = store.d
    cfg.acts = str(acts)
    bad = store.count_nonfinite()
    if bad:
        raise UserError(f"{acts}: {bad} rows contain NaN or Inf; drop them before training")
    if store.rows * (1 - cfg.holdout) < 1:
        raise UserError(f"{acts}: too few rows")
    out = Path(out)
    if check_resumable(cfg, out) == "done":
        print(f"{out}: already finished; delete it to train again")
        return 0
    return Trainer(cfg, store, out).run(progress)
