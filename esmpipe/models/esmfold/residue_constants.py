"""Residue geometry tables for the structure module (AlphaFold2 supplement, section 1.8).

DATA ONLY: this module must not import torch, so that IO code (PDB/mmCIF writers)
can read residue names and atom orders without loading the model stack. The
numeric tables are the published AlphaFold2 / openfold constants; the derived
arrays at the bottom are built once at import with numpy.

Conventions:
- residue index order `ARNDCQEGHILKMFPSTWYV`, 20 = unknown (`X`, `UNK`);
- atom37: one fixed slot per heavy-atom name over all residue types;
- atom14: the dense per-residue layout (at most 14 heavy atoms, TRP has 14);
- rigid groups: 0 backbone, 1 pre-omega, 2 phi, 3 psi, 4-7 chi1-chi4.
"""

from __future__ import annotations

import numpy as np

restypes: list[str] = list("ARNDCQEGHILKMFPSTWYV")
restype_order: dict[str, int] = {r: i for i, r in enumerate(restypes)}
restype_num = len(restypes)  # 20
unk_restype_index = restype_num  # X / UNK
restypes_with_x: list[str] = restypes + ["X"]
restype_order_with_x: dict[str, int] = {r: i for i, r in enumerate(restypes_with_x)}

restype_1to3: dict[str, str] = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS",
    "Q": "GLN", "E": "GLU", "G": "GLY", "H": "HIS", "I": "ILE",
    "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE", "P": "PRO",
    "S": "SER", "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL",
}  # fmt: skip
restype_3to1: dict[str, str] = {three: one for one, three in restype_1to3.items()}
unk_restype = "UNK"
resnames: list[str] = [restype_1to3[r] for r in restypes] + [unk_restype]

# The 37 heavy-atom slots of the atom37 layout, in the canonical order.
atom_types: list[str] = [
    "N", "CA", "C", "CB", "O", "CG", "CG1", "CG2", "OG", "OG1", "SG", "CD",
    "CD1", "CD2", "ND1", "ND2", "OD1", "OD2", "SD", "CE", "CE1", "CE2", "CE3",
    "NE", "NE1", "NE2", "OE1", "OE2", "CH2", "NH1", "NH2", "OH", "CZ", "CZ2",
    "CZ3", "NZ", "OXT",
]  # fmt: skip
atom_order: dict[str, int] = {name: i for i, name in enumerate(atom_types)}
atom_type_num = len(atom_types)  # 37

# The atom14 layout: per residue type, the heavy atoms in slot order ("" = empty slot).
# fmt: off
_E = ""
restype_name_to_atom14_names: dict[str, list[str]] = {
    "ALA": ["N", "CA", "C", "O", "CB", _E, _E, _E, _E, _E, _E, _E, _E, _E],
    "ARG": ["N", "CA", "C", "O", "CB", "CG", "CD", "NE", "CZ", "NH1", "NH2", _E, _E, _E],
    "ASN": ["N", "CA", "C", "O", "CB", "CG", "OD1", "ND2", _E, _E, _E, _E, _E, _E],
    "ASP": ["N", "CA", "C", "O", "CB", "CG", "OD1", "OD2", _E, _E, _E, _E, _E, _E],
    "CYS": ["N", "CA", "C", "O", "CB", "SG", _E, _E, _E, _E, _E, _E, _E, _E],
    "GLN": ["N", "CA", "C", "O", "CB", "CG", "CD", "OE1", "NE2", _E, _E, _E, _E, _E],
    "GLU": ["N", "CA", "C", "O", "CB", "CG", "CD", "OE1", "OE2", _E, _E, _E, _E, _E],
    "GLY": ["N", "CA", "C", "O", _E, _E, _E, _E, _E, _E, _E, _E, _E, _E],
    "HIS": ["N", "CA", "C", "O", "CB", "CG", "ND1", "CD2", "CE1", "NE2", _E, _E, _E, _E],
    "ILE": ["N", "CA", "C", "O", "CB", "CG1", "CG2", "CD1", _E, _E, _E, _E, _E, _E],
    "LEU": ["N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", _E, _E, _E, _E, _E, _E],
    "LYS": ["N", "CA", "C", "O", "CB", "CG", "CD", "CE", "NZ", _E, _E, _E, _E, _E],
    "MET": ["N", "CA", "C", "O", "CB", "CG", "SD", "CE", _E, _E, _E, _E, _E, _E],
    "PHE": ["N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ", _E, _E, _E],
    "PRO": ["N", "CA", "C", "O", "CB", "CG", "CD", _E, _E, _E, _E, _E, _E, _E],
    "SER": ["N", "CA", "C", "O", "CB", "OG", _E, _E, _E, _E, _E, _E, _E, _E],
    "THR": ["N", "CA", "C", "O", "CB", "OG1", "CG2", _E, _E, _E, _E, _E, _E, _E],
    "TRP": [
        "N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "NE1", "CE2", "CE3", "CZ2", "CZ3", "CH2",
    ],
    "TYR": ["N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ", "OH", _E, _E],
    "VAL": ["N", "CA", "C", "O", "CB", "CG1", "CG2", _E, _E, _E, _E, _E, _E, _E],
    "UNK": [_E] * 14,
}
# fmt: on

# Heavy atoms present in each residue type (defines the atom37 existence mask).
# fmt: off
residue_atoms: dict[str, list[str]] = {
    "ALA": ["C", "CA", "CB", "N", "O"],
    "ARG": ["C", "CA", "CB", "CG", "CD", "CZ", "N", "NE", "O", "NH1", "NH2"],
    "ASP": ["C", "CA", "CB", "CG", "N", "O", "OD1", "OD2"],
    "ASN": ["C", "CA", "CB", "CG", "N", "ND2", "O", "OD1"],
    "CYS": ["C", "CA", "CB", "N", "O", "SG"],
    "GLU": ["C", "CA", "CB", "CG", "CD", "N", "O", "OE1", "OE2"],
    "GLN": ["C", "CA", "CB", "CG", "CD", "N", "NE2", "O", "OE1"],
    "GLY": ["C", "CA", "N", "O"],
    "HIS": ["C", "CA", "CB", "CG", "CD2", "CE1", "N", "ND1", "NE2", "O"],
    "ILE": ["C", "CA", "CB", "CG1", "CG2", "CD1", "N", "O"],
    "LEU": ["C", "CA", "CB", "CG", "CD1", "CD2", "N", "O"],
    "LYS": ["C", "CA", "CB", "CG", "CD", "CE", "N", "NZ", "O"],
    "MET": ["C", "CA", "CB", "CG", "CE", "N", "O", "SD"],
    "PHE": ["C", "CA", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ", "N", "O"],
    "PRO": ["C", "CA", "CB", "CG", "CD", "N", "O"],
    "SER": ["C", "CA", "CB", "N", "O", "OG"],
    "THR": ["C", "CA", "CB", "CG2", "N", "O", "OG1"],
    "TRP": [
        "C", "CA", "CB", "CG", "CD1", "CD2", "CE2", "CE3", "CZ2", "CZ3", "CH2", "N", "NE1", "O",
    ],
    "TYR": ["C", "CA", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ", "N", "O", "OH"],
    "VAL": ["C", "CA", "CB", "CG1", "CG2", "N", "O"],
}
# fmt: on

# The four atoms defining each chi dihedral (chi1..chi4 as far as the residue has them).
# ARG's chi5 is always near 0 and is not modelled.
_CHI1 = ["N", "CA", "CB", "CG"]
chi_angles_atoms: dict[str, list[list[str]]] = {
    "ALA": [],
    "ARG": [_CHI1, ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "NE"], ["CG", "CD", "NE", "CZ"]],
    "ASN": [_CHI1, ["CA", "CB", "CG", "OD1"]],
    "ASP": [_CHI1, ["CA", "CB", "CG", "OD1"]],
    "CYS": [["N", "CA", "CB", "SG"]],
    "GLN": [_CHI1, ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "OE1"]],
    "GLU": [_CHI1, ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "OE1"]],
    "GLY": [],
    "HIS": [_CHI1, ["CA", "CB", "CG", "ND1"]],
    "ILE": [["N", "CA", "CB", "CG1"], ["CA", "CB", "CG1", "CD1"]],
    "LEU": [_CHI1, ["CA", "CB", "CG", "CD1"]],
    "LYS": [_CHI1, ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "CE"], ["CG", "CD", "CE", "NZ"]],
    "MET": [_CHI1, ["CA", "CB", "CG", "SD"], ["CB", "CG", "SD", "CE"]],
    "PHE": [_CHI1, ["CA", "CB", "CG", "CD1"]],
    "PRO": [_CHI1, ["CA", "CB", "CG", "CD"]],
    "SER": [["N", "CA", "CB", "OG"]],
    "THR": [["N", "CA", "CB", "OG1"]],
    "TRP": [_CHI1, ["CA", "CB", "CG", "CD1"]],
    "TYR": [_CHI1, ["CA", "CB", "CG", "CD1"]],
    "VAL": [["N", "CA", "CB", "CG1"]],
}

# [20, 4] 1.0 where the residue type (restype order) has that chi angle.
chi_angles_mask: list[list[float]] = [
    [float(i < len(chi_angles_atoms[restype_1to3[r]])) for i in range(4)] for r in restypes
]

# Atom positions in the frame of their rigid group (Angstrom). The x-axis runs along
# the group's rotation axis, and the atom defining the dihedral lies in the xy-plane
# with positive y. Format: (atom name, rigid group index, (x, y, z)).
rigid_group_atom_positions: dict[str, list[tuple[str, int, tuple[float, float, float]]]] = {
    "ALA": [
        ("N", 0, (-0.525, 1.363, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, -0.000, -0.000)),
        ("CB", 0, (-0.529, -0.774, -1.205)),
        ("O", 3, (0.627, 1.062, 0.000)),
    ],
    "ARG": [
        ("N", 0, (-0.524, 1.362, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, -0.000, -0.000)),
        ("CB", 0, (-0.524, -0.778, -1.209)),
        ("O", 3, (0.626, 1.062, 0.000)),
        ("CG", 4, (0.616, 1.390, -0.000)),
        ("CD", 5, (0.564, 1.414, 0.000)),
        ("NE", 6, (0.539, 1.357, -0.000)),
        ("NH1", 7, (0.206, 2.301, 0.000)),
        ("NH2", 7, (2.078, 0.978, -0.000)),
        ("CZ", 7, (0.758, 1.093, -0.000)),
    ],
    "ASN": [
        ("N", 0, (-0.536, 1.357, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, -0.000, -0.000)),
        ("CB", 0, (-0.531, -0.787, -1.200)),
        ("O", 3, (0.625, 1.062, 0.000)),
        ("CG", 4, (0.584, 1.399, 0.000)),
        ("ND2", 5, (0.593, -1.188, 0.001)),
        ("OD1", 5, (0.633, 1.059, 0.000)),
    ],
    "ASP": [
        ("N", 0, (-0.525, 1.362, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.527, 0.000, -0.000)),
        ("CB", 0, (-0.526, -0.778, -1.208)),
        ("O", 3, (0.626, 1.062, -0.000)),
        ("CG", 4, (0.593, 1.398, -0.000)),
        ("OD1", 5, (0.610, 1.091, 0.000)),
        ("OD2", 5, (0.592, -1.101, -0.003)),
    ],
    "CYS": [
        ("N", 0, (-0.522, 1.362, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.524, 0.000, 0.000)),
        ("CB", 0, (-0.519, -0.773, -1.212)),
        ("O", 3, (0.625, 1.062, -0.000)),
        ("SG", 4, (0.728, 1.653, 0.000)),
    ],
    "GLN": [
        ("N", 0, (-0.526, 1.361, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, 0.000, 0.000)),
        ("CB", 0, (-0.525, -0.779, -1.207)),
        ("O", 3, (0.626, 1.062, -0.000)),
        ("CG", 4, (0.615, 1.393, 0.000)),
        ("CD", 5, (0.587, 1.399, -0.000)),
        ("NE2", 6, (0.593, -1.189, -0.001)),
        ("OE1", 6, (0.634, 1.060, 0.000)),
    ],
    "GLU": [
        ("N", 0, (-0.528, 1.361, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, -0.000, -0.000)),
        ("CB", 0, (-0.526, -0.781, -1.207)),
        ("O", 3, (0.626, 1.062, 0.000)),
        ("CG", 4, (0.615, 1.392, 0.000)),
        ("CD", 5, (0.600, 1.397, 0.000)),
        ("OE1", 6, (0.607, 1.095, -0.000)),
        ("OE2", 6, (0.589, -1.104, -0.001)),
    ],
    "GLY": [
        ("N", 0, (-0.572, 1.337, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.517, -0.000, -0.000)),
        ("O", 3, (0.626, 1.062, -0.000)),
    ],
    "HIS": [
        ("N", 0, (-0.527, 1.360, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, 0.000, 0.000)),
        ("CB", 0, (-0.525, -0.778, -1.208)),
        ("O", 3, (0.625, 1.063, 0.000)),
        ("CG", 4, (0.600, 1.370, -0.000)),
        ("CD2", 5, (0.889, -1.021, 0.003)),
        ("ND1", 5, (0.744, 1.160, -0.000)),
        ("CE1", 5, (2.030, 0.851, 0.002)),
        ("NE2", 5, (2.145, -0.466, 0.004)),
    ],
    "ILE": [
        ("N", 0, (-0.493, 1.373, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.527, -0.000, -0.000)),
        ("CB", 0, (-0.536, -0.793, -1.213)),
        ("O", 3, (0.627, 1.062, -0.000)),
        ("CG1", 4, (0.534, 1.437, -0.000)),
        ("CG2", 4, (0.540, -0.785, -1.199)),
        ("CD1", 5, (0.619, 1.391, 0.000)),
    ],
    "LEU": [
        ("N", 0, (-0.520, 1.363, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, -0.000, -0.000)),
        ("CB", 0, (-0.522, -0.773, -1.214)),
        ("O", 3, (0.625, 1.063, -0.000)),
        ("CG", 4, (0.678, 1.371, 0.000)),
        ("CD1", 5, (0.530, 1.430, -0.000)),
        ("CD2", 5, (0.535, -0.774, 1.200)),
    ],
    "LYS": [
        ("N", 0, (-0.526, 1.362, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, 0.000, 0.000)),
        ("CB", 0, (-0.524, -0.778, -1.208)),
        ("O", 3, (0.626, 1.062, -0.000)),
        ("CG", 4, (0.619, 1.390, 0.000)),
        ("CD", 5, (0.559, 1.417, 0.000)),
        ("CE", 6, (0.560, 1.416, 0.000)),
        ("NZ", 7, (0.554, 1.387, 0.000)),
    ],
    "MET": [
        ("N", 0, (-0.521, 1.364, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, 0.000, 0.000)),
        ("CB", 0, (-0.523, -0.776, -1.210)),
        ("O", 3, (0.625, 1.062, -0.000)),
        ("CG", 4, (0.613, 1.391, -0.000)),
        ("SD", 5, (0.703, 1.695, 0.000)),
        ("CE", 6, (0.320, 1.786, -0.000)),
    ],
    "PHE": [
        ("N", 0, (-0.518, 1.363, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.524, 0.000, -0.000)),
        ("CB", 0, (-0.525, -0.776, -1.212)),
        ("O", 3, (0.626, 1.062, -0.000)),
        ("CG", 4, (0.607, 1.377, 0.000)),
        ("CD1", 5, (0.709, 1.195, -0.000)),
        ("CD2", 5, (0.706, -1.196, 0.000)),
        ("CE1", 5, (2.102, 1.198, -0.000)),
        ("CE2", 5, (2.098, -1.201, -0.000)),
        ("CZ", 5, (2.794, -0.003, -0.001)),
    ],
    "PRO": [
        ("N", 0, (-0.566, 1.351, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.527, -0.000, 0.000)),
        ("CB", 0, (-0.546, -0.611, -1.293)),
        ("O", 3, (0.621, 1.066, 0.000)),
        ("CG", 4, (0.382, 1.445, 0.000)),
        ("CD", 5, (0.477, 1.424, 0.000)),
    ],
    "SER": [
        ("N", 0, (-0.529, 1.360, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, -0.000, -0.000)),
        ("CB", 0, (-0.518, -0.777, -1.211)),
        ("O", 3, (0.626, 1.062, -0.000)),
        ("OG", 4, (0.503, 1.325, 0.000)),
    ],
    "THR": [
        ("N", 0, (-0.517, 1.364, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, 0.000, -0.000)),
        ("CB", 0, (-0.516, -0.793, -1.215)),
        ("O", 3, (0.626, 1.062, 0.000)),
        ("CG2", 4, (0.550, -0.718, -1.228)),
        ("OG1", 4, (0.472, 1.353, 0.000)),
    ],
    "TRP": [
        ("N", 0, (-0.521, 1.363, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, -0.000, 0.000)),
        ("CB", 0, (-0.523, -0.776, -1.212)),
        ("O", 3, (0.627, 1.062, 0.000)),
        ("CG", 4, (0.609, 1.370, -0.000)),
        ("CD1", 5, (0.824, 1.091, 0.000)),
        ("CD2", 5, (0.854, -1.148, -0.005)),
        ("CE2", 5, (2.186, -0.678, -0.007)),
        ("CE3", 5, (0.622, -2.530, -0.007)),
        ("NE1", 5, (2.140, 0.690, -0.004)),
        ("CH2", 5, (3.028, -2.890, -0.013)),
        ("CZ2", 5, (3.283, -1.543, -0.011)),
        ("CZ3", 5, (1.715, -3.389, -0.011)),
    ],
    "TYR": [
        ("N", 0, (-0.522, 1.362, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.524, -0.000, -0.000)),
        ("CB", 0, (-0.522, -0.776, -1.213)),
        ("O", 3, (0.627, 1.062, -0.000)),
        ("CG", 4, (0.607, 1.382, -0.000)),
        ("CD1", 5, (0.716, 1.195, -0.000)),
        ("CD2", 5, (0.713, -1.194, -0.001)),
        ("CE1", 5, (2.107, 1.200, -0.002)),
        ("CE2", 5, (2.104, -1.201, -0.003)),
        ("OH", 5, (4.168, -0.002, -0.005)),
        ("CZ", 5, (2.791, -0.001, -0.003)),
    ],
    "VAL": [
        ("N", 0, (-0.494, 1.373, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.527, -0.000, -0.000)),
        ("CB", 0, (-0.533, -0.795, -1.213)),
        ("O", 3, (0.627, 1.062, -0.000)),
        ("CG1", 4, (0.540, 1.429, -0.000)),
        ("CG2", 4, (0.533, -0.776, 1.203)),
    ],
}


def _frame_4x4(ex: np.ndarray, ey: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """[4, 4] homogeneous frame: x along `ex`, y in the (ex, ey) plane, right-handed."""
    x = ex / np.linalg.norm(ex)
    y = ey - np.dot(ey, x) * x
    y = y / np.linalg.norm(y)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, np.cross(x, y), origin
    return m


def _atom14_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[21, 14] atom14 -> atom37 index, [21, 37] atom37 -> atom14 index, [21, 14] mask.

    Empty slots and the unknown residue point at index 0 and are masked out.
    """
    to37 = np.zeros((21, 14), dtype=np.int64)
    to14 = np.zeros((21, 37), dtype=np.int64)
    mask14 = np.zeros((21, 14), dtype=np.float32)
    for r, letter in enumerate(restypes):
        names = restype_name_to_atom14_names[restype_1to3[letter]]
        for i, name in enumerate(names):
            if name:
                to37[r, i] = atom_order[name]
                to14[r, atom_order[name]] = i
                mask14[r, i] = 1.0
    return to37, to14, mask14


def _atom37_mask() -> np.ndarray:
    """[21, 37] 1.0 where the residue type has that heavy atom (none for unknown)."""
    mask = np.zeros((21, 37), dtype=np.float32)
    for r, letter in enumerate(restypes):
        for name in residue_atoms[restype_1to3[letter]]:
            mask[r, atom_order[name]] = 1.0
    return mask


def _rigid_group_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[21, 14] rigid group per atom14 slot, [21, 14, 3] literature positions,
    [21, 8, 4, 4] default frame of each group relative to its parent.

    The parent is the backbone for groups 0-4 and the previous chi group for 5-7.
    The unknown residue keeps all-zero frames, as in the reference tables.
    """
    group = np.zeros((21, 14), dtype=np.int64)
    positions = np.zeros((21, 14, 3), dtype=np.float32)
    frames = np.zeros((21, 8, 4, 4), dtype=np.float32)
    for r, letter in enumerate(restypes):
        resname = restype_1to3[letter]
        slots = restype_name_to_atom14_names[resname]
        pos = {}
        for name, g, xyz in rigid_group_atom_positions[resname]:
            group[r, slots.index(name)] = g
            positions[r, slots.index(name)] = xyz
            pos[name] = np.array(xyz)

        frames[r, 0] = np.eye(4)  # backbone
        frames[r, 1] = np.eye(4)  # pre-omega: no atoms, identity
        frames[r, 2] = _frame_4x4(pos["N"] - pos["CA"], np.array([1.0, 0.0, 0.0]), pos["N"])
        frames[r, 3] = _frame_4x4(pos["C"] - pos["CA"], pos["CA"] - pos["N"], pos["C"])
        chis = chi_angles_atoms[resname]
        if chis:
            a, b, c, _ = (pos[name] for name in chis[0])
            frames[r, 4] = _frame_4x4(c - b, a - b, c)
        # Each later chi axis starts at the origin of the previous chi frame.
        for k in range(1, len(chis)):
            axis_end = pos[chis[k][2]]
            frames[r, 4 + k] = _frame_4x4(axis_end, np.array([-1.0, 0.0, 0.0]), axis_end)
    return group, positions, frames


restype_atom14_to_atom37, restype_atom37_to_atom14, restype_atom14_mask = _atom14_tables()
restype_atom37_mask = _atom37_mask()
(
    restype_atom14_to_rigid_group,
    restype_atom14_rigid_group_positions,
    restype_rigid_group_default_frame,
) = _rigid_group_tables()
