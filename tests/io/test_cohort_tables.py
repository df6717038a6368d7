"""Streaming part files and folders replaced whole (esmpipe.io.tables)."""

import stat

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from esmpipe.io.tables import (
    atomic_dir,
    atomic_path,
    read_metadata,
    write_parquet_atomic,
    write_parts,
)


def test_write_parts_rolls_over_and_keeps_metadata(tmp_path):
    table = pa.table({"seq_hash": [f"h{i}" for i in range(10)], "length": list(range(10))})
    rows = write_parts(table.to_batches(max_chunksize=3), table.schema, tmp_path / "t",
                       {"model": "m"}, rows_per_file=4)
    files = sorted((tmp_path / "t").iterdir())
    assert rows == 10 and [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet"]
    assert ds.dataset(tmp_path / "t").to_table().equals(table)
    assert all(read_metadata(f) == {"model": "m"} for f in files)


def test_empty_table_still_has_a_file_with_the_schema(tmp_path):
    schema = pa.schema([("seq_hash", pa.string())])
    assert write_parts([], schema, tmp_path / "t") == 0
    assert ds.dataset(tmp_path / "t").schema.names == ["seq_hash"]


def test_write_table_is_atomic_and_readable(tmp_path):
    path = tmp_path / "x.parquet"
    write_parquet_atomic(pa.table({"a": [1]}), path, {"k": "v"})
    assert read_metadata(path) == {"k": "v"}
    assert stat.S_IMODE(path.stat().st_mode) & 0o044  # not left private like a mkstemp file
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "z.parquet") as tmp:
        tmp.write_text("half a file")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.parquet"]


def test_atomic_dir_replaces_the_folder_whole(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    (target / "old.parquet").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "new.parquet").write_text("new")
        assert [p.name for p in target.iterdir()] == ["old.parquet"]  # not yet visible
    assert [p.name for p in target.iterdir()] == ["new.parquet"]
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.parquet").write_text("half")
        raise RuntimeError("killed")
    assert [p.name for p in target.iterdir()] == ["new.parquet"]
    assert [p.name for p in tmp_path.iterdir()] == ["t"]  # no temporary folder left
