"""The Matryoshka SAE baseline: SAELens's MatryoshkaBatchTopKTrainingSAE on our store, as an hsae run.

What a user would train instead of an HSAE (Bussmann et al. 2025; Nabeshima 2024): one
dictionary of n_{L-1} latents whose nested prefixes of widths n_0 < n_1 < ... each reconstruct
the input. SAELens is used as a library: its SAETrainer trains the SAE (its loss, BatchTopK,
threshold, dead-latent auxiliary loss, Adam with its default betas); the one adapter is the
data provider, which feeds SAETrainer our store's shuffled, normalised ordinary training rows
(`BatchStream`, the batches an HSAE run draws), for the same steps x batch size as the HSAE's
config. The learning rate and its schedule are the HSAE config's too (peak cfg.lr, linear
warm-up over cfg.warmup of the steps, then cosine decay to zero, through SAELens's own
scheduler): with SAELens's default constant 3e-4, the demo's 1000 steps left 82% of the
latents dead and explained 0.51 of the variance (docs/matryoshka.md), which measures the
budget, not the method.

Conversion rule (used everywhere): level l of the hsae run is the prefix of the first n_l
latents. SAELens saves the trained SAE as a JumpReLU SAE (threshold = the learnt BatchTopK
threshold); its prefixes become our levels through the SAELens importer's own conversion
(interop/saelens.py: decoder rows made unit-norm, the norm folded into encoder and threshold),
so level l reconstructs exactly what SAELens's prefix of width n_l reconstructs. BatchTopK has
one k for the whole dictionary: it is the last level's target L0 (the run's config keeps that
target), and the prefixes get the L0 they get (measured on the training rows, recorded in
RUN/matryoshka.json as l0_training_rows; `hsae eval` measures it on the held-out rows).

The forest is then assigned once, with the post-hoc rule (the config's similarity and tree),
between *groups*: the latents prefix l adds (n_{l-1} <= i < n_l) get parents among the latents
prefix l-1 added. A latent that level l inherits from level l-1 is the same latent in both,
so it gets no parent: linked to itself (cosine 1, co-firing always) it would be a trivially
perfect edge, and every hierarchy metric would count mostly those (with them, Hamming was ~1
and 93% of WordNet-labelled edges "equal").

A Matryoshka run is not resumable: a killed one trains again from the start. RUN/saelens/ keeps
the SAE as SAELens saved it (`SAE.load_from_disk` reads it).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ..config import TrainConfig, UserError
from ..data.store import Store
from ..files import atomic_write, output_lock
from ..model import HSAE, update_forest
from ..rundir import CONFIG, MATRYOSHKA, MODEL, save_model
from .saelens import mean_l0, read_saelens, to_normalised

SAELENS_DIR = "saelens"  # RUN/saelens/: the trained SAE in SAELens's own inference format


def matryoshka_config(base: TrainConfig) -> TrainConfig:
    """The run config a Matryoshka run records (no constraint, no swap, forest assigned once)."""
    import dataclasses

    return dataclasses.replace(base, baseline=True, rho=0.0, swap=0.0)


def train_sae(store: Store, cfg: TrainConfig, progress: bool = True):
    """SAELens's Matryoshka BatchTopK SAE trained on the store's training rows (see the module docstring)."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (MatryoshkaBatchTopKTrainingSAE,
                                                        MatryoshkaBatchTopKTrainingSAEConfig)
    from sae_lens.training.sae_trainer import SAETrainer

    from ..train.trainer import store_stream

    torch.manual_seed(cfg.seed)
    sae = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=store.d, d_sae=cfg.levels[-1], matryoshka_widths=list(cfg.levels), k=cfg.l0_targets[-1],
        dtype="float32", device="cpu"))
    stream = store_stream(store, cfg)
    trainer = SAETrainer(SAETrainerConfig(total_training_samples=cfg.steps * cfg.batch_size,
                                          train_batch_size_samples=cfg.batch_size, lr=cfg.lr,
                                          lr_scheduler_name="cosineannealing", lr_end=0.0,
                                          lr_warm_up_steps=int(cfg.warmup * cfg.steps),
                                          logger=LoggingConfig(log_to_wandb=False)),
                         sae, (stream.batch(s) for s in range(cfg.steps)))
    with _bar(progress):
        return trainer.fit()


@contextlib.contextmanager
def _bar(progress: bool):
    """SAETrainer draws its own progress bar: switched off for --quiet, for this call only."""
    import sae_lens.training.sae_trainer as st

    old = st.tqdm
    if not progress:
        st.tqdm = functools.partial(old, disable=True)
    try:
        yield
    finally:
        st.tqdm = old


def to_levels(sae_dir: Path, sizes: list[int]) -> HSAE:
    """The HSAE whose level l is the prefix of the first sizes[l] latents of a saved SAELens JumpReLU SAE."""
    cfg, w = read_saelens(sae_dir)
    d = w["W_dec"].shape[1]
    model = HSAE(d, sizes)
    with torch.no_grad():
        for lv, n in zip(model.levels, sizes):
            part = {"W_enc": w["W_enc"][:, :n], "b_enc": w["b_enc"][:n], "W_dec": w["W_dec"][:n],
                    "b_dec": w["b_dec"], "threshold": w["threshold"][:n]}
            t = to_normalised(cfg, part, 1.0)  # SAELens trained on our normalised rows: no scale to fold
            for k in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(lv, k).copy_(t[k])
            lv.log_threshold.copy_(t["threshold"].log())
    return model


def assign_forest(model: HSAE, cfg: TrainConfig) -> None:
    """The post-hoc forest between the latents each prefix adds (see the module docstring)."""
    sizes = model.sizes
    new = [torch.arange(n) >= (sizes[l - 1] if l else 0) for l, n in enumerate(sizes)]
    update_forest(model, cfg.similarity, "partial" if cfg.tree == "fixed" else cfg.tree, cfg.orphan_quantile, live=new)


def train_matryoshka(base: TrainConfig, acts: str | Path, out: str | Path, progress: bool = True) -> int:
    """Train, convert and save a Matryoshka run in `out` (a finished one is left as it is)."""
    out = Path(out)
    cfg = matryoshka_config(base).validate()
    store = Store(acts)
    cfg.d, cfg.acts = store.d, str(acts)
    with output_lock(out, "train"):
        if (out / MODEL).is_file():
            return 0
        if store.meta.get("heldout"):
            raise UserError(f"{acts} is a streaming run's held-out store: it is never trained on")
        t0 = time.perf_counter()
        sae = train_sae(store, cfg, progress)
        seconds = time.perf_counter() - t0
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            sae.save_inference_model(tmp)  # SAELens's own BatchTopK -> JumpReLU conversion
            model = to_levels(Path(tmp), cfg.levels)
            shutil.rmtree(out / SAELENS_DIR, ignore_errors=True)
            os.replace(tmp, out / SAELENS_DIR)  # the SAE as SAELens saved it, loadable by SAELens
        assign_forest(model, cfg)
        l0 = [round(v, 3) for v in mean_l0(model, store, store.split(cfg.holdout)[0])]
        import sae_lens

        # cfg.l0 stays the target (k): seeds of one Matryoshka config must share their config
        atomic_write(out / MATRYOSHKA, json.dumps({"sae_lens": sae_lens.__version__, "k": base.l0_targets[-1],
                                             "widths": cfg.levels, "lr": cfg.lr, "train_seconds": seconds,
                                             "l0_training_rows": l0},
                                            indent=2).encode())
        atomic_write(out / CONFIG, cfg.to_json().encode())
        save_model(model, out / MODEL, store.scale)
    return 0
