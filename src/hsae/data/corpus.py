"""Text corpora as ordered lists of documents, and their packing into token contexts.

A corpus is a name of an embedded corpus (real English text from Debian packages):
  python-docs  python3-doc: the Python documentation's reStructuredText sources, per paragraph
  wordnet      wordnet-base: WordNet 3.0 glosses and example sentences, one synset per document
  fortunes     fortunes: fortune cookies, split at '%' lines
  mix          all three, interleaved
or a path: a .txt/.md/.rst file (documents separated by blank lines), a .jsonl file (one
document per line, in its "text" field), a directory of such files (read in sorted order), or
a dataset saved with `datasets` (`save_to_disk`; its "text" column, "train" split if a dict).
Document order is shuffled by seed, so a collection is deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from ..config import UserError

TEXT_SUFFIXES = (".txt", ".md", ".rst")


def _file_documents(p: Path) -> list[str]:
    """Documents of one file: JSON lines' "text", else blank-line-separated paragraphs."""
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


PYDOC_SOURCES = Path("/usr/share/doc/python3/html/_sources")
WORDNET = Path("/usr/share/wordnet")
FORTUNES = Path("/usr/share/games/fortunes")
PACKAGES = {"python-docs": "python3-doc", "wordnet": "wordnet-base", "fortunes": "fortunes"}


def _python_docs() -> list[str]:
    return [d for f in sorted(PYDOC_SOURCES.rglob("*.txt")) for d in _file_documents(f)]


def _wordnet() -> list[str]:
    docs = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (WORDNET / f"data.{pos}").read_text(errors="replace").splitlines():
            if not line.startswith("  ") and "|" in line:  # header lines start with two spaces
                docs.append(line.split("|", 1)[1].strip())
    return docs


def _fortunes() -> list[str]:
    docs = []
    for f in sorted(FORTUNES.iterdir()):
        if f.is_file() and not f.suffix and not f.is_symlink():
            docs += [e.strip() for e in f.read_text(errors="replace").split("\n%\n") if e.strip()]
    return docs


NAMED = {"python-docs": (_python_docs, PYDOC_SOURCES), "wordnet": (_wordnet, WORDNET), "fortunes": (_fortunes, FORTUNES)}


def named_documents(name: str) -> list[str]:
    """Documents of an embedded corpus; a clear error if its Debian package is missing."""
    names = list(NAMED) if name == "mix" else [name]
    docs = []
    for n in names:
        load, where = NAMED[n]
        if not where.exists():
            raise UserError(f"corpus {n!r} needs the Debian package {PACKAGES[n]} (apt-get install {PACKAGES[n]}, "
                            f"as root), or pass --corpus PATH to a text file or directory")
        docs += load()
    return docs


def read_documents(path: str | Path, seed: int = 0) -> list[str]:
    """Every document of the corpus (a name in NAMED or 'mix', or a path), in a seeded shuffled order."""
    if str(path) in NAMED or str(path) == "mix":
        return _shuffled(named_documents(str(path)), seed)
    path = Path(path)
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        return _shuffled(_saved_dataset(path), seed)
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES + (".jsonl",))
    elif path.is_file() and path.suffix in TEXT_SUFFIXES + (".jsonl",):
        files = [path]
    else:
        raise UserError(f"{path}: not a .txt/.md/.rst/.jsonl file or a directory of them")
    docs = [d for f in files for d in _file_documents(f)]
    if not docs:
        raise UserError(f"{path}: no text found")
    return _shuffled(docs, seed)


def _saved_dataset(path: Path) -> list[str]:
    """The "text" column of a dataset saved with `datasets` (the "train" split of a dict)."""
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    if "text" not in ds.column_names:
        raise UserError(f"{path}: the dataset has no 'text' column (columns: {', '.join(ds.column_names)})")
    return [str(t) for t in ds["text"] if t]


def _shuffled(docs: list[str], seed: int) -> list[str]:
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
