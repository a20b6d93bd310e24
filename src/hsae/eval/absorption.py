"""Feature absorption, SAEBench's first-letter method (Chanin et al. 2024; SAEBench 2025).

Definitions (ours follow SAEBench's constants; everything is on the model's own vocabulary):
- Words: single vocabulary tokens that decode to a space plus >= 2 ASCII letters; label = the
  first letter. Each is read at its own position after a fixed few-shot prefix
  (PREFIX + " word"), on the hooked layer, normalised like the training data. 80/20 split.
- Probe: a 26-way logistic regression on those activations; letters whose test F1 < 0.6 (or
  with < 10 test words) are skipped and counted. p_L = unit vector of letter L's probe row.
- Main features of letter L at a level (k-sparse probing, "feature splitting"): rank features
  by mean activation on L-words minus on other words; add them one at a time (k <= 10) while a
  class-balanced logistic probe on the k activations gains > 0.03 test F1.
- For each test word of L that the probe gets right (true positive), with activations a,
  decoder rows w (unit), cos_f = w_f . p_L and projections q_f = a_f cos_f, total P = x . p_L:
  * absorption fraction: 0 if sum_main q >= P or the top-3 other features with cos >= 0.1 and
    q > 0 project < 0.4 P; 1 if sum_main q <= 0; else A / (A + sum_main q) with
    A = min(top-3 projection, P - sum_main q).
  * full absorption: no main feature fires, the top projecting feature has cos >= 0.025,
    P > 0, and that feature alone projects >= 0.4 P (it is the absorbing feature).
- Per level: mean over kept letters of (mean absorption fraction over true positives) and of
  (full-absorption rate over true positives).
Where we differ from SAEBench: features are ranked by the mean-activation gap (SAEBench: the
weights of an L1-regularised probe); a true positive is the 26-way probe's argmax (SAEBench:
the letter's probe score > 0); words are read after our PREFIX, not SAEBench's ICL prompt.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..model import HSAE

LETTERS = "abcdefghijklmnopqrstuvwxyz"
PREFIX = "Spell each word's first letter.\n house: H\n tree: T\n garden: G\n"
MIN_F1, F1_JUMP, MAX_K = 0.6, 0.03, 10
COS_FRACTION, COS_FULL, PROJ_SHARE, MAX_ABSORBERS = 0.1, 0.025, 0.4, 3


def letter_words(tok, limit: int = 6000, seed: int = 0) -> tuple[list[int], list[str]]:
    """(token ids, words) of single-token words ' abc...' in the vocabulary, at most `limit`."""
    ids, words = [], []
    for i, s in enumerate(tok.convert_ids_to_tokens(list(range(len(tok))))):
        # a word-initial piece: byte-level BPE marks the space with 'Ġ', SentencePiece with '▁'
        if isinstance(s, str) and len(s) >= 3 and s[0] in "Ġ▁" and s[1:].isascii() and s[1:].isalpha():
            ids.append(i)
            words.append(s[1:])
    if len(ids) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(ids), limit, replace=False))
        ids, words = [ids[k] for k in keep], [words[k] for k in keep]
    return ids, words


def _fit_logreg(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 100, l2: float = 1e-4) -> torch.nn.Linear:
    """Multinomial logistic regression fitted with L-BFGS on standardised inputs (returned folded)."""
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    lin = torch.nn.Linear(x.shape[1], classes).double()
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps, line_search_fn="strong_wolfe")
    z, y = z.double(), y.long()

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(z), y) + l2 * lin.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():  # fold the standardisation: w' = w / sd, b' = b - w' . mu
        lin.weight /= sd.double()
        lin.bias -= lin.weight @ mu.double()
    return lin


def _f1(pred: torch.Tensor, true: torch.Tensor) -> float:
    tp = float((pred & true).sum())
    return 0.0 if tp == 0 else 2 * tp / (float(pred.sum()) + float(true.sum()))


def _fit_binary(a: torch.Tensor, y: torch.Tensor, iters: int = 15, ridge: float = 1e-3) -> torch.Tensor:
    """Class-balanced logistic regression on a few columns by Newton's method (IRLS); weights
    [k + 1], bias last. Balanced like SAEBench's probe: a letter is ~4% of the words."""
    z = torch.cat([a.double(), torch.ones(len(a), 1, dtype=torch.float64)], 1)
    t = y.double()
    n_pos = max(1.0, float(t.sum()))
    c = torch.where(y, (len(t) - n_pos) / n_pos, 1.0).double()  # per-sample weight
    w = torch.zeros(z.shape[1], dtype=torch.float64)
    eye = ridge * torch.eye(z.shape[1], dtype=torch.float64)
    for _ in range(iters):
        p = torch.sigmoid(z @ w)
        h = z.t() @ (z * (c * p * (1 - p)).unsqueeze(1)) + eye
        w = w - torch.linalg.solve(h, z.t() @ (c * (p - t)) + ridge * w)
    return w


def main_features(a_train: torch.Tensor, y_train: torch.Tensor, a_test: torch.Tensor, y_test: torch.Tensor) -> list[int]:
    """k-sparse probing: the features that represent a binary label at one level (module doc)."""
    gap = a_train[y_train].mean(0) - a_train[~y_train].mean(0)
    order = gap.argsort(descending=True)[:MAX_K].tolist()
    best, chosen = -1.0, []
    for k in range(1, len(order) + 1):
        f = order[:k]
        w = _fit_binary(a_train[:, f], y_train)
        f1 = _f1(a_test[:, f].double() @ w[:-1] + w[-1] > 0, y_test)
        if chosen and f1 - best <= F1_JUMP:
            break
        best, chosen = f1, f
    return chosen


def absorption_scores(x: torch.Tensor, codes: torch.Tensor, w_dec: torch.Tensor, probe: torch.Tensor,
                      main: list[int]) -> dict[str, torch.Tensor]:
    """Per input (true positives of one letter): absorption fraction, full absorption, absorber id (-1 if none)."""
    p = probe / probe.norm()
    cos = F.normalize(w_dec, dim=1) @ p
    q = codes * cos  # [N, n] projection of each feature's contribution on the probe
    total = x @ p
    is_main = torch.zeros(codes.shape[1], dtype=torch.bool)
    is_main[main] = True
    q_main = q[:, is_main].sum(1)
    cand = torch.where(~is_main & (cos >= COS_FRACTION) & (q > 0), q, torch.zeros_like(q))
    top = cand.topk(min(MAX_ABSORBERS, q.shape[1]), dim=1).values.sum(1)
    absorbed = torch.minimum(top, total - q_main)
    frac = (absorbed / (absorbed + q_main)).clamp(0, 1)
    frac = torch.where(q_main <= 0, torch.ones_like(frac), frac)
    frac = torch.where((total <= 0) | (q_main >= total) | (top < PROJ_SHARE * total), torch.zeros_like(frac), frac)
    best_q, best = q.max(1)
    full = ((codes[:, is_main] == 0).all(1) & (cos[best] >= COS_FULL) & (total > 0) & (best_q >= PROJ_SHARE * total))
    return {"fraction": frac, "full": full, "absorber": torch.where(full, best, torch.full_like(best, -1))}


@torch.inference_mode()
def word_activations(lm, tok, layer: int, ids: list[int], batch_size: int = 256) -> torch.Tensor:
    """Residual stream at each word's position after PREFIX, [N, d] (raw scale)."""
    from ..data.models import residual

    pre = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + tok(PREFIX, add_special_tokens=False)["input_ids"]
    out = []
    for b in range(0, len(ids), batch_size):
        batch = torch.tensor([pre + [i] for i in ids[b:b + batch_size]])
        out.append(residual(lm, layer, batch)[:, -1].float())
    return torch.cat(out)


def absorption_eval(x: torch.Tensor, letters: torch.Tensor, model: HSAE, seed: int = 0) -> dict:
    """Probe, main features and absorption per level from normalised word activations x [N, d]
    and first-letter labels (0..25); see the module docstring."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    cut = int(0.8 * len(x))
    tr, te = perm[:cut], perm[cut:]
    probe = _fit_logreg(x[tr].double(), letters[tr], len(LETTERS))
    with torch.no_grad():
        pred = probe(x[te].double()).argmax(1)
    f1 = {c: _f1(pred == i, letters[te] == i) for i, c in enumerate(LETTERS)}
    kept = [i for i, c in enumerate(LETTERS) if f1[c] >= MIN_F1 and int((letters[te] == i).sum()) >= 10]
    levels = []
    for lv in model.levels:
        with torch.no_grad():
            a = lv.encode(x)
        rates, fracs, per_letter = [], [], {}
        for i in kept:
            y = letters == i
            main = main_features(a[tr], y[tr], a[te], y[te])
            tp = te[(letters[te] == i) & (pred == i)]
            s = absorption_scores(x[tp], a[tp], lv.W_dec.detach(), probe.weight[i].detach().float(), main)
            rates.append(float(s["full"].float().mean()))
            fracs.append(float(s["fraction"].mean()))
            per_letter[LETTERS[i]] = {"main_features": main, "true_positives": len(tp), "full_absorption_rate": rates[-1],
                                      "mean_absorption_fraction": fracs[-1]}
        levels.append({"absorption_rate": float(np.mean(rates)) if rates else float("nan"),
                       "mean_absorption_fraction": float(np.mean(fracs)) if fracs else float("nan"),
                       "letters": per_letter})
    return {"n_words": len(x), "probe_f1": f1, "letters_kept": len(kept),
            "letters_skipped": len(LETTERS) - len(kept), "levels": levels}


def absorption_store(store, model: HSAE, limit: int = 6000, seed: int = 0) -> dict:
    """absorption_eval on the vocabulary of the model that made a collected store."""
    from ..config import UserError
    from .splice import cached_lm, cached_pass

    src = store.meta.get("source", {})
    if src.get("kind") != "model":
        raise UserError(f"{store.path}: --absorption needs a store collected from a model")
    lm, tok = cached_lm(src["model"])
    ids, words = letter_words(tok, limit, seed)
    if len(ids) < 100:
        raise UserError(f"{src['model']}: only {len(ids)} single-token words in the vocabulary; too few to probe")
    x = cached_pass(word_activations, src["model"], int(src["layer"]), tuple(ids)) * store.scale
    letters = torch.tensor([LETTERS.index(w[0].lower()) for w in words])
    return absorption_eval(x, letters, model, seed)
