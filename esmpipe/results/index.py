"""An exact cosine-similarity index of an embeddings table: numpy only, no torch.

Per Parquet part of the table and per embedding column, three files in the index
folder (`<key>` is a digest of the part's path inside the table):

- `<key>.f32`: the part's non-null vectors, L2-normalised, float32 [n, dim], raw;
- `<key>.hash`: their seq_hash values, fixed-width ASCII [n], in the same order;
- `<key>.json`: what they were built from (part path, size, mtime, column, dim,
  rows, index version). A part whose size or mtime changed is built again; index
  files of parts that are gone are removed.

A query is one matrix-vector product per block of rows of a memory map, so the
memory it holds stays at a block however large the table. NOTE: float32, not
float16: numpy converts float16 to float32 at about 0.25 G values/s on this
project's 2-core machines (1M x 1280 would take over 5 s), while a float32 scan
runs at memory speed (about 1 s for 1M x 1280) and gives exact cosines, so the
ranking agrees with a brute-force one without re-scoring.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

INDEX_VERSION = 1
BLOCK_ROWS = 32768
BUILD_BATCH_ROWS = 65536


@dataclass
class Part:
    """The index files of one table part."""

    source: Path
    vectors: Path
    hashes: Path
    rows: int
    dim: int
    hash_width: int

    def hash_array(self) -> np.ndarray:
        if self.rows == 0:
            return np.zeros(0, dtype=f"S{max(self.hash_width, 1)}")
        return np.memmap(self.hashes, dtype=f"S{self.hash_width}", mode="r", shape=(self.rows,))

    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, [m, dim] float32 view) over the vectors, a memory map per block
        so that pages already read can be dropped."""
        itemsize = 4 * self.dim
        for start in range(0, self.rows, rows):
            m = min(rows, self.rows - start)
            block = np.memmap(self.vectors, dtype=np.float32, mode="r",
                              offset=start * itemsize, shape=(m, self.dim))
            yield start, block
            del block

    def vector(self, row: int) -> np.ndarray:
        block = np.memmap(self.vectors, dtype=np.float32, mode="r",
                          offset=row * 4 * self.dim, shape=(self.dim,))
        return np.array(block)


def _key(relative: str, column: str) -> str:
    return hashlib.sha256(f"{relative}\0{column}".encode()).hexdigest()[:24]


def _identity(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def default_index_dir(results: Path) -> Path:
    """`results/.index`, or a per-user cache folder when `results` is not writable."""
    here = results / ".index"
    if os.access(results, os.W_OK) or (here.is_dir() and os.access(here, os.W_OK)):
        return here
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(str(results.resolve()).encode()).hexdigest()[:16]
    return cache / "esmpipe" / "index" / digest


class VectorIndex:
    """The index of one embedding column of a table folder (or one Parquet file)."""

    def __init__(self, table_files: list[Path], table_root: Path, folder: Path, column: str):
        self.files = table_files
        self.root = table_root
        self.folder = folder
        self.column = column

    def _relative(self, part: Path) -> str:
        try:
            return str(part.relative_to(self.root))
        except ValueError:
            return part.name

    def parts(self, *, build: bool = True) -> list[Part]:
        """Every part's index, building what is missing or stale (when `build`)."""
        out = []
        wanted = set()
        for source in self.files:
            relative = self._relative(source)
            key = _key(relative, self.column)
            wanted.add(key)
            meta_path = self.folder / f"{key}.json"
            meta = None
            if meta_path.is_file():
                meta = json.loads(meta_path.read_text())
                current = {"version": INDEX_VERSION, "source": relative,
                           "column": self.column, **_identity(source)}
                if any(meta.get(k) != v for k, v in current.items()):
                    meta = None
            if meta is None:
                if not build:
                    raise FileNotFoundError(f"no up-to-date index of {source}")
                meta = self._build(source, relative, key)
            out.append(Part(source, self.folder / f"{key}.f32", self.folder / f"{key}.hash",
                            meta["rows"], meta["dim"], meta["hash_width"]))
        if build:
            self._remove_orphans(wanted)
        return out

    def _remove_orphans(self, wanted: set[str]) -> None:
        if not self.folder.is_dir():
            return
        for meta_path in self.folder.glob("*.json"):
            try:
                column = json.loads(meta_path.read_text()).get("column")
            except (OSError, ValueError):
                continue
            if column == self.column and meta_path.stem not in wanted:
                for suffix in (".f32", ".hash", ".json"):
                    meta_path.with_suffix(suffix).unlink(missing_ok=True)

    def _build(self, source: Path, relative: str, key: str) -> dict:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from esmpipe.io.tables import atomic_path

        log.info("similar: indexing %s (%s)", source, self.column)
        identity = _identity(source)
        handle = pq.ParquetFile(source)
        if self.column not in handle.schema_arrow.names:
            raise KeyError(f"{source} has no column {self.column!r}")
        kind = handle.schema_arrow.field(self.column).type
        if not pa.types.is_fixed_size_list(kind):
            raise ValueError(f"column {self.column!r} of {source} is {kind}, not one vector "
                             "per sequence (fixed_size_list)")
        dim = kind.list_size
        rows, width = 0, 0
        self.folder.mkdir(parents=True, exist_ok=True)
        hashes: list[np.ndarray] = []
        with atomic_path(self.folder / f"{key}.f32") as tmp, open(tmp, "wb") as out:
            for batch in handle.iter_batches(batch_size=BUILD_BATCH_ROWS,
                                             columns=["seq_hash", self.column]):
                vectors = batch.column(1)
                valid = vectors.is_valid()
                if vectors.null_count:
                    batch = batch.filter(valid)
                    vectors = batch.column(1)
                if not batch.num_rows:
                    continue
                flat = pc.list_flatten(vectors).to_numpy(zero_copy_only=False)
                matrix = np.array(flat, dtype=np.float32).reshape(-1, dim)
                norms = np.linalg.norm(matrix, axis=1, keepdims=True)
                np.divide(matrix, norms, out=matrix, where=norms > 0)
                out.write(np.ascontiguousarray(matrix).tobytes())
                names = np.asarray(batch.column(0).to_pylist(), dtype="S")
                width = max(width, names.dtype.itemsize)
                hashes.append(names)
                rows += batch.num_rows
        width = max(width, 1)
        with atomic_path(self.folder / f"{key}.hash") as tmp:
            joined = (np.concatenate([h.astype(f"S{width}") for h in hashes]) if hashes
                      else np.zeros(0, dtype=f"S{width}"))
            joined.tofile(tmp)
        meta = {"version": INDEX_VERSION, "source": relative, "column": self.column,
                "rows": rows, "dim": dim, "hash_width": width, **identity}
        with atomic_path(self.folder / f"{key}.json") as tmp:
            tmp.write_text(json.dumps(meta, sort_keys=True))
        return meta

    # -- queries ----------------------------------------------------------------

    def find(self, seq_hash: str, parts: list[Part]) -> np.ndarray | None:
        """The normalised vector of `seq_hash`, or None when the index does not hold it."""
        wanted = seq_hash.encode()
        for part in parts:
            if part.rows == 0 or len(wanted) > part.hash_width:
                continue
            rows = np.flatnonzero(part.hash_array() == wanted)
            if len(rows):
                return part.vector(int(rows[0]))
        return None

    def search(self, vector: np.ndarray, k: int, parts: list[Part]
               ) -> list[tuple[str, float]]:
        """The `k` (seq_hash, cosine) pairs nearest `vector`, best first (ties: by hash)."""
        if not parts:
            return []
        dim = parts[0].dim
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape != (dim,):
            raise ValueError(f"query vector has {query.size} values, the index {dim}")
        norm = float(np.linalg.norm(query))
        if norm > 0:
            query = query / norm
        best_scores: list[np.ndarray] = []
        best_names: list[np.ndarray] = []
        for part in parts:
            if part.rows == 0:
                continue
            scores = np.empty(part.rows, dtype=np.float32)
            for start, block in part.blocks():
                np.matmul(block, query, out=scores[start:start + len(block)])
            keep = min(k, part.rows)
            top = np.argpartition(-scores, keep - 1)[:keep] if keep < part.rows else \
                np.arange(part.rows)
            names = part.hash_array()
            best_scores.append(scores[top])
            best_names.append(np.asarray(names[top]))
        if not best_scores:
            return []
        scores = np.concatenate(best_scores)
        names = np.concatenate([n.astype("S128") for n in best_names])
        order = np.lexsort((names, -scores.astype(np.float64)))[:k]
        return [(names[i].decode(), float(scores[i])) for i in order]
