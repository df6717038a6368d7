"""Parquet schemas of the result tables and the atomic writer.

Every table esmpipe writes is zstd-compressed Parquet, written to a temporary
file beside the target and moved into place with `os.replace`, so a crashed
or killed job never leaves a half-written file under the final name (which
Snakemake would otherwise take for a finished output).

Provenance (model, revision, dtype, device, versions, settings, input digests)
travels inside the file: a JSON object under the schema metadata key
b"esmpipe", read back with `read_metadata`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

METADATA_KEY = b"esmpipe"

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


def EMBEDDINGS_SCHEMA(dim: int) -> pa.Schema:
    """One row per distinct sequence; `embedding` is null unless status == "ok"."""
    if dim <= 0:
        raise ValueError(f"embedding dimension must be positive, got {dim}")
    return pa.schema(
        [
            pa.field("seq_hash", pa.string(), nullable=False),
            pa.field("length", pa.int32(), nullable=False),
            pa.field("status", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim)),
        ]
    )


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


def _merged_schema(table: pa.Table, metadata: Mapping[str, Any] | None) -> pa.Schema:
    existing = dict(table.schema.metadata or {})
    merged: dict[str, Any] = {}
    if METADATA_KEY in existing:
        merged.update(json.loads(existing[METADATA_KEY]))
    if metadata:
        merged.update(metadata)
    existing[METADATA_KEY] = json.dumps(merged, sort_keys=True).encode()
    return table.schema.with_metadata(existing)


def write_parquet_atomic(
    table: pa.Table,
    path: str | os.PathLike[str],
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write `table` to `path` (zstd Parquet) through a temporary file and `os.replace`.

    `metadata` is merged into the JSON object under the schema key b"esmpipe"
    (keys given here win over keys the table already carries).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    table = table.replace_schema_metadata(_merged_schema(table, metadata).metadata)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        # mkstemp creates the file 0600; give it the mode a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    # os.umask can only be read by setting it; restore it at once.
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
