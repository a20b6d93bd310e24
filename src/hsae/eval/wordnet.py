"""WordNet taxonomy check: is a child feature a more specific version of its parent?

Definition (`hsae eval --wordnet`):
- *Taxonomy*: WordNet 3.0 nouns, read from Debian's `wordnet-base` (/usr/share/wordnet,
  format wndb(5): `data.noun` lines, hypernym pointers `@` and `@i`); nothing is downloaded.
  A synset lies *under* another when the other is on one of its hypernym paths (itself
  included); its *depth* is the length of its shortest hypernym path to a root (entity = 0).
- *Probe set*: the N_WORDS most frequent single-word, lowercase alphabetic noun lemmas
  (frequency: the tagged count of the lemma's first sense, `cntlist.rev`), each with its
  first (most frequent) sense, in each of the neutral PREFIXES ("... the <noun>"). A row is
  the residual stream of the run's model at its layer at the noun's last token, scaled by the
  run's normalisation; it knows its synset.
- *Feature label*: a feature fires on a row when its activation is > 0. Its label is the synset
  S maximising F1 of "fires" against "the row's synset lies under S" over every synset on the
  probe rows' hypernym paths (ties: the deeper synset). Features firing on fewer than
  MIN_FIRES rows, or whose best F1 is below MIN_F1, get no label.
- *Edge score*: a parent -> child edge with both ends labelled is *consistent* when the
  child's synset lies strictly under the parent's, *equal* when they are the same synset.
  Per level and overall: the consistent fraction and the equal fraction of labelled edges.
- *Chance*: the same score for chance forests (eval/chance.py: the model's families moved to
  random parents among the parent level's features that fire on a probe row), mean over draws.
- *Depth*: the mean depth of the labelled features' synsets per level (finer levels should
  have deeper synsets).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import UserError
from .chance import chance_placements, forest_parents

WORDNET_DIR = Path("/usr/share/wordnet")
N_WORDS = 3000
PREFIXES = ("Here is a picture of the", "We talked for a while about the", "The word of the day is the")
MIN_FIRES, MIN_F1 = 5, 0.2


@dataclass
class Taxonomy:
    """WordNet's noun synsets: lemmas and hypernyms by synset offset."""

    words: dict[int, list[str]] = field(default_factory=dict)
    hypernyms: dict[int, list[int]] = field(default_factory=dict)
    _anc: dict = field(default_factory=dict, repr=False)
    _depth: dict = field(default_factory=dict, repr=False)

    def ancestors(self, s: int) -> frozenset:
        """Every synset on a hypernym path of s, s included."""
        if s not in self._anc:
            self._anc[s] = frozenset({s}).union(*(self.ancestors(h) for h in self.hypernyms.get(s, [])))
        return self._anc[s]

    def depth(self, s: int) -> int:
        """Length of the shortest hypernym path from s to a root."""
        if s not in self._depth:
            hs = self.hypernyms.get(s, [])
            self._depth[s] = 0 if not hs else 1 + min(self.depth(h) for h in hs)
        return self._depth[s]

    def name(self, s: int) -> str:
        """The synset's first lemma, e.g. 'dog'."""
        return self.words.get(s, ["?"])[0]


def read_taxonomy(path: Path = WORDNET_DIR) -> Taxonomy:
    """Parse data.noun (wndb(5)): offset, lex file, type, word count (hex), words, pointers."""
    f = Path(path) / "data.noun"
    if not f.is_file():
        raise UserError(f"--wordnet needs WordNet's database at {path} (Debian: apt-get install wordnet-base)")
    tax = Taxonomy()
    with open(f, encoding="latin-1") as fh:
        for line in fh:
            if line.startswith(" "):  # the licence header
                continue
            t = line.split(" | ")[0].split()
            off, n = int(t[0]), int(t[3], 16)
            tax.words[off] = [t[4 + 2 * i].lower() for i in range(n)]
            k = 4 + 2 * n
            hyp = []
            for j in range(int(t[k])):
                sym, target, pos = t[k + 1 + 4 * j: k + 4 + 4 * j]
                if sym in ("@", "@i") and pos == "n":
                    hyp.append(int(target))
            tax.hypernyms[off] = hyp
    return tax


def common_nouns(path: Path = WORDNET_DIR, n: int = N_WORDS) -> list[tuple[str, int]]:
    """(lemma, first-sense synset offset) of the n most frequent single-word noun lemmas."""
    counts: dict[str, int] = {}
    for line in open(Path(path) / "cntlist.rev", encoding="latin-1"):
        key, sense, cnt = line.split()
        lemma, _, rest = key.partition("%")
        if rest.startswith("1:") and sense == "1":
            counts[lemma] = int(cnt)
    out = []
    for line in open(Path(path) / "index.noun", encoding="latin-1"):
        if line.startswith(" "):
            continue
        t = line.split()
        lemma = t[0]
        if re.fullmatch(r"[a-z]{3,}", lemma) and lemma in counts:
            out.append((counts[lemma], lemma, int(t[-int(t[2])])))  # the first listed sense is the most frequent
    out.sort(key=lambda r: (-r[0], r[1]))
    return [(w, s) for _, w, s in out[:n]]


def label_features(fires: torch.Tensor, row_syn: list[int], tax: Taxonomy) -> tuple[list[int], list[float]]:
    """Per feature of fires [R, n] (bool): its best synset (-1: none) and that synset's F1."""
    cands = sorted(set().union(*(tax.ancestors(s) for s in set(row_syn))))
    col = {s: j for j, s in enumerate(cands)}
    rr, cc = [], []
    for r, s in enumerate(row_syn):
        for a in tax.ancestors(s):
            rr.append(r)
            cc.append(col[a])
    under = torch.sparse_coo_tensor(torch.tensor([cc, rr]), torch.ones(len(rr)), (len(cands), len(row_syn)),
                                    check_invariants=False)
    f = fires.float()
    tp = torch.sparse.mm(under, f)  # [S, n]: rows under S where the feature fires
    size = torch.sparse.sum(under, 1).to_dense()  # rows under S
    f1 = 2 * tp / (size[:, None] + f.sum(0)[None, :]).clamp_min(1)
    depth = torch.tensor([tax.depth(s) for s in cands], dtype=torch.float64)
    best = (f1.double() + 1e-9 * depth[:, None]).argmax(0)  # ties: the deeper synset
    best_f1 = f1.gather(0, best[None]).squeeze(0)
    ok = (f.sum(0) >= MIN_FIRES) & (best_f1 >= MIN_F1)
    labels = [cands[int(b)] if o else -1 for b, o in zip(best, ok)]
    return labels, best_f1.tolist()


def edge_scores(parent: torch.Tensor, child_labels: list[int], parent_labels: list[int], tax: Taxonomy) -> dict:
    """Counts of labelled edges, consistent (strictly under) and equal, for one child level."""
    labelled = consistent = equal = 0
    for c, p in enumerate(parent.tolist()):
        if p < 0 or child_labels[c] < 0 or parent_labels[p] < 0:
            continue
        labelled += 1
        sc, sp = child_labels[c], parent_labels[p]
        equal += sc == sp
        consistent += sc != sp and sp in tax.ancestors(sc)
    return {"labelled_edges": labelled, "consistent": consistent, "equal": equal}


def edge_status(parent: torch.Tensor, child_labels: list[int], parent_labels: list[int], tax: Taxonomy) -> list:
    """Per child: "consistent", "equal", "inconsistent", or None (no parent, or an end unlabelled)."""
    out = []
    for c, p in enumerate(parent.tolist()):
        sc, sp = child_labels[c], parent_labels[p] if p >= 0 else -1
        out.append(None if p < 0 or sc < 0 or sp < 0 else "equal" if sc == sp
                   else "consistent" if sp in tax.ancestors(sc) else "inconsistent")
    return out


def _fractions(counts: list[dict]) -> dict:
    n = sum(c["labelled_edges"] for c in counts)
    return {"labelled_edges": n, "consistent_fraction": sum(c["consistent"] for c in counts) / n if n else float("nan"),
            "equal_fraction": sum(c["equal"] for c in counts) / n if n else float("nan")}


def wordnet_eval(fires: list[torch.Tensor], parents: list[torch.Tensor], row_syn: list[int], tax: Taxonomy,
                 chance_draws: int = 5, seed: int = 0) -> dict:
    """The check of the module docstring: fires[l] bool [R, n_l], parents[l-1] the level-l parent arrays."""
    labels = [label_features(f, row_syn, tax) for f in fires]
    per = [edge_scores(p, labels[l + 1][0], labels[l][0], tax) for l, p in enumerate(parents)]
    eligible = [f.any(0) for f in fires[:-1]]
    draws = []
    for d, placements in enumerate(zip(*chance_placements(parents, eligible, chance_draws, seed))):
        fp = [forest_parents(p, pl) for p, pl in zip(parents, placements)]
        draws.append([edge_scores(p, labels[l + 1][0], labels[l][0], tax) for l, p in enumerate(fp)])
    fr = [_fractions(dr) for dr in draws]
    chance = [c["consistent_fraction"] for c in fr if c["labelled_edges"]]  # a draw with no labelled edge has none
    chance_eq = [c["equal_fraction"] for c in fr if c["labelled_edges"]]
    levels = []
    for l, (lab, f1) in enumerate(labels):
        named = [s for s in lab if s >= 0]
        lv = {"labelled_features": len(named), "mean_depth": float(np.mean([tax.depth(s) for s in named])) if named else float("nan"),
              "mean_f1": float(np.mean([v for s, v in zip(lab, f1) if s >= 0])) if named else float("nan")}
        if l:
            lv.update(_fractions([per[l - 1]]))
            per_draw = [_fractions([dr[l - 1]])["consistent_fraction"] for dr in draws]
            per_draw = [c for c in per_draw if c == c]
            lv["chance_consistent_fraction"] = float(np.mean(per_draw)) if per_draw else float("nan")
        levels.append(lv)
    return {"rows": len(row_syn), "levels": levels, **_fractions(per),
            "chance_consistent_fraction": float(np.mean(chance)) if chance else float("nan"),
            "chance_consistent_fraction_std": float(np.std(chance, ddof=1)) if len(chance) > 1 else 0.0,
            "chance_equal_fraction": float(np.mean(chance_eq)) if chance_eq else float("nan"),
            "labels": [[[s, tax.name(s)] if s >= 0 else None for s in lab] for lab, _ in labels],
            "edge_status": [edge_status(p, labels[l + 1][0], labels[l][0], tax) for l, p in enumerate(parents)]}


@torch.inference_mode()
def noun_activations(lm, tok, layer: int, words: list[str], batch_size: int = 128) -> torch.Tensor:
    """Residual stream at each (prefix, word)'s last token, [len(PREFIXES) * len(words), d], raw scale."""
    from ..data.models import residual

    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    seqs = [bos + tok(f"{p} {w}", add_special_tokens=False)["input_ids"] for p in PREFIXES for w in words]
    out = []
    for b in range(0, len(seqs), batch_size):
        chunk = seqs[b:b + batch_size]
        T = max(map(len, chunk))
        # right-padded: a causal model's activations before the padding do not see it
        ids = torch.tensor([s + [s[-1]] * (T - len(s)) for s in chunk])
        h = residual(lm, layer, ids).float()
        out.append(h[torch.arange(len(chunk)), torch.tensor([len(s) - 1 for s in chunk])])
    return torch.cat(out)


def wordnet_store(store, model, chance_draws: int = 5, seed: int = 0, n_words: int = N_WORDS) -> dict:
    """wordnet_eval for a run whose store was collected from a model (its model and layer)."""
    from .splice import cached_pass

    src = store.meta.get("source", {})
    if src.get("kind") != "model":
        raise UserError(f"{store.path}: --wordnet needs a store collected from a model")
    tax = read_taxonomy()
    nouns = common_nouns(n=n_words)
    x = cached_pass(noun_activations, src["model"], int(src["layer"]), tuple(w for w, _ in nouns)) * store.scale
    with torch.no_grad():
        fires = [lv.encode(x) > 0 for lv in model.levels]
    parents = [model.parent(l) for l in range(1, len(model.levels))]
    out = wordnet_eval(fires, parents, [s for _ in PREFIXES for _, s in nouns], tax, chance_draws, seed)
    return {"words": len(nouns), "prefixes": list(PREFIXES), **out}
