"""`esmpipe ingest` on records of the wrong type, and contigs on which no gene is called."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from esmpipe.cli import main
from esmpipe.commands.ingest import contigs_path
from esmpipe.io.fasta import read_fasta
from esmpipe.io.tables import CONTIGS_SCHEMA, PROTEINS_SCHEMA, read_metadata

TRX = ("SDKIIHLTDDSFDTDVLKADGAILVDFWAEWCGPCKMIAPILDEIADEYQGKLTVAKLNIDQNPGTAPKYGIRGIPTLLLFKNG"
       "EVAASKVGALSKGQLKEFLDANLA")
DNA = "ATGAGCGATAAAATTATTCACCTGACTGACGACAGTTTTGACACGGATGTACTCAAAGCGGACGGGGCGATCCTCGTC"


def _contigs(n: int = 2, size: int = 6000) -> list[tuple[str, str]]:
    """`n` contigs of `size` bases cut from the metagenome contig pyrodigal ships."""
    data = Path(str(importlib.resources.files("pyrodigal.tests") / "data"))
    (record,) = read_fasta(data / "SRR492066.fna.gz")
    assert len(record.sequence) >= n * size
    return [(f"c{i + 1}", record.sequence[i * size : (i + 1) * size]) for i in range(n)]


def _write(path: Path, records: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in records))
    return path


def _ingest(tmp_path: Path, source: Path, kind: str, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "work" / "ingest" / "S.parquet"
    rc = main(["ingest", "--sample", "S", "--type", kind, "--input", str(source),
               "--output", str(out), *extra])  # fmt: skip
    return rc, out


def test_contigs_path_is_beside_the_output() -> None:
    assert contigs_path("work/ingest/S.parquet") == Path("work/ingest/S.contigs.parquet")
    assert contigs_path("out/a.b.parquet") == Path("out/a.b.contigs.parquet")
    assert contigs_path("out/S") == Path("out/S.contigs.parquet")


def test_nucleotide_record_in_protein_sample(tmp_path: Path) -> None:
    source = _write(tmp_path / "p.faa", [("p1", TRX), ("dna1", DNA), ("p2", "MKV"),
                                         ("p3", TRX[:50])])  # fmt: skip
    rc, out = _ingest(tmp_path, source, "protein")
    assert rc == 0
    rows = pq.read_table(out).to_pylist()
    assert [r["status"] for r in rows] == ["ok", "nucleotide_sequence", "ok", "ok"]
    dna = rows[1]
    assert dna["protein_id"] == "dna1" and dna["sequence"] == DNA and dna["seq_hash"] is None
    assert read_metadata(out)["status_counts"] == {"nucleotide_sequence": 1, "ok": 3}
    assert not contigs_path(out).exists()


def test_protein_file_of_dna_is_an_error_naming_file_record_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = _write(tmp_path / "genes.fa", [("g1", DNA), ("g2", DNA[::-1]), ("empty", "")])
    rc, out = _ingest(tmp_path, source, "protein")
    assert rc == 2
    err = capsys.readouterr().err
    assert str(source) in err and "'g1'" in err and "record 1" in err
    assert "declare it as type contigs in the sample sheet" in err
    assert not out.exists()


def test_allow_type_mismatch_keeps_every_record_with_its_status(tmp_path: Path) -> None:
    source = _write(tmp_path / "genes.fa", [("g1", DNA), ("g2", DNA[::-1]), ("empty", "")])
    rc, out = _ingest(tmp_path, source, "protein", "--allow-type-mismatch")
    assert rc == 0
    statuses = [r["status"] for r in pq.read_table(out).to_pylist()]
    assert statuses == ["nucleotide_sequence", "nucleotide_sequence", "empty"]


def test_half_the_records_mismatched_is_the_whole_file(tmp_path: Path) -> None:
    source = _write(tmp_path / "mixed.fa", [("p1", TRX), ("g1", DNA)])
    assert _ingest(tmp_path, source, "protein")[0] == 2
    source = _write(tmp_path / "mostly.fa", [("p1", TRX), ("p2", TRX[1:]), ("g1", DNA)])
    assert _ingest(tmp_path, source, "protein")[0] == 0


def test_contigs_table_has_a_row_per_record(tmp_path: Path) -> None:
    (c1, s1), (c2, s2) = _contigs(2)
    records = [
        (c1, s1.lower()),  # soft-masked: the same genes
        ("short", "ACGTACGTTAGCATCGATCGATCGGGCTA"),  # valid DNA, too short for a gene
        ("nothing", ""),
        ("prot", TRX),
        (c1, s1),  # the same contig id again
        ("gaps", "ACGT--ACGT"),
        ("bad", "ACGT1ACGT"),
        (c2, s2),
    ]
    source = _write(tmp_path / "contigs.fna", records)
    rc, out = _ingest(tmp_path, source, "contigs")
    assert rc == 0
    contigs_out = tmp_path / "work" / "ingest" / "S.contigs.parquet"
    table = pq.read_table(contigs_out)
    assert table.schema.remove_metadata() == CONTIGS_SCHEMA
    rows = table.to_pylist()
    assert [r["contig"] for r in rows] == [c1, "short", "nothing", "prot", f"{c1}.dup2", "gaps",
                                           "bad", c2]  # fmt: skip
    assert [r["status"] for r in rows] == ["ok", "no_genes", "empty", "protein_in_contigs",
                                           "ok", "gapped", "invalid_characters", "ok"]  # fmt: skip
    assert [r["length"] for r in rows] == [len(s1), 29, 0, len(TRX), len(s1), 10, 9, len(s2)]
    assert {r["sample"] for r in rows} == {"S"}
    genes = [r["genes"] for r in rows]
    assert genes[0] == genes[4] > 0 and genes[7] > 0
    assert genes[1] == genes[2] == genes[3] == genes[5] == genes[6] == 0

    proteins = pq.read_table(out)
    assert proteins.schema.remove_metadata() == PROTEINS_SCHEMA
    protein_rows = proteins.to_pylist()
    # Every gene of the contigs table is a proteins row, named after its (renamed) contig.
    assert len(protein_rows) == sum(genes)
    per_contig: dict[str, int] = {}
    for row in protein_rows:
        per_contig[row["contig"]] = per_contig.get(row["contig"], 0) + 1
        assert row["protein_id"].startswith(f"{row['contig']}_")
    assert per_contig == {r["contig"]: r["genes"] for r in rows if r["genes"]}
    first = [r for r in protein_rows if r["contig"] == c1]
    second = [r for r in protein_rows if r["contig"] == f"{c1}.dup2"]
    assert [r["sequence"] for r in first] == [r["sequence"] for r in second]
    assert second[0]["protein_id"] == f"{c1}.dup2_1"

    meta = read_metadata(contigs_out)
    assert meta["status_counts"] == {"empty": 1, "gapped": 1, "invalid_characters": 1,
                                     "no_genes": 1, "ok": 3, "protein_in_contigs": 1}  # fmt: skip
    assert meta["duplicate_ids_renamed"] == 1
    assert read_metadata(out)["contigs_output"] == str(contigs_out)


def test_protein_file_declared_as_contigs_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = _write(tmp_path / "proteins.faa", [("p1", TRX + "*"), ("p2", "MKVLLAGHE")])
    rc, out = _ingest(tmp_path, source, "contigs")
    assert rc == 2
    err = capsys.readouterr().err
    assert str(source) in err and "'p1'" in err
    assert "declare it as type protein in the sample sheet" in err
    assert not out.exists() and not contigs_path(out).exists()


def test_contigs_output_option_and_stale_contigs_table(tmp_path: Path) -> None:
    source = _write(tmp_path / "c.fna", [("short", "ACGTACGTTAGCATCG")])
    elsewhere = tmp_path / "elsewhere.parquet"
    rc, out = _ingest(tmp_path, source, "contigs", "--contigs-output", str(elsewhere))
    assert rc == 0 and elsewhere.is_file() and not contigs_path(out).exists()
    assert [r["status"] for r in pq.read_table(elsewhere).to_pylist()] == ["no_genes"]
    assert pq.read_table(out).num_rows == 0
    # The sample re-declared as protein: a contigs table left by an earlier run goes.
    assert _ingest(tmp_path, source, "contigs")[0] == 0 and contigs_path(out).exists()
    proteins = _write(tmp_path / "p.faa", [("p1", TRX)])
    assert _ingest(tmp_path, proteins, "protein")[0] == 0
    assert not contigs_path(out).exists()
