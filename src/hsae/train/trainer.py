"""The training loop: Adam steps with the tree fixed, hierarchy updates every K steps.

Everything random in a step (batch, swap mask) is a function of (seed, step), and all other
state is in the checkpoint, so a run killed at any point and resumed ends bit-identical to
an uninterrupted one.

Data parallel (torchrun): every rank takes its slice of the same global batch, gradients are
averaged by DDP, and every statistic the run steers by (L0 for the controller, firing counts
for ghost grads, co-activation counts for the forest) is reduced over ranks, so every rank
takes the same decisions and the run equals a one-process run with the same global batch (up
to float summation order). Firing and co-activation statistics are linear in the data, so
each rank keeps its own part and they are summed when needed (window close, hierarchy update,
checkpoint). The checkpoint holds global state only, so it resumes on any world size.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..config import TrainConfig, UserError
from ..data.batches import BatchStream, Prefetcher
from ..data.live import LiveStream, StreamSource, open_live
from ..data.store import Store
from ..files import atomic_write, output_lock, writing
from ..model import HSAE, CoActivation, hsae_loss, update_forest
from ..model.loss import encode_level
from ..rundir import CHECKPOINT, CONFIG, LOG, MODEL, OLD_CHECKPOINT, read_log, save_model
from .checkpoint import load_checkpoint, save_checkpoint
from .controller import L0Controller
from .resample import RESAMPLE_UNTIL, resample_level, split_level
from .dist import Dist, resolve_dtype
from .schedule import lr_at

# Batches kept ready ahead of the training step: a few (the window read-ahead absorbs slow
# reads), and no more than this many bytes; more would only compete with training for CPU.
PREFETCH_BATCHES, PREFETCH_BYTES = 4, 64 << 20
# Co-activation counts are halved every update period (HSAE and baseline alike): the estimate
# weighs the last period most and forgets the early, dense phase of training.
COACT_DECAY = 0.5
CHECKPOINT_FORMAT = 3  # bumped when the checkpoint's state changes meaning (2: PI controller, live masks; 3: safetensors)


class _Loss(nn.Module):
    """hsae_loss as a module, so DDP can wrap it.

    compile=True compiles each level's dense encode (matmul + JumpReLU + L0, fixed shapes);
    the rest of the loss has data-dependent shapes (active children, swapped parents) that
    would make torch.compile recompile every step.
    """

    def __init__(self, model: HSAE, compile: bool = False):
        super().__init__()
        self.model = model
        self.encode = torch.compile(encode_level, dynamic=False) if compile else encode_level

    def forward(self, x, lambdas, rho, swap, dead, bandwidth, mean):
        return hsae_loss(self.model, x, lambdas, rho, swap, dead, bandwidth, mean, self.encode)


def store_stream(store: Store, cfg: TrainConfig) -> BatchStream:
    """The shuffled batches of a store's training rows (its ordinary rows before the held-out tail)."""
    rows, _ = store.split(cfg.holdout)
    # special tokens and massive activations are never trained on (data/ordinary.py)
    keep = store.ordinary[rows.start:rows.stop]
    if not keep.any():
        raise UserError(f"{store.path}: no ordinary training rows (all are special tokens or massive activations)")
    return BatchStream(store, rows, cfg.batch_size, cfg.seed, keep)


class Trainer:
    """Owns the model, optimiser, controller and statistics of one run directory."""

    def __init__(self, cfg: TrainConfig, data: Store | LiveStream, out: str | Path, dist: Dist | None = None,
                 dtype: str = "float32", compile: bool = False):
        """data: a store (its training rows are drawn) or a live stream (`hsae train --model`)."""
        self.cfg, self.out = cfg, Path(out)
        self.dist = dist or Dist("cpu")
        dev = self.device = self.dist.device
        if cfg.batch_size % self.dist.world:
            raise UserError(f"--batch-size {cfg.batch_size} must be a multiple of the {self.dist.world} processes")
        self.autocast = resolve_dtype(dtype)
        self.stream = data if isinstance(data, LiveStream) else store_stream(data, cfg)
        part = cfg.batch_size // self.dist.world
        depth = min(PREFETCH_BATCHES, PREFETCH_BYTES // (part * self.stream.d * 4))
        self.batches = Prefetcher(self.stream, self.dist.rank * part, (self.dist.rank + 1) * part, depth,
                                  pin=dev.type == "cuda", end=cfg.steps)
        # Built on the CPU from the seed, then moved: the same initial weights on every device.
        self.model = HSAE(self.stream.d, cfg.levels, cfg.threshold_init, seed=cfg.seed).to(dev)
        # fused: one pass over a parameter and its moments instead of ~8 (CPU too: ~6% of the demo's step)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=(0.0, 0.995), fused=True)
        self.ctrl = L0Controller(cfg.l0_targets, cfg.lambda_init, cfg.lambda_gain, cfg.l0_ema, cfg.l0_rate, cfg.steps)
        # Firing counts over the current window of dead_period steps, and the dead mask from
        # the last complete window (features that fired far less than their level's average).
        self.fires = [torch.zeros(n, dtype=torch.long, device=dev) for n in cfg.levels]
        self.dead = [torch.zeros(n, dtype=torch.bool, device=dev) for n in cfg.levels]
        self.n_dead = [0] * len(cfg.levels)  # host copy of the masks' counts, refreshed when they change
        # Features allowed in the forest: found firing by the last window (not dead, not restarted since).
        self.live = [torch.ones(n, dtype=torch.bool, device=dev) for n in cfg.levels]
        self.coact = ([CoActivation(a, b, device=dev) for a, b in zip(cfg.levels, cfg.levels[1:])]
                      if cfg.similarity == "coactivation" else None)
        self.forest_stats: list[dict] | None = None  # family sizes and churn of the last update
        self.loss: nn.Module = _Loss(self.model, compile)
        if self.dist.world > 1:
            self.loss = nn.parallel.DistributedDataParallel(self.loss, device_ids=[dev] if dev.type == "cuda" else None)
        self.step = 0
        self.assigned = False  # has the forest been assigned at least once
        self._stop_signal: int | None = None

    # ---- state -------------------------------------------------------------------------
    def _partials(self) -> list[torch.Tensor]:
        """The statistics each rank holds a part of (their sum over ranks is the global value)."""
        return self.fires + [t for c in self.coact or [] for t in c.tensors()]

    def _gather_partials(self) -> None:
        """Sum the partial statistics into rank 0, zero them elsewhere (every rank must call it)."""
        if self.dist.world == 1:
            return
        for t in self._partials():
            self.dist.sum_(t)
            if not self.dist.main:
                t.zero_()

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where this step left off (call _gather_partials first)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step, "assigned": self.assigned, "model": self.model.state_dict(),
            "opt": self.opt.state_dict(), "ctrl": self.ctrl.state_dict(), "fires": self.fires, "dead": self.dead,
            "live": self.live,
            "coact": [c.state_dict() for c in self.coact] if self.coact else None,
            # a live stream's position (window, offset) of the next batch; a store's batches need none
            "data": list(self.stream.position(self.step)) if isinstance(self.stream, LiveStream) else None,
        }

    def load_state_dict(self, s: dict) -> None:
        """Restore from state_dict() (written on any device and world size)."""
        dev = self.device
        if s.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"{self.out / CHECKPOINT} was written by an older hsae and cannot be continued; "
                            "delete it (or use another --out) to restart the run")
        self.step, self.assigned = s["step"], s["assigned"]
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])  # moves the moments to the parameters' device
        self.ctrl.load_state_dict(s["ctrl"])
        self.fires, self.dead = [t.to(dev) for t in s["fires"]], [t.to(dev) for t in s["dead"]]
        self._recount_dead()
        self.live = [t.to(dev) for t in s["live"]]
        if self.coact:
            for c, cs in zip(self.coact, s["coact"]):
                c.load_state_dict(cs)
        if not self.dist.main:  # rank 0 holds the global sums; the others start their parts at 0
            for t in self._partials():
                t.zero_()
        if isinstance(self.stream, LiveStream):
            if s.get("data") is None:
                raise UserError(f"{self.out / CHECKPOINT} was written by a store-based run; use another --out")
            self.stream.seek(self.step, *s["data"])

    def save_checkpoint(self) -> None:
        """Write the checkpoint atomically (rank 0; every rank must call it)."""
        self._gather_partials()
        if self.dist.main:
            save_checkpoint(self.state_dict(), self.out / CHECKPOINT)

    def _resume_or_start(self) -> None:
        ck = self.out / CHECKPOINT
        if (self.out / OLD_CHECKPOINT).is_file() and not ck.is_file():  # a pickle: never loaded
            raise UserError(f"{self.out / OLD_CHECKPOINT} is an older hsae's checkpoint (pickle), which hsae no "
                            "longer reads; delete it (or use another --out) to restart the run")
        if ck.is_file():
            self.load_state_dict(load_checkpoint(ck))
            # Drop log lines written after the checkpoint (and a last line cut short by a full disk).
            if self.dist.main:
                keep = [json.dumps(r) for r in read_log(self.out) if r.get("step", self.step) < self.step]
                atomic_write(self.out / LOG, "".join(ln + "\n" for ln in keep).encode())
        else:
            if self.dist.main:
                (self.out / LOG).unlink(missing_ok=True)
            self._data_init(self.stream.batch(0).to(self.device))

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
        g = torch.Generator().manual_seed((cfg.seed << 32) + self.step)  # on the CPU: the same on every device
        return [(torch.rand(n, generator=g) < cfg.swap).to(self.device) for n in cfg.levels[:-1]] + [None]

    def train_step(self) -> dict:
        """One optimiser step; returns the log record."""
        cfg, m = self.cfg, self.model
        lr = lr_at(self.step, cfg.steps, cfg.lr, cfg.warmup)
        for grp in self.opt.param_groups:
            grp["lr"] = lr
        x = self.batches.get(self.step).to(self.device, non_blocking=True)
        # this step's ghost-grad masks (None where a level has no dead feature or ghost is off); a window
        # closing below replaces them
        dead = [d if n and cfg.ghost else None for d, n in zip(self.dead, self.n_dead)]
        n_dead = list(self.n_dead)
        restarted = None
        rho = 0.0 if cfg.baseline else cfg.rho
        mean = self.dist.mean if self.dist.world > 1 else None
        with self._autocast():
            out = self.loss(x, self.ctrl.lambdas, rho, self._swap_masks(), dead, cfg.bandwidth, mean)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()  # DDP averages the gradients over ranks here
        m.remove_parallel_grad()
        self.opt.step()
        m.normalize_decoder()

        # Every rank's statistics are of its slice: average them (equal slices) before use.
        L = len(cfg.levels)
        # the step's one host synchronisation: every statistic in one read (nccl reduces on the GPU)
        stats = torch.stack([out.loss.detach(), *out.mse, *out.l0, *out.constraint, *out.ghost]).double()
        stats = self.dist.mean(stats).tolist()
        loss, mse, l0 = stats[0], stats[1:1 + L], stats[1 + L:1 + 2 * L]
        cons, ghost = stats[1 + 2 * L:1 + 2 * L + len(out.constraint)], stats[1 + 2 * L + len(out.constraint):]
        for l, act in enumerate(out.active):
            self.fires[l] += act.sum(0)
        if (self.step + 1) % cfg.dead_period == 0:
            self._update_dead()
            if cfg.resample and self.step + 1 <= RESAMPLE_UNTIL * cfg.steps:
                restarted = self._resample(x)
        if self.coact:
            for c, a, b in zip(self.coact, out.active, out.active[1:]):
                c.update(a, b)
        lambdas = list(self.ctrl.lambdas)
        self.ctrl.update(l0)
        self.step += 1
        rec = {"step": self.step - 1, "lr": lr, "loss": loss, "mse": mse, "l0": l0,
               "lambda": lambdas, "constraint": cons, "ghost": ghost,
               "dead": n_dead}
        if restarted is not None:
            rec["restarted"] = restarted
        if self._update_due():
            self.assign()
            rec["forest"] = self.forest_stats
        if self.step % cfg.update_period == 0:
            for c in self.coact or []:
                c.decay(COACT_DECAY)
        return rec

    def _update_due(self) -> bool:
        """A hierarchy update after this step? The first after first_update of the run, then every
        update_period steps, but never within the last update_period steps, so the final forest
        is one the model trained under."""
        cfg = self.cfg
        if cfg.baseline or (cfg.tree == "fixed" and self.assigned):
            return False
        since = self.step - cfg.first_update_step
        return since >= 0 and since % cfg.update_period == 0 and self.step + cfg.update_period <= cfg.steps

    def _autocast(self):
        """bf16 autocast for the loss's products, or nothing for float32."""
        if self.autocast == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _update_dead(self) -> None:
        """Close a window: features that fired < dead_fraction of their level's mean rate are dead."""
        cfg = self.cfg
        for l, (n, t) in enumerate(zip(cfg.levels, cfg.l0_targets)):
            expected = t / n * cfg.dead_period * cfg.batch_size
            self.dead[l] = self.dist.sum_(self.fires[l]) < max(1.0, cfg.dead_fraction * expected)
            self.live[l] = ~self.dead[l]
            self.fires[l].zero_()
        self._recount_dead()

    def _recount_dead(self) -> None:
        """Refresh the host copy of the dead counts: whenever the masks change (once per window at
        most), so an ordinary step never reads them from the device."""
        self.n_dead = [int(d.sum()) for d in self.dead]

    def _resample(self, x: torch.Tensor) -> list[int]:
        """Restart the features just found dead (train/resample.py) on the global batch; they get
        a fresh window without ghost grads, and stay out of the forest until a window finds them firing."""
        if self.dist.world > 1:  # every rank needs the whole batch to take the same decision
            part = x.shape[0]
            full = x.new_zeros(part * self.dist.world, x.shape[1])
            full[self.dist.rank * part:(self.dist.rank + 1) * part] = x
            x = self.dist.sum_(full)
        counts = []
        restart = split_level if self.cfg.restart == "split" else resample_level
        for l, lv in enumerate(self.model.levels):
            idx = restart(lv, self.dead[l], x, self.opt, self.cfg.l0_targets[l] / lv.n,
                          (self.cfg.seed << 32) + self.step * 16 + l)
            self.dead[l][idx] = False
            self.live[l][idx] = False
            counts.append(int(idx.numel()))
        self._recount_dead()
        return counts

    def assign(self) -> None:
        """Hierarchy update with the configured similarity and tree shape (the same on every rank)."""
        parts = [t for c in self.coact or [] for t in c.tensors()] if self.dist.world > 1 else []
        for t in parts:  # every rank assigns from the global co-activation statistics...
            self.dist.sum_(t)
        tree = "partial" if self.cfg.tree == "fixed" else self.cfg.tree
        self.forest_stats = update_forest(self.model, self.cfg.similarity, tree, self.cfg.orphan_quantile,
                                          self.coact, self.live, self.cfg.hub)
        if not self.dist.main:
            for t in parts:  # ...then rank 0 keeps them and the other parts restart at 0
                t.zero_()
        self.assigned = True

    # ---- the loop ----------------------------------------------------------------------
    def _on_signal(self, signum, _frame):
        self._stop_signal = signum

    def run(self, progress: bool = True) -> int:
        """Train to cfg.steps (resuming if a checkpoint exists). Returns 0, or 128+signal if stopped."""
        main = self.dist.main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write(self.out / CONFIG, self.cfg.to_json().encode())
        self.dist.barrier()
        self._resume_or_start()
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not (progress and main), unit="step",
                   dynamic_ncols=True, mininterval=1.0)
        try:
            # unbuffered: a write that fails (full disk) leaves nothing queued to fail again on close
            with open(self.out / LOG, "ab", buffering=0) if main else contextlib.nullcontext() as log:
                while self.step < self.cfg.steps:
                    t0 = time.perf_counter()
                    rec = self.train_step()
                    rec["seconds"] = time.perf_counter() - t0
                    if main and (rec["step"] % self.cfg.log_every == 0 or self.step == self.cfg.steps
                                 or "forest" in rec or "restarted" in rec):
                        with writing(self.out / LOG):
                            log.write((json.dumps(rec) + "\n").encode())
                        bar.set_postfix_str("L0 " + "/".join(f"{v:.1f}" for v in rec["l0"])
                                            + " mse " + "/".join(f"{v:.2f}" for v in rec["mse"]))
                    bar.update(1)
                    # torchrun signals every rank, not necessarily between the same two steps
                    if self.dist.any(self._stop_signal is not None):
                        self.save_checkpoint()
                        bar.close()
                        if main:
                            tqdm.write(f"stopped at step {self.step}; checkpoint saved, rerun the same command to resume")
                        return 128 + (self._stop_signal or signal.SIGTERM)
                    if self.step % self.cfg.checkpoint_every == 0 and self.step < self.cfg.steps:
                        self.save_checkpoint()
        finally:
            bar.close()
            self.batches.close()
            for s, h in old.items():
                signal.signal(s, h)
        if self.cfg.baseline:
            self.assign()  # post-hoc: the forest is assigned once, after training
        if main:
            save_model(self.model, self.out / MODEL, self.stream.scale)
            (self.out / CHECKPOINT).unlink(missing_ok=True)
        self.dist.barrier()
        return 0


def check_resumable(cfg: TrainConfig, out: Path) -> str | None:
    """'done' if out holds a finished run of this config, None otherwise; UserError on a clash."""
    cpath = out / CONFIG
    if not cpath.is_file():
        return None
    old = TrainConfig.load(cpath, complete=True)
    if old != cfg:
        diff = [k for k in cfg.__dataclass_fields__ if getattr(old, k) != getattr(cfg, k)]
        raise UserError(f"{out} holds a run with a different config ({', '.join(diff)}); delete it or use another --out")
    return "done" if (out / MODEL).is_file() else None


def train(cfg: TrainConfig, acts: str | Path, out: str | Path, progress: bool = True, device: str = "auto",
          dtype: str = "float32", compile: bool = False) -> int:
    """Validate inputs, then train (or resume, or report an already finished run).

    device, dtype (the autocast dtype of the products) and compile are not part of the run's
    identity: a run may be resumed on another device, in another precision or world size.
    Under torchrun every process calls this; they form one data-parallel group.
    """
    cfg.validate()
    resolve_dtype(dtype)
    store = Store(acts)
    if cfg.d and cfg.d != store.d:
        raise UserError(f"config says d={cfg.d} but {acts} has d={store.d}")
    cfg.d = store.d
    cfg.acts = str(acts)
    if store.meta.get("heldout"):
        raise UserError(f"{acts} is a streaming run's held-out store: it is never trained on")
    bad = store.count_nonfinite()
    if bad:
        raise UserError(f"{acts}: {bad} rows contain NaN or Inf; drop them before training")
    if store.rows * (1 - cfg.holdout) < 1:
        raise UserError(f"{acts}: too few rows")
    out = Path(out)
    with output_lock(out, "train"):  # one writer per run; under torchrun rank 0 holds it
        if check_resumable(cfg, out) == "done":
            print(f"{out}: already finished; delete it to train again")
            return 0
        dist = Dist(device)
        try:
            return Trainer(cfg, store, out, dist, dtype, compile).run(progress)
        finally:
            dist.close()


STREAM = "stream.json"  # a streaming run's source (data/live.py StreamSource)
HELDOUT = "heldout"  # a streaming run's held-out store


def train_live(cfg: TrainConfig, src: StreamSource, out: str | Path, progress: bool = True, device: str = "auto",
               dtype: str = "float32", compile: bool = False) -> int:
    """Train from a live model's forward passes (data/live.py); no store but RUN/heldout/ is written.

    Resumes like train(): the checkpoint holds the stream's position, and the same source, config
    and seed give the same batches. Data parallel: every rank runs the model on every context and
    takes its slice of each batch.
    """
    from ..data.models import load_model

    cfg.validate()
    resolve_dtype(dtype)
    if src.ctx < 2 or src.heldout_tokens < 1 or src.tokens <= src.heldout_tokens or src.buffer_rows < 2:
        raise UserError("--ctx must be >= 2, --buffer-rows >= 2, and --tokens above the held-out tokens (>= 1)")
    out = Path(out)
    cfg.acts = str(out / HELDOUT)
    with output_lock(out, "train"):
        spath = out / STREAM
        if spath.is_file():
            try:
                old = StreamSource.from_dict(json.loads(spath.read_text()))
            except (OSError, ValueError) as e:
                raise UserError(f"cannot read {spath}: {e}") from None
            if old != src:
                raise UserError(f"{out} holds a streaming run of another source ({spath}); use another --out")
        dist = Dist(device)
        try:
            lm, tok = load_model(src.model, dist.device)
            d = lm.config.hidden_size
            if cfg.d and cfg.d != d:
                raise UserError(f"config says d={cfg.d} but {src.model} has d={d}")
            cfg.d = d
            if check_resumable(cfg, out) == "done":
                print(f"{out}: already finished; delete it to train again")
                return 0
            if dist.main:
                out.mkdir(parents=True, exist_ok=True)
                atomic_write(spath, json.dumps(src.to_dict(), indent=2).encode())
                live = open_live(lm, tok, src, out / HELDOUT, cfg.batch_size, cfg.seed, progress)
            dist.barrier()  # the held-out store is written by rank 0 alone
            if not dist.main:
                live = open_live(lm, tok, src, out / HELDOUT, cfg.batch_size, cfg.seed, False)
            return Trainer(cfg, live, out, dist, dtype, compile).run(progress)
        finally:
            dist.close()
