"""Parquet schemas, the atomic writer and the provenance metadata."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from esmpipe.io.tables import (
    EMBEDDINGS_SCHEMA,
    PROTEINS_SCHEMA,
    STRUCTURES_SCHEMA,
    read_metadata,
    write_parquet_atomic,
)


def _embeddings() -> pa.Table:
    return pa.Table.from_pydict(
        {
            "seq_hash": ["a", "b"],
            "length": [3, 5000],
            "status": ["ok", "too_long"],
            "embedding": [[0.5, 1.0, -2.0, 3.0], None],
        },
        schema=EMBEDDINGS_SCHEMA(4),
    )


def test_roundtrip_metadata_and_compression(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "emb.parquet"
    table = _embeddings().replace_schema_metadata({b"esmpipe": b'{"model": "old", "x": "1"}'})
    write_parquet_atomic(table, path, {"model": "m", "dtype": "float32"})
    back = pq.read_table(path)
    assert back.schema.field("embedding").type == pa.list_(pa.float32(), 4)
    assert back.column("embedding").to_pylist() == [[0.5, 1.0, -2.0, 3.0], None]
    assert read_metadata(path) == {"model": "m", "dtype": "float32", "x": "1"}
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    assert os.listdir(path.parent) == ["emb.parquet"]  # no temporary file left behind
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert duckdb.sql(f"SELECT count(*) FROM '{path}' WHERE status = 'ok'").fetchall() == [(1,)]


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"previous")

    class Boom(RuntimeError):
        pass

    table = _embeddings()
    original = pq.write_table

    def failing_write(*args, **kwargs):
        original(*args, **kwargs)
        raise Boom

    monkeypatch.setattr(pq, "write_table", failing_write)
    with pytest.raises(Boom):
        write_parquet_atomic(table, path)
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["bad.parquet"]


def test_schemas() -> None:
    assert PROTEINS_SCHEMA.names == [
        "sample", "protein_id", "seq_hash", "sequence", "length", "status",
        "contig", "start", "end", "strand", "partial",
    ]  # fmt: skip
    assert STRUCTURES_SCHEMA.field("plddt").type == pa.list_(pa.float32())
    with pytest.raises(ValueError, match="positive"):
        EMBEDDINGS_SCHEMA(0)


def test_read_metadata_without_esmpipe_key(tmp_path: Path) -> None:
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1]}), path)
    assert read_metadata(path) == {}


def test_embedding_array() -> None:
    import numpy as np

    from esmpipe.io.tables import embedding_array

    array = embedding_array([np.array([1.0, 2.0]), None], 2)
    assert array.type == pa.list_(pa.float32(), 2)
    assert array.to_pylist() == [[1.0, 2.0], None]
    with pytest.raises(ValueError, match="shape"):
        embedding_array([np.zeros(3)], 2)
