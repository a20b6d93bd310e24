"""Text corpora as ordered lists of documents, and their packing into token contexts.

A corpus path is a .txt/.md/.rst file (documents separated by blank lines), a .jsonl file
(one document per line, in its "text" field), or a directory of such files (read in sorted
order). Document order is shuffled by seed, so a collection is deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from ..config import UserError

TEXT_SUFFIXES = (".txt", ".md", ".rst")


def _file_documents(p: Path) -> list[str]:
    text = p.read_text(encoding="utf-8", errors="replace")
    if p.suffix == ".jsonl":
        docs = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    docs.append(str(json.loads(line)["text"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UserError(f"{p}:{i + 1}: expected a JSON object with a 'text' field") from None
        return docs
    return [d.strip() for d in text.split("\n\n") if d.strip()]


def read_documents(path: str | Path, seed: int = 0) -> list[str]:
    """Every document of the corpus at `path`, in a seeded shuffled order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES + (".jsonl",))
    elif path.is_file() and path.suffix in TEXT_SUFFIXES + (".jsonl",):
        files = [path]
    else:
        raise UserError(f"{path}: not a .txt/.md/.rst/.jsonl file or a directory of them")
    docs = [d for f in files for d in _file_documents(f)]
    if not docs:
        raise UserError(f"{path}: no text found")
    order = np.random.default_rng(seed).permutation(len(docs))
    return [docs[i] for i in order]


def pack(token_docs: Iterator[list[int]], ctx: int, bos: int | None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Contexts of `ctx` tokens: (tokens, document index, position in document), each [ctx].

    Documents are concatenated and cut into contexts; each context starts with `bos` when the
    tokenizer has one (its position 0 is an attention sink and is never collected).
    """
    body = ctx - (bos is not None)
    buf_t: list[int] = []
    buf_d: list[int] = []
    buf_p: list[int] = []
    for di, toks in enumerate(token_docs):
        buf_t += toks
        buf_d += [di] * len(toks)
        buf_p += range(len(toks))
        while len(buf_t) >= body:
            t, d, p = buf_t[:body], buf_d[:body], buf_p[:body]
            del buf_t[:body], buf_d[:body], buf_p[:body]
            if bos is not None:
                t, d, p = [bos] + t, [-1] + d, [-1] + p
            yield np.array(t), np.array(d), np.array(p)
