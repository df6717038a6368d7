"""PDB and mmCIF writers round-trip through Biopython's parsers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from Bio.PDB import FastMMCIFParser, MMCIFParser, PDBParser

from esmpipe.io.structure import to_mmcif, to_pdb
from esmpipe.models.esmfold import residue_constants as rc


def _protein(seed: int = 0) -> dict[str, np.ndarray]:
    """Two chains (5 + 3 residues, one of them UNK) with random coordinates."""
    rng = np.random.default_rng(seed)
    sequence = "MKWGAVYX"
    aatype = np.array([rc.restype_order_with_x[c] for c in sequence])
    mask = rc.restype_atom37_mask[aatype].copy()
    mask[-1, :3] = 1.0  # the unknown residue: backbone N, CA, C only
    mask[4, rc.atom_order["OXT"]] = 1.0  # a chain-terminal oxygen
    return {
        "aatype": aatype,
        "atom37_positions": rng.uniform(-999, 999, size=(8, 37, 3)),
        "atom37_mask": mask,
        "residue_index": np.array([1, 2, 3, 4, 5, 1, 2, 10]),
        "b_factors": rng.uniform(0, 100, size=(8, 37)),
        "chain_index": np.array([0, 0, 0, 0, 0, 1, 1, 1]),
    }


def _expected(p: dict[str, np.ndarray]) -> list[tuple]:
    rows = []
    for i, aa in enumerate(p["aatype"]):
        chain = "AB"[p["chain_index"][i]]
        for a in np.flatnonzero(p["atom37_mask"][i]):
            rows.append(
                (chain, rc.resnames[aa], int(p["residue_index"][i]), rc.atom_types[a],
                 rc.atom_types[a][0], *np.round(p["atom37_positions"][i, a], 3),
                 round(float(p["b_factors"][i, a]), 2))
            )  # fmt: skip
    return rows


def _parsed(structure) -> list[tuple]:
    rows = []
    for chain in structure[0]:
        for residue in chain:
            for atom in residue:
                rows.append(
                    (chain.id, residue.get_resname(), residue.id[1], atom.get_id(),
                     atom.element, *np.round(atom.coord.astype(np.float64), 3),
                     round(float(atom.bfactor), 2))
                )  # fmt: skip
    return rows


def _same(parsed: list[tuple], expected: list[tuple]) -> None:
    assert len(parsed) == len(expected)
    for got, want in zip(parsed, expected, strict=True):
        assert got[:5] == want[:5]
        np.testing.assert_allclose(got[5:8], want[5:8], atol=1.5e-3)  # float32 coords
        assert got[8] == pytest.approx(want[8], abs=1e-6)


def test_pdb_roundtrip() -> None:
    p = _protein()
    text = to_pdb(**p)
    structure = PDBParser(QUIET=True).get_structure("x", io.StringIO(text))
    _same(_parsed(structure), _expected(p))
    lines = text.splitlines()
    assert all(len(line) == 80 for line in lines if line.startswith("ATOM"))
    assert [line[:3] for line in lines].count("TER") == 2
    assert lines[-1] == "END"
    # Column alignment: " CA " starts in column 13, the element sits in 77-78.
    ca = next(line for line in lines if line[12:16] == " CA ")
    assert ca[76:78] == " C" and ca[21] == "A"


def test_mmcif_roundtrip() -> None:
    p = _protein(1)
    text = to_mmcif(**p, name="two chains")
    for parser in (MMCIFParser(QUIET=True), FastMMCIFParser(QUIET=True)):
        structure = parser.get_structure("x", io.StringIO(text))
        _same(_parsed(structure), _expected(p))


def test_per_residue_b_factors_and_single_chain() -> None:
    p = _protein(2)
    p["b_factors"] = np.linspace(0, 100, 8)
    p["chain_index"] = None
    p["residue_index"] = np.arange(1, 9)
    structure = PDBParser(QUIET=True).get_structure("x", io.StringIO(to_pdb(**p)))
    residues = list(structure[0]["A"])
    assert len(residues) == 8
    for residue, b in zip(residues, np.linspace(0, 100, 8), strict=True):
        assert {round(atom.bfactor, 2) for atom in residue} == {round(b, 2)}


def test_shape_errors() -> None:
    p = _protein()
    with pytest.raises(ValueError, match="atom37_positions"):
        to_pdb(**{**p, "atom37_positions": p["atom37_positions"][:, :14]})
    with pytest.raises(ValueError, match="mmCIF"):
        to_pdb(**{**p, "residue_index": p["residue_index"] + 10_000})
    with pytest.raises(ValueError, match="contiguous"):
        to_pdb(**{**p, "chain_index": np.array([0, 1, 0, 0, 0, 1, 1, 1])})


def test_writers_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, esmpipe.io.structure; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
