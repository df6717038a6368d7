"""Inputs of embed/fold: FASTA or shard Parquet, validated and de-duplicated."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from esmpipe.engine.inputs import InputError, read_inputs
from esmpipe.io.sequences import seq_hash


def test_fasta_dedup_and_skip(tmp_path: Path) -> None:
    path = tmp_path / "in.fa"
    path.write_text(">a\nMKV*\n>b\nmkv\n>c\n\n>d\nMK*V\n>e\nAAA\n")
    inputs = read_inputs(path)
    assert inputs.sequences == ["MKV", "AAA"]
    assert inputs.hashes == [seq_hash("MKV"), seq_hash("AAA")]
    assert inputs.records == 5
    assert dict(inputs.skipped) == {"empty": 1, "internal_stop": 1}


def test_shard_parquet(tmp_path: Path) -> None:
    path = tmp_path / "shard.parquet"
    seqs = ["MKV", "AAA", "MKV"]
    pq.write_table(pa.table({"seq_hash": [seq_hash(s) for s in seqs], "sequence": seqs}), path)
    inputs = read_inputs(path)
    assert inputs.sequences == ["MKV", "AAA"]


def test_shard_with_wrong_hash_names_row(tmp_path: Path) -> None:
    path = tmp_path / "stale.parquet"
    pq.write_table(pa.table({"seq_hash": [seq_hash("MKV"), "0" * 64], "sequence": ["MKV", "A"]}),
                   path)  # fmt: skip
    with pytest.raises(InputError, match=r"stale\.parquet: row 1"):
        read_inputs(path)


def test_shard_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"sequence": ["MKV"]}), path)
    with pytest.raises(InputError, match="seq_hash"):
        read_inputs(path)
