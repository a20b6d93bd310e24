"""The LLM judge of parent-child pairs (PAPER.md section 5) and one-line feature explanations.

Contexts come from the explorer (`hsae contexts`, hsae.explore.contexts.load_contexts): per
feature, top-activating and activation-weighted sampled examples, each with its window of
tokens and the feature's activation on each of them. The judge sees, per feature, the top-10
plus 5 sampled examples with activating tokens marked <<like this>>.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from ..model import HSAE
from ..rundir import read_explanations

N_TOP, N_SAMPLED = 10, 5
CONFIDENCES = ("High", "Medium", "Low")

JUDGE_SYSTEM = "You are an expert at interpreting features of neural networks from the texts that activate them."

JUDGE_PROMPT = """Below are two features of a language model. Each is shown by text excerpts where it activates; \
the tokens where it activates are marked <<like this>>. The first {n_top} excerpts of each feature are its \
strongest activations, the last {n_sampled} are random activations.

Feature A:
{a}

Feature B:
{b}

Is one of these features a more specific version of the other (for example "dog" and "animal", or \
"closing bracket in Python code" and "punctuation")? Answer in exactly this format:
HaveRelationship: Yes or No
Confidence: High, Medium or Low"""

EXPLAIN_PROMPT = """Below are text excerpts where one feature of a language model activates; the tokens \
where it activates are marked <<like this>>.

{a}

In one short line, what does this feature detect? Answer in exactly this format:
Explanation: <your one-line explanation>"""

_REL = re.compile(r"have\s*_?relationship\W{0,6}(yes|no)\b", re.I)
_CONF = re.compile(r"confidence\W{0,6}(high|medium|low)\b", re.I)
_EXPL = re.compile(r"explanation\W{0,6}(.+)", re.I)


def mark(tokens: list[str], values: list[float]) -> str:
    """The excerpt's text with each run of activating tokens wrapped as <<like this>>.

    Tokens outside the example's own context (value NaN) are left out; a run's leading
    whitespace stays outside the markers.
    """
    out, run = [], []

    def flush():
        if run:
            text = "".join(run)
            stripped = text.lstrip()
            out.append(text[: len(text) - len(stripped)] + "<<" + stripped + ">>")
            run.clear()

    for t, v in zip(tokens, values):
        v = float(v)
        if v != v:  # NaN: another context
            continue
        if v > 0:
            run.append(t)
        else:
            flush()
            out.append(t)
    flush()
    return " ".join("".join(out).split())


def feature_block(examples: list, window: int = 0) -> str:
    """Numbered excerpts of one feature (examples have .tokens, .values, .index); window > 0 keeps
    that many tokens on each side of the activating one (shorter prompts for small local judges)."""
    lines = []
    for k, e in enumerate(examples):
        a, b = (max(0, e.index - window), e.index + window + 1) if window > 0 else (0, len(e.tokens))
        lines.append(f"{k + 1}. {mark(e.tokens[a:b], e.values[a:b])}")
    return "\n".join(lines)


def examples_of(ctx, l: int, i: int) -> list:
    """Top-10 then 5 sampled examples of feature (l, i); [] if it never fired."""
    return list(ctx.top(l, i) or [])[:N_TOP] + list(ctx.sampled(l, i) or [])[:N_SAMPLED]


def parse_judgement(text: str | None) -> tuple[str | None, str | None]:
    """('Yes'|'No'|None, 'High'|'Medium'|'Low'|None) from an answer; None = not found."""
    if not text:
        return None, None
    r, c = _REL.search(text), _CONF.search(text)
    return (r.group(1).capitalize() if r else None), (c.group(1).capitalize() if c else None)


def parse_explanation(text: str | None) -> str | None:
    """The one-line explanation in an answer (after 'Explanation:', else its first line), None if empty."""
    if not text:
        return None
    m = _EXPL.search(text)
    line = (m.group(1) if m else text.strip().splitlines()[0] if text.strip() else "").strip().strip('"').strip()
    return line[:300] or None


def edges(model: HSAE) -> list[tuple[int, int, int]]:
    """Every forest edge as (child level, child id, parent id)."""
    out = []
    for l in range(1, len(model.levels)):
        p = model.parent(l)
        out += [(l, c, int(p[c])) for c in (p >= 0).nonzero().flatten().tolist()]
    return out


def sample_pairs(model: HSAE, ctx, n: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """Up to n random edges whose two features both have contexts (seeded, without replacement).

    In draw order, so the sample for a smaller n is a prefix of the one for a larger n (and an
    interrupted judge's cached answers serve a rerun with fewer pairs).
    """
    e = [x for x in edges(model) if examples_of(ctx, x[0], x[1]) and examples_of(ctx, x[0] - 1, x[2])]
    rng = np.random.default_rng(seed)
    return [e[k] for k in rng.permutation(len(e))[:n].tolist()]


def sample_controls(model: HSAE, ctx, pairs: list[tuple[int, int, int]], seed: int = 0) -> list[tuple[int, int, int]]:
    """One random (feature, non-child) pair per sampled edge, from the same two levels: a child-level
    and a parent-level feature with contexts, the second not the first's parent (seeded)."""
    rng = np.random.default_rng(seed + 2)
    with_ctx = {l: [i for i in range(n) if examples_of(ctx, l, i)] for l, n in enumerate(model.sizes)}
    out = []
    for l, _, _ in pairs:
        if len(with_ctx[l - 1]) < 2:
            continue
        while True:
            c, p = (int(rng.choice(with_ctx[k])) for k in (l, l - 1))
            if int(model.parent(l)[c]) != p:
                out.append((l, c, p))
                break
    return out


def auc(pos: list[float], neg: list[float]) -> float | None:
    """P(a positive scores above a negative), ties counted half (Mann-Whitney); None if a side is empty."""
    if not pos or not neg:
        return None
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())


def judge_requests(ctx, pairs: list[tuple[int, int, int]], seed: int = 0, window: int = 0) -> list[list[dict]]:
    """Chat messages per pair; which feature is shown as A is drawn per pair so order carries no signal."""
    rng = np.random.default_rng(seed + 1)
    out = []
    for l, c, p in pairs:
        a, b = feature_block(examples_of(ctx, l - 1, p), window), feature_block(examples_of(ctx, l, c), window)
        if rng.random() < 0.5:
            a, b = b, a
        prompt = JUDGE_PROMPT.format(n_top=N_TOP, n_sampled=N_SAMPLED, a=a, b=b)
        out.append([{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}])
    return out


def summarise(answers: list[str | None]) -> dict:
    """Yes rate overall and by confidence, with malformed answers and failed requests counted."""
    parsed = [parse_judgement(a) for a in answers]
    ok = [(r, c) for (r, c), a in zip(parsed, answers) if a is not None and r is not None]
    by = {}
    for conf in CONFIDENCES + (None,):
        sub = [r for r, c in ok if c == conf]
        by["none" if conf is None else conf] = {"n": len(sub), "yes_rate": (sum(r == "Yes" for r in sub) / len(sub)) if sub else None}
    return {
        "pairs": len(answers),
        "answered": len(ok),
        "failed": sum(a is None for a in answers),
        "malformed": sum(a is not None and r is None for a, (r, _) in zip(answers, parsed)),
        "yes": sum(r == "Yes" for r, _ in ok),
        "yes_rate": (sum(r == "Yes" for r, _ in ok) / len(ok)) if ok else None,
        "by_confidence": by,
    }


def judge_run(model: HSAE, ctx, backend, n_pairs: int = 200, seed: int = 0, progress=None, window: int = 0) -> dict:
    """Judge sampled edges and as many random control pairs; summarise both (plus every raw answer).

    The edges' summary is the top level; `control` is the random pairs', `yes_rate_difference`
    edges minus controls. A backend that scores (the local model: P(Yes) vs P(No) at the answer)
    also gives each pair's p_yes and the AUC of edges against controls (0.5: no better than chance)."""
    pairs = sample_pairs(model, ctx, n_pairs, seed)
    controls = sample_controls(model, ctx, pairs, seed)
    requests = judge_requests(ctx, pairs + controls, seed, window)
    scores = backend.yes_probabilities(requests, progress) if hasattr(backend, "yes_probabilities") else None
    answers = ([f"HaveRelationship: {'Yes' if s > 0.5 else 'No'}" for s in scores] if scores is not None
               else backend.answer_all(requests, progress))
    n = len(pairs)

    def items(ps, ans, sc):
        return [{"child": f"{l}:{c}", "parent": f"{l - 1}:{p}", "answer": a, "parsed": parse_judgement(a),
                 **({"p_yes": s} if s is not None else {})} for (l, c, p), a, s in zip(ps, ans, sc)]

    out = summarise(answers[:n])
    out["control"] = summarise(answers[n:])
    y, yc = out["yes_rate"], out["control"]["yes_rate"]
    out["yes_rate_difference"] = y - yc if y is not None and yc is not None else None
    sc = scores or [None] * len(answers)
    out["auc"] = auc(scores[:n], scores[n:]) if scores is not None else None
    out["items"], out["control_items"] = items(pairs, answers[:n], sc[:n]), items(controls, answers[n:], sc[n:])
    return out


def explain_requests(ctx, feats: list[tuple[int, int]], window: int = 0) -> list[list[dict]]:
    """One chat request per feature (its top-10 + 5 sampled excerpts)."""
    return [[{"role": "system", "content": JUDGE_SYSTEM},
             {"role": "user", "content": EXPLAIN_PROMPT.format(a=feature_block(examples_of(ctx, l, i), window))}]
            for l, i in feats]


def explain_features(ctx, feats: list[tuple[int, int]], backend, progress=None, window: int = 0) -> tuple[dict[str, str], Counter]:
    """({"LEVEL:ID": explanation}, counts of explained / malformed / failed)."""
    answers = backend.answer_all(explain_requests(ctx, feats, window), progress)
    out, counts = {}, Counter()
    for (l, i), a in zip(feats, answers):
        e = parse_explanation(a)
        counts["failed" if a is None else "malformed" if e is None else "explained"] += 1
        if e:
            out[f"{l}:{i}"] = e
    return out, counts


def merge_explanations(path: Path, new: dict[str, str]) -> dict[str, str]:
    """Write new explanations into path (RUN/explanations.json), keeping the others; returns all."""
    old = read_explanations(path)
    old.update(new)
    keys = sorted(old, key=lambda k: tuple(int(v) for v in k.split(":")))
    from ..files import atomic_write

    atomic_write(path, json.dumps({k: old[k] for k in keys}, indent=1).encode())
    return old


def format_report(results: dict[str, dict]) -> str:
    """Table: per run, pairs, Yes rate on edges overall and by confidence, on random control pairs,
    their difference, the AUC of edges against controls (scoring backends), malformed and failed answers."""
    head = (f"{'run':<28} {'pairs':>5} {'yes rate':>8} {'control':>7} {'diff':>6} {'AUC':>5} {'High':>12} "
            f"{'Medium':>12} {'Low':>12} {'malformed':>9} {'failed':>6}")
    lines = [head, "-" * len(head)]

    def cell(b):
        return f"{b['yes_rate']:.2f} ({b['n']})" if b["yes_rate"] is not None else f"- ({b['n']})"

    for name, r in results.items():
        def num(v, f=".3f"):
            return format(v, f) if v is not None else "-"

        bc, ctl = r["by_confidence"], r.get("control", {}).get("yes_rate")
        lines.append(f"{name:<28} {r['pairs']:>5} {num(r['yes_rate']):>8} {num(ctl):>7} "
                     f"{num(r.get('yes_rate_difference'), '+.3f'):>6} {num(r.get('auc'), '.2f'):>5} "
                     f"{cell(bc['High']):>12} {cell(bc['Medium']):>12} "
                     f"{cell(bc['Low']):>12} {r['malformed']:>9} {r['failed']:>6}")
    return "\n".join(lines)
