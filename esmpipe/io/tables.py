"""Parquet schemas of the result tables, and the atomic, streaming writers.

Every table esmpipe writes is zstd-compressed Parquet, written to a temporary
file beside the target and moved into place with `os.replace`, so a crashed
or killed job never leaves a half-written file under the final name (which
Snakemake would otherwise take for a finished output). Cohort tables stream
into numbered part files (`write_parts`), so a table of structures never sits
in memory, and folders are replaced whole (`atomic_dir`).

Provenance (model, revision, dtype, device, versions, settings, input digests)
travels inside the file: a JSON object under the schema metadata key
b"esmpipe", read back with `read_metadata`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

METADATA_KEY = b"esmpipe"

RESULT_TABLES = ("proteins", "structures", "embeddings")
STAGE_TABLES = {"embed": "embeddings", "fold": "structures"}

# One row per input record (FASTA record or called gene); never fewer.
PROTEINS_SCHEMA = pa.schema(
    [
        pa.field("sample", pa.string(), nullable=False),
        pa.field("protein_id", pa.string(), nullable=False),
        pa.field("seq_hash", pa.string()),  # null unless status == "ok"
        pa.field("sequence", pa.large_string()),  # normalised
        pa.field("length", pa.int32(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        # Gene coordinates; null for protein samples.
        pa.field("contig", pa.string()),
        pa.field("start", pa.int64()),  # 1-based, inclusive
        pa.field("end", pa.int64()),  # 1-based, inclusive
        pa.field("strand", pa.int8()),  # +1 / -1
        pa.field("partial", pa.string()),  # Prodigal's "00", "10", "01", "11"
    ]
)


# Contig samples: one row per input record of the contigs FASTA, so that a contig
# on which no gene is called (or that is not a contig at all) still leaves a row.
CONTIGS_SCHEMA = pa.schema(
    [
        pa.field("sample", pa.string(), nullable=False),
        pa.field("contig", pa.string(), nullable=False),  # record id, .dupN when repeated
        pa.field("length", pa.int64(), nullable=False),  # residues, whitespace removed
        pa.field("genes", pa.int32(), nullable=False),  # genes called (rows in proteins)
        pa.field("status", pa.string(), nullable=False),  # esmpipe.status.CONTIG_STATUSES
    ]
)


def EMBEDDINGS_SCHEMA(
    dim: int,
    *,
    layers: Sequence[int] = (),
    bos: bool = False,
    per_residue: bool = False,
    lm_score: str = "none",
    windowed: bool = False,
) -> pa.Schema:
    """One row per distinct sequence; every column after `status` is null unless ok.

    The columns follow what `esmpipe embed` was asked for: `embedding` (the mean of
    the first requested layer) always; `bos`, `per_residue` (one float16 vector per
    residue) when included; `layer_<N>` (the mean of each further layer N);
    `mean_log_prob` (lm_score unmasked or pseudo), `pseudo_perplexity` (pseudo);
    `windowed` (the embed command always writes it; off only for older callers).
    """
    if dim <= 0:
        raise ValueError(f"embedding dimension must be positive, got {dim}")
    if lm_score not in ("none", "unmasked", "pseudo"):
        raise ValueError(f"lm_score must be none, unmasked or pseudo, got {lm_score!r}")
    fields = [
        pa.field("seq_hash", pa.string(), nullable=False),
        pa.field("length", pa.int32(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), dim)),
    ]
    if bos:
        fields.append(pa.field("bos", pa.list_(pa.float32(), dim)))
    if per_residue:
        fields.append(pa.field("per_residue", pa.list_(pa.list_(pa.float16(), dim))))
    fields.extend(pa.field(f"layer_{n}", pa.list_(pa.float32(), dim)) for n in layers)
    if lm_score != "none":
        fields.append(pa.field("mean_log_prob", pa.float32()))
    if lm_score == "pseudo":
        fields.append(pa.field("pseudo_perplexity", pa.float32()))
    if windowed:
        fields.append(pa.field("windowed", pa.bool_()))
    return pa.schema(fields)


# One row per distinct sequence; every column but the first three is null unless ok.
STRUCTURES_SCHEMA = pa.schema(
    [
        pa.field("seq_hash", pa.string(), nullable=False),
        pa.field("length", pa.int32(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("mean_plddt", pa.float32()),  # 0-100, over CA atoms
        pa.field("ptm", pa.float32()),  # 0-1
        pa.field("plddt", pa.list_(pa.float32())),  # per residue, CA, 0-100
        pa.field("max_pae", pa.float32()),  # Angstrom
        pa.field("mean_pae", pa.float32()),  # Angstrom
        # large_string: PDB text runs to ~80 bytes per atom, and a column of a few
        # thousand structures would overflow the 2 GiB offsets of a plain string.
        pa.field("pdb", pa.large_string()),
    ]
)


def schema_with_metadata(schema: pa.Schema, metadata: Mapping[str, Any] | None) -> pa.Schema:
    """`schema` with `metadata` merged into its JSON object under b"esmpipe".

    Keys given here win over keys the schema already carries.
    """
    existing = dict(schema.metadata or {})
    merged: dict[str, Any] = json.loads(existing.get(METADATA_KEY, b"{}"))
    merged.update(metadata or {})
    existing[METADATA_KEY] = json.dumps(merged, sort_keys=True).encode()
    return schema.with_metadata(existing)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` on success.

    A reader sees the old file or the new one, never half a file; on failure the
    temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp creates the file 0600; give it the mode a plain open() would have.
    os.chmod(tmp, 0o666 & ~umask())
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet_atomic(
    table: pa.Table,
    path: str | os.PathLike[str],
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write `table` to `path` (zstd Parquet) through a temporary file and `os.replace`.

    `metadata` is merged into the JSON object under the schema key b"esmpipe"
    (keys given here win over keys the table already carries).
    """
    table = table.replace_schema_metadata(schema_with_metadata(table.schema, metadata).metadata)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def umask() -> int:
    """The process umask (os.umask can only be read by setting it; restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object stored under b"esmpipe" in a Parquet file's schema ({} if none)."""
    raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file's bytes, for provenance metadata."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embedding_array(vectors: Sequence[np.ndarray | None], dim: int) -> pa.FixedSizeListArray:
    """fixed_size_list<float32>[dim] from [dim] vectors (None -> null), without Python lists."""
    values = np.zeros((len(vectors), dim), dtype=np.float32)
    missing = np.ones(len(vectors), dtype=bool)
    for i, vector in enumerate(vectors):
        if vector is not None:
            if vector.shape != (dim,):
                raise ValueError(f"embedding {i} has shape {vector.shape}, expected ({dim},)")
            values[i] = vector
            missing[i] = False
    return pa.FixedSizeListArray.from_arrays(
        pa.array(values.reshape(-1)), dim, mask=pa.array(missing)
    )

def per_residue_array(matrices: Sequence[np.ndarray | None], dim: int) -> pa.ListArray:
    """list<fixed_size_list<float16>[dim]> from [L, dim] matrices (None -> null): one
    contiguous buffer of values plus offsets, no Python list per residue."""
    lengths = np.array([0 if m is None else m.shape[0] for m in matrices], dtype=np.int32)
    for i, matrix in enumerate(matrices):
        if matrix is not None and (matrix.ndim != 2 or matrix.shape[1] != dim):
            raise ValueError(
                f"per-residue matrix {i} has shape {matrix.shape}, expected (L, {dim})"
            )
    present = [m.astype(np.float16, copy=False).reshape(-1) for m in matrices if m is not None]
    values = np.concatenate(present) if present else np.zeros(0, dtype=np.float16)
    rows = pa.FixedSizeListArray.from_arrays(pa.array(values, type=pa.float16()), dim)
    offsets = np.zeros(len(matrices) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    mask = pa.array([m is None for m in matrices])
    return pa.ListArray.from_arrays(pa.array(offsets), rows, mask=mask)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` whole.

    A reader sees the old folder or the complete new one; a failure leaves the old
    one as it was. (Only the instant between the two renames shows no folder.)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~umask())
    try:
        yield tmp
        old = None
        if path.exists():
            # A folder cannot be renamed over a non-empty one: move the old one aside.
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old",
                                        dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_parts(
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    folder: str | os.PathLike,
    metadata: dict | None = None,
    rows_per_file: int = 20000,
) -> int:
    """Stream batches into `folder/part-00000.parquet`, `part-00001.parquet`, ...

    A new file starts once the current one holds `rows_per_file` rows, so memory
    stays at one batch however large the table. At least one file is written (an
    empty table has its schema), so readers of the folder always find the columns.
    Returns the row count.
    """
    folder = Path(folder)
    schema = schema_with_metadata(schema, metadata)
    iterator = (b for b in batches if b.num_rows)
    pending = next(iterator, None)
    rows, index = 0, 0
    while True:
        with atomic_path(folder / f"part-{index:05d}.parquet") as tmp, \
                pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            in_file = 0
            while pending is not None and in_file < rows_per_file:
                writer.write_batch(pending.cast(schema))
                in_file += pending.num_rows
                pending = next(iterator, None)
        rows += in_file
        index += 1
        if pending is None:
            return rows


def result_tables(results: str | os.PathLike) -> dict[str, Path]:
    """Table name -> folder of Parquet files or `<name>.parquet` file under `results`.

    Absent tables are left out, and so are stale ones: a stage switched off since an
    earlier run leaves its table behind, and the proteins table (written by every
    run) lists the stages of the run that wrote it under the metadata key `stages`.
    """
    base = Path(results)
    found: dict[str, Path] = {}
    for name in RESULT_TABLES:
        folder, single = base / name, base / f"{name}.parquet"
        if folder.is_dir() and any(folder.rglob("*.parquet")):
            found[name] = folder
        elif single.is_file():
            found[name] = single
    proteins = found.get("proteins")
    if proteins is not None:
        first = min(proteins.rglob("*.parquet")) if proteins.is_dir() else proteins
        stages = read_metadata(first).get("stages")
        if stages is not None:
            for stage, name in STAGE_TABLES.items():
                if stage not in stages:
                    found.pop(name, None)
    return found
