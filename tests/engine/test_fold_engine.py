"""Folding engine: per-protein summaries equal a direct `infer`, batching and chunking do
not change them, long sequences and out-of-memory batches get their statuses."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from Bio.PDB import PDBParser

from esmpipe.engine.fold import FoldingEngine
from esmpipe.models import EsmForProteinFolding
from esmpipe.models.esmfold import residue_constants as rc

SEQUENCES = ["MKVLLAGGW", "ACDEFGHIKLMNPQRSTVWY", "MKV", "AXBAAZC"]


@pytest.fixture(scope="module")
def model(tiny_esmfold: Path) -> EsmForProteinFolding:
    return EsmForProteinFolding.from_pretrained(tiny_esmfold, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def batched(model: EsmForProteinFolding) -> list:
    return FoldingEngine(model, max_tokens=10_000, num_recycles=1).fold(SEQUENCES)


def test_summaries_equal_direct_infer(model: EsmForProteinFolding, batched: list) -> None:
    for seq, result in zip(SEQUENCES, batched, strict=True):
        with torch.no_grad():
            out = model.infer([seq], num_recycles=1)
        ca = out.plddt[0, :, rc.atom_order["CA"]].numpy() * 100
        pae = out.predicted_aligned_error[0].numpy()
        assert result.status == "ok"
        assert result.plddt.dtype == np.float32 and result.plddt.shape == (len(seq),)
        np.testing.assert_allclose(result.plddt, ca, atol=1e-3)
        assert result.mean_plddt == pytest.approx(float(ca.mean()), abs=1e-3)
        assert result.ptm == pytest.approx(float(out.ptm[0]), abs=1e-5)
        assert result.max_pae == pytest.approx(float(pae.max()), abs=1e-3)
        assert result.mean_pae == pytest.approx(float(pae.mean()), abs=1e-3)
        assert 0 <= result.mean_plddt <= 100 and 0 <= result.ptm <= 1


def test_batch_composition_and_chunking_do_not_change_results(
    model: EsmForProteinFolding, batched: list
) -> None:
    single = FoldingEngine(model, max_tokens=1, num_recycles=1).fold(SEQUENCES)  # one per batch
    chunked = FoldingEngine(model, max_tokens=10_000, num_recycles=1, chunk_size=2).fold(SEQUENCES)
    model.set_chunk_size(None)
    for a, b, c in zip(batched, single, chunked, strict=True):
        for other in (b, c):
            np.testing.assert_allclose(a.plddt, other.plddt, atol=1e-3)
            assert a.ptm == pytest.approx(other.ptm, abs=1e-4)
            assert a.mean_pae == pytest.approx(other.mean_pae, abs=1e-3)


def test_pdb_has_every_residue_and_plddt_b_factors(batched: list) -> None:
    for seq, result in zip(SEQUENCES, batched, strict=True):
        structure = PDBParser(QUIET=True).get_structure("x", io.StringIO(result.pdb))
        residues = list(structure[0]["A"])
        assert len(residues) == len(seq)
        assert [r.id[1] for r in residues] == list(range(1, len(seq) + 1))
        names = [rc.restype_1to3.get(ch, "UNK") for ch in seq]
        assert [r.get_resname() for r in residues] == names
        ca_b = np.array([r["CA"].bfactor for r in residues])
        np.testing.assert_allclose(ca_b, result.plddt, atol=0.006)  # 2 decimals in the file


def test_too_long_and_oom(model: EsmForProteinFolding, monkeypatch: pytest.MonkeyPatch) -> None:
    real_infer = model.infer

    def infer(sequences, **kwargs):
        if len(sequences) > 1 or sequences[0] == "MKV":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real_infer(sequences, **kwargs)

    monkeypatch.setattr(model, "infer", infer)
    results = FoldingEngine(model, max_tokens=10_000, max_length=10, num_recycles=0).fold(SEQUENCES)
    assert [r.status for r in results] == ["ok", "too_long", "out_of_memory", "ok"]
    assert results[1].pdb is None and results[2].plddt is None
