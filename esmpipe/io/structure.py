"""PDB and mmCIF text for predicted protein structures (atom37 layout, numpy in).

Both writers take the same arrays, one entry per residue over all chains:

- `aatype` [L] int: residue index in `ARNDCQEGHILKMFPSTWYV` order, 20 = unknown (UNK);
- `atom37_positions` [L, 37, 3] float, Angstrom;
- `atom37_mask` [L, 37]: nonzero where the atom exists (only these are written);
- `residue_index` [L] int: the residue number WRITTEN to the file (1-based as
  PDB files count; the model's 0-based index needs +1 before it comes here);
- `b_factors` [L, 37] or [L]: the B-factor column, here pLDDT on a 0-100 scale
  (a per-residue value is repeated for each atom);
- `chain_index` [L] int or None: chains are named A, B, ... in order of first
  appearance (None: one chain "A"); residues of one chain must be contiguous.

Element symbols are the first letter of the atom name (protein heavy atoms are
only C, N, O and S). Coordinates are written with 3 decimals, B-factors with 2.

This module imports numpy and the residue tables only: no torch, no models.
"""

from __future__ import annotations

import string
from collections.abc import Iterator

import numpy as np

from esmpipe.models.esmfold import residue_constants as rc

# Single-character chain ids, as PDB allows them (62 chains at most).
CHAIN_IDS = string.ascii_uppercase + string.ascii_lowercase + string.digits


def _check(
    aatype: np.ndarray,
    atom37_positions: np.ndarray,
    atom37_mask: np.ndarray,
    residue_index: np.ndarray,
    b_factors: np.ndarray,
    chain_index: np.ndarray | None,
) -> tuple[np.ndarray, ...]:
    aatype = np.asarray(aatype).astype(np.int64)
    positions = np.asarray(atom37_positions, dtype=np.float64)
    mask = np.asarray(atom37_mask)
    residue_index = np.asarray(residue_index).astype(np.int64)
    b = np.asarray(b_factors, dtype=np.float64)
    (n,) = aatype.shape
    if positions.shape != (n, rc.atom_type_num, 3):
        raise ValueError(f"atom37_positions must be [{n}, 37, 3], got {list(positions.shape)}")
    if mask.shape != (n, rc.atom_type_num):
        raise ValueError(f"atom37_mask must be [{n}, 37], got {list(mask.shape)}")
    if residue_index.shape != (n,):
        raise ValueError(f"residue_index must be [{n}], got {list(residue_index.shape)}")
    if b.shape == (n,):
        b = np.repeat(b[:, None], rc.atom_type_num, axis=1)
    if b.shape != (n, rc.atom_type_num):
        raise ValueError(f"b_factors must be [{n}] or [{n}, 37], got {list(b.shape)}")
    if np.any((aatype < 0) | (aatype > rc.unk_restype_index)):
        raise ValueError("aatype values must lie in 0..20")
    if chain_index is None:
        chains = np.zeros(n, dtype=np.int64)
    else:
        raw = np.asarray(chain_index).astype(np.int64)
        if raw.shape != (n,):
            raise ValueError(f"chain_index must be [{n}], got {list(raw.shape)}")
        # Renumber chains 0, 1, ... in order of first appearance.
        _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
        rank = np.argsort(np.argsort(first))
        chains = rank[inverse]
        # Numbered by first appearance, contiguous chains never step back.
        if np.any(np.diff(chains) < 0):
            raise ValueError("residues of a chain must be contiguous in chain_index")
        if len(first) > len(CHAIN_IDS):
            raise ValueError(f"at most {len(CHAIN_IDS)} chains fit single-letter chain ids")
    return aatype, positions, mask != 0, residue_index, b, chains


def _residues(
    aatype: np.ndarray, positions: np.ndarray, mask: np.ndarray, chains: np.ndarray
) -> Iterator[tuple[int, str, str, list[tuple[int, str, np.ndarray]]]]:
    """Residues in file order: (i, residue name, chain id, [(atom37 index, atom name, xyz)])
    with only the atoms that exist."""
    for i in range(len(aatype)):
        atoms = [(a, rc.atom_types[a], positions[i, a]) for a in np.flatnonzero(mask[i])]
        yield i, rc.resnames[aatype[i]], CHAIN_IDS[chains[i]], atoms


def _atom_name_field(name: str) -> str:
    # PDB column rule: names shorter than 4 characters start in column 14, so the
    # one-letter element symbol lines up in column 14 for every atom.
    return name if len(name) == 4 else f" {name:<3}"


def to_pdb(
    aatype: np.ndarray,
    atom37_positions: np.ndarray,
    atom37_mask: np.ndarray,
    residue_index: np.ndarray,
    b_factors: np.ndarray,
    chain_index: np.ndarray | None = None,
) -> str:
    """PDB text: ATOM records, TER after each chain, END; B-factor = pLDDT (0-100)."""
    aatype, positions, mask, residue_index, b, chains = _check(
        aatype, atom37_positions, atom37_mask, residue_index, b_factors, chain_index
    )
    if len(residue_index) and (residue_index.min() < -999 or residue_index.max() > 9999):
        raise ValueError("residue numbers outside -999..9999 do not fit PDB; write mmCIF")
    if int(mask.sum()) + len(set(chains.tolist())) > 99999:
        raise ValueError("more than 99999 atoms do not fit PDB serial numbers; write mmCIF")
    lines = ["REMARK   1 B-FACTOR COLUMN: PREDICTED LDDT (PLDDT, 0-100) PER ATOM"]
    serial = 1
    n = len(aatype)
    for i, resname, chain_id, atoms in _residues(aatype, positions, mask, chains):
        for a, name, (x, y, z) in atoms:
            lines.append(
                f"{'ATOM':<6}{serial:>5} {_atom_name_field(name)} {resname:>3} {chain_id}"
                f"{residue_index[i]:>4}    {x:>8.3f}{y:>8.3f}{z:>8.3f}{1.0:>6.2f}"
                f"{b[i, a]:>6.2f}          {name[0]:>2}  "
            )
            serial += 1
        if i == n - 1 or chains[i + 1] != chains[i]:
            lines.append(f"{'TER':<6}{serial:>5}      {resname:>3} {chain_id}{residue_index[i]:>4}")
            serial += 1
    lines.append("END")
    return "\n".join(lines) + "\n"


_ATOM_SITE_FIELDS = (
    "group_PDB", "id", "type_symbol", "label_atom_id", "label_alt_id", "label_comp_id",
    "label_asym_id", "label_entity_id", "label_seq_id", "pdbx_PDB_ins_code",
    "Cartn_x", "Cartn_y", "Cartn_z", "occupancy", "B_iso_or_equiv",
    "auth_seq_id", "auth_comp_id", "auth_asym_id", "auth_atom_id", "pdbx_PDB_model_num",
)  # fmt: skip


def to_mmcif(
    aatype: np.ndarray,
    atom37_positions: np.ndarray,
    atom37_mask: np.ndarray,
    residue_index: np.ndarray,
    b_factors: np.ndarray,
    chain_index: np.ndarray | None = None,
    *,
    name: str = "esmpipe",
) -> str:
    """mmCIF text: entities, polymer sequences, and `_atom_site` with B = pLDDT (0-100).

    One entity per chain; `label_seq_id` counts residues 1.. within each chain,
    `auth_seq_id` is `residue_index`.
    """
    aatype, positions, mask, residue_index, b, chains = _check(
        aatype, atom37_positions, atom37_mask, residue_index, b_factors, chain_index
    )
    block = "".join(c if c.isalnum() or c in "_-." else "_" for c in name) or "esmpipe"
    lines = [f"data_{block}", "#", f"_entry.id {block}", "#"]
    chain_numbers = sorted(set(chains.tolist()))
    lines += ["loop_", "_entity.id", "_entity.type"]
    lines += [f"{c + 1} polymer" for c in chain_numbers]
    lines += ["#", "loop_", "_struct_asym.id", "_struct_asym.entity_id"]
    lines += [f"{CHAIN_IDS[c]} {c + 1}" for c in chain_numbers]
    lines += ["#", "loop_"] + [f"_entity_poly_seq.{f}" for f in ("entity_id", "num", "mon_id")]
    label_seq = np.zeros(len(aatype), dtype=np.int64)
    for c in chain_numbers:
        members = np.flatnonzero(chains == c)
        label_seq[members] = np.arange(1, len(members) + 1)
        lines += [f"{c + 1} {label_seq[i]} {rc.resnames[aatype[i]]}" for i in members]
    lines += ["#", "loop_"] + [f"_atom_site.{f}" for f in _ATOM_SITE_FIELDS]
    serial = 1
    for i, resname, chain_id, atoms in _residues(aatype, positions, mask, chains):
        for a, atom, (x, y, z) in atoms:
            lines.append(
                f"ATOM {serial:<6d} {atom[0]} {atom:<4} . {resname} {chain_id} "
                f"{chains[i] + 1} {label_seq[i]:<4d} ? {x:.3f} {y:.3f} {z:.3f} 1.00 "
                f"{b[i, a]:.2f} {residue_index[i]} {resname} {chain_id} {atom} 1"
            )
            serial += 1
    lines.append("#")
    return "\n".join(lines) + "\n"


def parse_pdb(text: str) -> dict[str, np.ndarray]:
    """The arrays `to_pdb` was given, back from PDB text (ATOM records, first model).

    Returns `aatype`, `atom37_positions`, `atom37_mask`, `residue_index`,
    `b_factors` [L, 37] and `chain_index` (0, 1, ... by first appearance). Atoms
    outside atom37 (hydrogens, OXT) and HETATM records are dropped; unknown residue
    names become UNK.
    """
    unk = rc.resnames.index("UNK")
    residues: dict[tuple[str, int, str], int] = {}
    aatype: list[int] = []
    residue_index: list[int] = []
    chain_of: list[int] = []
    chains: dict[str, int] = {}
    atoms: list[tuple[int, int, float, float, float, float]] = []
    for line in text.splitlines():
        if line.startswith("ENDMDL"):
            break
        if not line.startswith("ATOM  "):
            continue
        name, resname, chain = line[12:16].strip(), line[17:20].strip(), line[21]
        number, insertion = int(line[22:26]), line[26]
        key = (chain, number, insertion)
        if key not in residues:
            residues[key] = len(aatype)
            aatype.append(rc.resnames.index(resname) if resname in rc.resnames else unk)
            residue_index.append(number)
            chain_of.append(chains.setdefault(chain, len(chains)))
        slot = rc.atom_order.get(name)
        if slot is None:
            continue
        b = float(line[60:66]) if line[60:66].strip() else 0.0
        atoms.append((residues[key], slot, float(line[30:38]), float(line[38:46]),
                      float(line[46:54]), b))
    n = len(aatype)
    positions = np.zeros((n, rc.atom_type_num, 3))
    mask = np.zeros((n, rc.atom_type_num), dtype=bool)
    b_factors = np.zeros((n, rc.atom_type_num))
    for i, slot, x, y, z, b in atoms:
        positions[i, slot] = (x, y, z)
        mask[i, slot] = True
        b_factors[i, slot] = b
    return {
        "aatype": np.asarray(aatype, dtype=np.int64),
        "atom37_positions": positions,
        "atom37_mask": mask,
        "residue_index": np.asarray(residue_index, dtype=np.int64),
        "b_factors": b_factors,
        "chain_index": np.asarray(chain_of, dtype=np.int64),
    }


def convert_pdb(text: str, fmt: str, *, name: str = "esmpipe") -> str:
    """PDB text as `fmt`: "pdb" returns it as stored, "cif" rewrites it as mmCIF
    (same atoms, coordinates and B-factors; `name` is the data block's name)."""
    if fmt == "pdb":
        return text if text.endswith("\n") else text + "\n"
    if fmt in ("cif", "mmcif"):
        return to_mmcif(**parse_pdb(text), name=name)
    raise ValueError(f"unknown structure format {fmt!r}; choose pdb or cif")
