"""Partial outputs: chunks survive a killed job, a retry resumes, other settings start over."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from esmpipe.io.partial import PartialOutput
from esmpipe.io.tables import read_metadata

SCHEMA = pa.schema([("seq_hash", pa.string()), ("status", pa.string()), ("x", pa.float32())])


def _rows(hashes: list[str], status: str = "ok") -> pa.Table:
    return pa.table({"seq_hash": hashes, "status": [status] * len(hashes),
                     "x": [float(len(h)) for h in hashes]}, schema=SCHEMA)  # fmt: skip


def test_resume_after_a_kill_and_finish(tmp_path: Path) -> None:
    out = tmp_path / "part.parquet"
    first = PartialOutput(out, SCHEMA, {"model": "m", "v": 1})
    assert first.done() == set()
    first.write(_rows(["a", "bb"]))
    first.write(_rows(["ccc"], "too_long"))
    del first  # the job is killed here: no finish, no output file
    assert not out.exists()

    retry = PartialOutput(out, SCHEMA, {"v": 1, "model": "m"})  # same key, any order
    assert retry.done() == {"a", "bb", "ccc"}
    retry.write(_rows(["dddd"]))
    assert retry.counts("status") == {"ok": 3, "too_long": 1}
    assert retry.finish({"model": "m"}) == 4
    table = pq.read_table(out)
    assert sorted(table["seq_hash"].to_pylist()) == ["a", "bb", "ccc", "dddd"]
    assert table.schema.remove_metadata().equals(SCHEMA)
    assert read_metadata(out) == {"model": "m"}
    assert not retry.folder.exists()


def test_other_key_discards_stale_chunks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "part.parquet"
    PartialOutput(out, SCHEMA, {"model": "m", "dtype": "float32"}).write(_rows(["a"]))
    again = PartialOutput(out, SCHEMA, {"model": "m", "dtype": "bfloat16"})
    assert again.done() == set()
    assert "discarding partial results" in caplog.text
    assert again.finish() == 0 and pq.read_table(out).num_rows == 0


def test_unreadable_chunk_starts_over(tmp_path: Path) -> None:
    out = tmp_path / "part.parquet"
    partial = PartialOutput(out, SCHEMA, {"k": 1})
    partial.write(_rows(["a"]))
    (partial.folder / "chunk-000001.parquet").write_bytes(b"PAR1 truncated")
    assert PartialOutput(out, SCHEMA, {"k": 1}).done() == set()


def test_folder_is_hidden_and_not_a_parquet_name(tmp_path: Path) -> None:
    partial = PartialOutput(tmp_path / "abc.parquet", SCHEMA, {})
    assert partial.folder.name == ".abc.parquet.partial"
    assert list(tmp_path.glob("*.parquet")) == []  # cache globs never see it
