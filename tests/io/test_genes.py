"""Gene calls equal Prodigal's own meta-mode output on the contigs pyrodigal ships."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from esmpipe.io.fasta import read_fasta
from esmpipe.io.genes import call_genes


def _data() -> Path:
    data = Path(str(importlib.resources.files("pyrodigal.tests") / "data"))
    for name in ("SRR492066.fna.gz", "SRR492066.meta.faa.gz", "SRR492066.meta.gff"):
        assert (data / name).is_file(), f"pyrodigal's test data {name} is missing from {data}"
    return data


def _gff(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t")
        attributes = dict(kv.split("=", 1) for kv in fields[8].strip(";").split(";"))
        rows.append(
            {
                "contig": fields[0],
                "start": int(fields[3]),
                "end": int(fields[4]),
                "strand": {"+": 1, "-": -1}[fields[6]],
                "partial": attributes["partial"],
            }
        )
    return rows


def test_calls_equal_prodigal_meta() -> None:
    data = _data()
    genes = list(call_genes(data / "SRR492066.fna.gz", sample="s1"))
    proteins = list(read_fasta(data / "SRR492066.meta.faa.gz"))
    gff = _gff(data / "SRR492066.meta.gff")
    assert len(genes) == len(proteins) == len(gff) > 50
    assert [g.protein_id for g in genes] == [p.id for p in proteins]
    assert [g.sequence for g in genes] == [p.sequence for p in proteins]
    called = [
        {"contig": g.contig, "start": g.start, "end": g.end, "strand": g.strand,
         "partial": g.partial}
        for g in genes
    ]  # fmt: skip
    assert called == gff
    assert {g.sample for g in genes} == {"s1"}
    # Both partial kinds occur, and complete genes end with the stop as Prodigal writes it.
    assert {"00", "10"} <= {g.partial for g in genes}
    assert all(g.sequence.endswith("*") for g in genes if g.partial == "00")


def test_contig_without_sequence_gives_no_genes(tmp_path: Path) -> None:
    path = tmp_path / "c.fna"
    path.write_text(">empty\n>short\nACGT\n")
    assert list(call_genes(path)) == []
