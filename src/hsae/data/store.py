"""Activation stores: a directory of safetensors shards with a manifest, or one matrix file.

Store layout (written by `hsae synth`, and by the real collector):
  manifest.json          {"format": "hsae-store", "version": 1, "d", "dtype", "rows", "scale",
                          "shards": [{"file", "rows", "sha256"}], "finite_checked", "source", ...}
  shard_00000.safetensors  "acts" [rows, d] (+ optional per-row metadata tensors)
  truth.safetensors      optional ground truth (synthetic stores)
`scale` makes E||scale * x|| = sqrt(d) (PAPER.md section 4); readers apply it, the shards
hold raw activations. Shards are memory-mapped: nothing reads the whole store into RAM.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from ..config import UserError
from ..files import atomic_write, file_sha256, publish, tmp_of, writing

MANIFEST = "manifest.json"
REPAIR = "repair it by rerunning the `hsae collect` command that made it with --repair"
SCALE_ROWS = 65536  # rows used to estimate the normalisation scale, from the start of the data
OUTLIER_FACTOR = 5.0  # a row above this multiple of the median norm is a massive activation (data/ordinary.py)


# manifest.json's fields: name -> (type, required)
MANIFEST_FIELDS = {"format": (str, True), "version": (int, True), "d": (int, True), "dtype": (str, True),
                   "rows": (int, True), "scale": ((int, float), True), "shards": (list, True),
                   "finite_checked": (bool, False), "source": (dict, False), "dropped_nonfinite": (int, False),
                   "excluded": (dict, False), "truth": (str, False), "heldout": (bool, False)}
SAFETENSORS_DTYPES = {"F16": "float16", "F32": "float32"}  # what the numpy reader can map


def check_manifest(m, path: Path) -> None:
    """UserError naming path and the first thing wrong with a store manifest (fields, types, shards)."""
    def bad(what):
        raise UserError(f"{path}: {what}; not a manifest this hsae can read")

    if not isinstance(m, dict):
        bad("not a JSON object")
    for k, (typ, required) in MANIFEST_FIELDS.items():
        if k not in m:
            if required:
                bad(f"missing field {k!r}")
        elif not isinstance(m[k], typ) or isinstance(m[k], bool) is not (typ is bool):
            bad(f"field {k!r} has the wrong type ({type(m[k]).__name__})")
    unknown = sorted(set(m) - set(MANIFEST_FIELDS))
    if unknown:
        bad(f"unknown field(s) {', '.join(unknown)}")
    if m["format"] != "hsae-store" or m["version"] != 1:
        bad(f"format {m['format']!r} version {m['version']!r}, expected 'hsae-store' version 1")
    if m["d"] < 1 or m["dtype"] not in SAFETENSORS_DTYPES.values() or not (math.isfinite(m["scale"]) and m["scale"] > 0):
        bad("d must be positive, dtype float16 or float32, scale positive and finite")
    for i, s in enumerate(m["shards"]):
        ok = isinstance(s, dict) and set(s) == {"file", "rows", "sha256"} and isinstance(s["file"], str) \
            and Path(s["file"]).name == s["file"] and isinstance(s["rows"], int) and s["rows"] > 0
        if not ok:  # a plain file name: a manifest never points outside its store
            bad(f"shard entry {i} must be {{file: plain name, rows: positive int, sha256}}")
    if m["rows"] != sum(s["rows"] for s in m["shards"]):
        bad(f"rows {m['rows']} but the shards hold {sum(s['rows'] for s in m['shards'])}")
    if m["rows"] == 0:
        bad("the store holds no rows")


def estimate_scale(x: np.ndarray) -> float:
    """The constant c with mean ||c x|| = sqrt(d) over the finite, not massive rows of x."""
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    norms = norms[np.isfinite(norms)]  # bad rows are counted and refused later, not here
    if len(norms) and np.median(norms) > 0:  # massive activations (data/ordinary.py) would set everyone's scale
        norms = norms[norms <= OUTLIER_FACTOR * np.median(norms)]
    mean = float(norms.mean()) if len(norms) else 0.0
    if not math.isfinite(mean) or mean <= 0:
        raise UserError("cannot normalise: the first rows of the data have zero or non-finite norm")
    return math.sqrt(x.shape[1]) / mean


class Store:
    """Read-only access to [rows, d] activations, from a store directory or a .npy/.safetensors file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._files: list = []  # per shard: a memory-mapped array or an open safetensors handle
        self._verified: set[int] = set()  # shards whose sha256 was checked in this process
        self._key: str = "acts"
        self._classified: tuple[np.ndarray, dict] | None = None  # (ordinary mask, excluded summary)
        if self.path.is_dir():
            self._open_dir()
        elif self.path.suffix in (".npy", ".safetensors") and self.path.is_file():
            try:  # allow_pickle=False: an object .npy would unpickle
                if self.path.suffix == ".npy":
                    arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
                    self._set_single(arr.shape, arr.dtype, arr)
                else:
                    self._open_safetensors_file()
            except (ValueError, OSError, EOFError) as e:
                raise UserError(f"{path}: unreadable activation file ({str(e).splitlines()[0][:200]})") from None
            except Exception as e:  # safetensors' own error type
                if type(e).__name__ != "SafetensorError":
                    raise
                raise UserError(f"{path}: unreadable activation file ({e})") from None
        else:
            raise UserError(f"{path}: not an activation store directory, .npy or .safetensors file")
        self.offsets = np.concatenate([[0], np.cumsum(self.shard_rows)]).astype(np.int64)
        if self.scale is None:
            self.scale = estimate_scale(self.read(0, min(self.rows, SCALE_ROWS)))

    def _open_dir(self):
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise UserError(f"{self.path}: no {MANIFEST}; not an activation store")
        try:
            self.meta = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{mpath}: unreadable manifest ({e})") from None
        check_manifest(self.meta, mpath)
        self.d, self.scale = self.meta["d"], float(self.meta["scale"])
        self.shard_rows = [s["rows"] for s in self.meta["shards"]]
        self.rows = sum(self.shard_rows)
        for s in self.meta["shards"]:
            f = self.path / s["file"]
            try:
                h = safe_open(str(f), framework="np")
                sl = h.get_slice("acts")
                shape, dtype = sl.get_shape(), sl.get_dtype()
            except Exception as e:  # safetensors raises several types for truncated files
                raise UserError(f"shard {f} is missing or corrupt ({e}); {REPAIR}") from None
            if list(shape) != [s["rows"], self.d]:
                raise UserError(f"shard {f} holds {list(shape)}, {mpath} says [{s['rows']}, {self.d}]")
            if SAFETENSORS_DTYPES.get(dtype) != self.meta["dtype"]:
                raise UserError(f"shard {f} holds {dtype} activations, {mpath} says {self.meta['dtype']}")
            self._files.append(h)

    def _open_safetensors_file(self):
        h = safe_open(str(self.path), framework="np")
        keys = list(h.keys())
        if len(keys) != 1 and "acts" not in keys:
            raise UserError(f"{self.path}: expected one [N, d] tensor (or one named 'acts'), found {keys}")
        self._key = "acts" if "acts" in keys else keys[0]
        sl = h.get_slice(self._key)
        self._set_single(tuple(sl.get_shape()), sl.get_dtype(), h)

    def _set_single(self, shape, dtype, handle):
        if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
            raise UserError(f"{self.path}: expected a 2-D [N, d] matrix, got shape {list(shape)}")
        if not str(dtype).lower().startswith(("float", "f", "bf")):
            raise UserError(f"{self.path}: expected floating-point activations, got {dtype}")
        self.meta = {"source": {"kind": "file", "path": str(self.path)}, "finite_checked": False}
        self.d, self.rows, self.scale = int(shape[1]), int(shape[0]), None
        self.shard_rows = [self.rows]
        self._files = [handle]

    def _classification(self) -> tuple[np.ndarray, dict]:
        if self._classified is None:
            from .ordinary import classify

            self._classified = classify(self)
        return self._classified

    @property
    def ordinary(self) -> np.ndarray:
        """bool [rows]: the rows training and metrics use (data/ordinary.py), computed once."""
        return self._classification()[0]

    @property
    def excluded(self) -> dict:
        """Counts of the rows kept out of training and metrics, and the outlier norm threshold."""
        return self._classification()[1]

    def ordinary_batches(self, rows: range, batch_size: int):
        """The normalised ordinary rows among `rows`, in order, in batches of at most batch_size."""
        keep = torch.from_numpy(self.ordinary)
        for a in range(rows.start, rows.stop, batch_size):
            b = min(rows.stop, a + batch_size)
            yield self.batch(a, b)[keep[a:b]]

    @property
    def truth_path(self) -> Path | None:
        """Ground-truth file of a synthetic store, if any."""
        t = self.meta.get("truth")
        return self.path / t if t else None

    def verify(self, i: int) -> None:
        """Check shard i against its manifest sha256 (once per process); UserError naming it."""
        shards = self.meta.get("shards")
        if i in self._verified or not shards:
            return
        f = self.path / shards[i]["file"]
        if file_sha256(f) != shards[i]["sha256"]:
            raise UserError(f"shard {f} does not match its checksum; {REPAIR}")
        self._verified.add(i)

    def _read_shard(self, i: int, a: int, b: int) -> np.ndarray:
        self.verify(i)  # a corrupt shard must never become a silent wrong batch
        f = self._files[i]
        if isinstance(f, np.ndarray):
            return np.asarray(f[a:b])
        return f.get_slice(self._key)[a:b]

    def read(self, start: int, stop: int, native: bool = False) -> np.ndarray:
        """Raw (unscaled) rows [start, stop) as float32 (native=True: in the store's own dtype), across shards."""
        out = []
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < stop:
            end = min(stop, int(self.offsets[i + 1]))
            out.append(self._read_shard(i, start - int(self.offsets[i]), end - int(self.offsets[i])))
            start, i = end, i + 1
        if not out:
            return np.zeros((0, self.d), np.float32)
        x = np.concatenate(out)
        return x if native else x.astype(np.float32, copy=False)

    def read_extra(self, key: str, start: int, stop: int) -> np.ndarray:
        """Per-row metadata (a collected store has 'tokens', 'doc', 'pos') of rows [start, stop)."""
        out = []
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < stop:
            end = min(stop, int(self.offsets[i + 1]))
            f = self._files[i]
            if isinstance(f, np.ndarray) or key not in f.keys():
                raise UserError(f"{self.path}: rows carry no {key!r} (only collected stores have token metadata)")
            self.verify(i)
            out.append(f.get_slice(key)[start - int(self.offsets[i]):end - int(self.offsets[i])])
            start, i = end, i + 1
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def batch(self, start: int, stop: int) -> torch.Tensor:
        """Normalised rows [start, stop) as a float32 tensor."""
        return torch.from_numpy(self.read(start, stop)).mul_(self.scale)

    def split(self, holdout: float) -> tuple[range, range]:
        """(train rows, held-out rows): the held-out rows are the store's tail, or every row of a
        streaming run's held-out store."""
        if self.meta.get("heldout"):
            return range(0, 0), range(0, self.rows)
        n_eval = max(1, int(round(self.rows * holdout)))
        if n_eval >= self.rows:
            raise UserError(f"{self.path}: {self.rows} rows are too few to hold out {holdout:g} of them")
        return range(0, self.rows - n_eval), range(self.rows - n_eval, self.rows)

    def count_nonfinite(self, chunk: int = 65536) -> int:
        """Number of rows containing NaN or Inf (skipped if the writer already checked)."""
        if self.meta.get("finite_checked"):
            return 0
        bad = 0
        for a in range(0, self.rows, chunk):
            bad += int((~np.isfinite(self.read(a, min(self.rows, a + chunk)))).any(1).sum())
        return bad


class StoreWriter:
    """Writes a store directory shard by shard; the manifest is written last, atomically.

    Until then `progress.json` lists the complete shards, so a writer opened with
    resume=True continues after the last one (a killed collection loses at most a shard).
    """

    PROGRESS = "progress.json"

    def __init__(self, path: str | Path, d: int, dtype: str = "float32", meta: dict | None = None, resume: bool = False):
        self.path = Path(path)
        with writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        self.d, self.dtype = d, np.dtype(dtype)
        self.meta = dict(meta or {})
        self.shards: list[dict] = []
        prog = self.path / self.PROGRESS
        if resume and prog.is_file():
            saved = json.loads(prog.read_text())
            if saved["meta"] != json.loads(json.dumps(self.meta)) or saved["d"] != d or saved["dtype"] != self.dtype.name:
                raise UserError(f"{self.path} holds an unfinished store made with other settings; use another --out")
            self.shards = saved["shards"]

    def write(self, acts: np.ndarray, **extra: np.ndarray) -> None:
        """Write one shard of activations [rows, d] (plus per-row metadata arrays)."""
        if acts.ndim != 2 or acts.shape[1] != self.d:
            raise ValueError(f"expected [rows, {self.d}] activations, got {acts.shape}")
        if not np.isfinite(acts).all():
            raise ValueError("refusing to write NaN/Inf activations: drop those rows first")
        name = f"shard_{len(self.shards):05d}.safetensors"
        tensors = {"acts": np.ascontiguousarray(acts, dtype=self.dtype), **{k: np.ascontiguousarray(v) for k, v in extra.items()}}
        tmp = tmp_of(self.path / name)
        with writing(self.path / name, tmp):
            save_file(tensors, str(tmp))
        digest = file_sha256(tmp)
        publish(tmp, self.path / name)
        self.shards.append({"file": name, "rows": int(acts.shape[0]), "sha256": digest})
        progress = {"d": self.d, "dtype": self.dtype.name, "meta": self.meta, "shards": self.shards}
        atomic_write(self.path / self.PROGRESS, json.dumps(progress).encode())

    def _first_rows(self) -> np.ndarray:
        out, have = [], 0
        for s in self.shards:
            if have >= SCALE_ROWS:
                break
            x = safe_open(str(self.path / s["file"]), framework="np").get_slice("acts")[: min(s["rows"], SCALE_ROWS - have)]
            out.append(x.astype(np.float32))
            have += len(x)
        return np.concatenate(out)

    def finish(self, **meta) -> dict:
        """Write manifest.json (with the normalisation scale from the first rows) and return it."""
        manifest = {
            "format": "hsae-store", "version": 1, "d": self.d, "dtype": self.dtype.name,
            "rows": sum(s["rows"] for s in self.shards),
            "scale": estimate_scale(self._first_rows()),
            "finite_checked": True, "shards": self.shards, **self.meta, **meta,
        }
        atomic_write(self.path / MANIFEST, json.dumps(manifest, indent=2).encode())
        (self.path / self.PROGRESS).unlink(missing_ok=True)
        return manifest
