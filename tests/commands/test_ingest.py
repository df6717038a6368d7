"""`esmpipe ingest` on protein and contig FASTA files."""

from __future__ import annotations

import gzip
import importlib.resources
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from esmpipe.cli import main
from esmpipe.io.fasta import read_fasta
from esmpipe.io.sequences import seq_hash
from esmpipe.io.tables import PROTEINS_SCHEMA, file_sha256, read_metadata

PROTEINS = """>p1 ok with stop
MKVLLA*
>p2 empty
>p1 duplicate id
mkvlla
>p3 internal stop
MK*VL
>p4 bad
MK1V
>p1 third copy
MKV
"""


def test_ingest_proteins(tmp_path: Path) -> None:
    source = tmp_path / "s1.faa.gz"
    source.write_bytes(gzip.compress(PROTEINS.encode()))
    out = tmp_path / "out" / "s1.parquet"
    rc = main(["ingest", "--sample", "s1", "--type", "protein", "--input", str(source),
               "--output", str(out)])  # fmt: skip
    assert rc == 0
    table = pq.read_table(out)
    assert table.schema.remove_metadata() == PROTEINS_SCHEMA
    rows = table.to_pylist()
    assert [r["protein_id"] for r in rows] == ["p1", "p2", "p1.dup2", "p3", "p4", "p1.dup3"]
    assert [r["status"] for r in rows] == [
        "ok", "empty", "ok", "internal_stop", "invalid_characters", "ok",
    ]  # fmt: skip
    assert rows[0]["sequence"] == rows[2]["sequence"] == "MKVLLA"
    assert rows[0]["seq_hash"] == rows[2]["seq_hash"] == seq_hash("MKVLLA")
    assert [r["seq_hash"] is None for r in rows] == [False, True, False, True, True, False]
    assert [r["length"] for r in rows] == [6, 0, 6, 5, 4, 3]
    assert {r["sample"] for r in rows} == {"s1"}
    assert all(r[c] is None for r in rows for c in ("contig", "start", "end", "strand", "partial"))
    meta = read_metadata(out)
    assert meta["input"] == str(source)
    assert meta["input_sha256"] == file_sha256(source)
    assert meta["status_counts"]["ok"] == 3
    assert meta["duplicate_ids_renamed"] == 2


def test_ingest_contigs(tmp_path: Path) -> None:
    data = Path(str(importlib.resources.files("pyrodigal.tests") / "data"))
    source = data / "SRR492066.fna.gz"
    out = tmp_path / "contigs.parquet"
    rc = main(["ingest", "--sample", "m1", "--type", "contigs", "--input", str(source),
               "--output", str(out)])  # fmt: skip
    assert rc == 0
    rows = pq.read_table(out).to_pylist()
    prodigal = list(read_fasta(data / "SRR492066.meta.faa.gz"))
    assert [r["protein_id"] for r in rows] == [p.id for p in prodigal]
    assert [r["sequence"] for r in rows] == [p.sequence.rstrip("*") for p in prodigal]
    assert {r["status"] for r in rows} == {"ok"}
    first = rows[0]
    assert (first["contig"], first["start"], first["end"], first["strand"], first["partial"]) == (
        "NODE_23_length_79939_cov_26.984653", 1, 177, -1, "10",
    )  # fmt: skip
    assert read_metadata(out)["type"] == "contigs"


def test_malformed_input_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "bad.fa"
    source.write_text("MKV\n>p1\nMKV\n")
    out = tmp_path / "bad.parquet"
    rc = main(["ingest", "--sample", "s", "--type", "protein", "--input", str(source),
               "--output", str(out)])  # fmt: skip
    assert rc == 2
    assert str(source) in capsys.readouterr().err
    assert not out.exists()
