"""`esmpipe fold` end to end on a tiny random ESMFold checkpoint."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.parquet as pq
from Bio.PDB import PDBParser

from esmpipe.cli import main
from esmpipe.io.sequences import seq_hash
from esmpipe.io.tables import STRUCTURES_SCHEMA, read_metadata


def test_fold_fasta(tiny_esmfold: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.fa"
    source.write_text(">a\nMKVLLAGGW*\n>b\nMKVLLAGGW\n>c\nACDEFGHIK\n>d\n" + "G" * 30 + "\n")
    out = tmp_path / "structures.parquet"
    rc = main(["fold", "--model", str(tiny_esmfold), "--input", str(source), "--output",
               str(out), "--num-recycles", "1", "--chunk-size", "4", "--max-length", "20",
               "--device", "cpu"])  # fmt: skip
    assert rc == 0
    table = pq.read_table(out)
    assert table.schema.remove_metadata() == STRUCTURES_SCHEMA
    order = [seq_hash(s) for s in ("MKVLLAGGW", "ACDEFGHIK", "G" * 30)]
    rows = sorted(table.to_pylist(), key=lambda r: order.index(r["seq_hash"]))
    assert [r["seq_hash"] for r in rows] == order and table.num_rows == 3
    assert [r["status"] for r in rows] == ["ok", "ok", "too_long"]
    for row in rows[:2]:
        assert 0 <= row["mean_plddt"] <= 100 and 0 <= row["ptm"] <= 1
        assert len(row["plddt"]) == row["length"]
        assert all(0 <= v <= 100 for v in row["plddt"])
        assert 0 <= row["mean_pae"] <= row["max_pae"]
        structure = PDBParser(QUIET=True).get_structure("x", io.StringIO(row["pdb"]))
        assert len(list(structure.get_residues())) == row["length"]
    assert rows[2]["pdb"] is None and rows[2]["mean_plddt"] is None
    meta = read_metadata(out)
    assert meta["num_recycles"] == 1 and meta["chunk_size"] == 4
    assert meta["dtype"] == "float32" and meta["device"] == "cpu"
    for key in ("model", "revision", "esmpipe_version", "torch_version", "input_sha256"):
        assert key in meta


def test_fold_flags_recycles_early_stop_and_non_finite(
    tiny_esmfold: Path, tmp_path: Path, monkeypatch
) -> None:
    from esmpipe.models import EsmForProteinFolding

    real_infer = EsmForProteinFolding.infer

    def infer(self, sequences, **kwargs):  # NaN pLDDT for one protein
        out = real_infer(self, sequences, **kwargs)
        if "ACDEFGHIK" in sequences:
            out.plddt = out.plddt.clone()
            out.plddt[sequences.index("ACDEFGHIK")] = float("nan")
        return out

    monkeypatch.setattr(EsmForProteinFolding, "infer", infer)
    source = tmp_path / "in.fa"
    source.write_text(">a\nMKVLLAGGW\n>b\nACDEFGHIK\n")
    out = tmp_path / "structures.parquet"
    rc = main(["fold", "--model", str(tiny_esmfold), "--input", str(source), "--output",
               str(out), "--num-recycles", "3", "--early-stop-tolerance", "1e6",
               "--device", "cpu"])  # fmt: skip
    assert rc == 0
    table = pq.read_table(out)
    assert table.schema.remove_metadata() == STRUCTURES_SCHEMA
    rows = {r["seq_hash"]: r for r in table.to_pylist()}
    good, bad = rows[seq_hash("MKVLLAGGW")], rows[seq_hash("ACDEFGHIK")]
    assert good["status"] == "ok" and isinstance(good["flags"], list)
    assert good["recycles"] == 1  # the huge tolerance stops after the first recycle
    assert bad["status"] == "non_finite" and bad["flags"] == []
    for column in ("mean_plddt", "ptm", "plddt", "max_pae", "mean_pae", "pdb"):
        assert bad[column] is None
    meta = read_metadata(out)
    assert meta["early_stop_tolerance"] == 1e6 and meta["num_recycles"] == 3
    assert meta["output_version"] == 2 and meta["chunk_size"] == "auto"


def test_fold_rejects_a_negative_tolerance(tiny_esmfold: Path, tmp_path: Path) -> None:
    import pytest

    source = tmp_path / "in.fa"
    source.write_text(">a\nMKV\n")
    with pytest.raises(SystemExit):
        main(["fold", "--model", str(tiny_esmfold), "--input", str(source), "--output",
              str(tmp_path / "o.parquet"), "--early-stop-tolerance", "-1"])  # fmt: skip
