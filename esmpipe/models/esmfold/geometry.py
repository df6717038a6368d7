"""From torsion angles to atoms, and between the atom14 and atom37 layouts.

- `torsion_angles_to_frames`: Algorithm 24 lines 1-10 (the eight rigid-group frames);
- `frames_and_literature_positions_to_atom14_pos`: Algorithm 24 line 11;
- `make_atom14_masks` / `atom14_to_atom37`: index maps and existence masks per residue.

All of it runs in fp32 whatever the surrounding precision: the angle and frame inputs
are cast up and the `Rigid` arithmetic is autocast-proof (see `rigid.py`).
"""

from __future__ import annotations

import torch

from esmpipe.models.esmfold import residue_constants as rc
from esmpipe.models.esmfold.rigid import Rigid, Rotation


def torsion_angles_to_frames(
    r: Rigid,
    alpha: torch.Tensor,
    aatype: torch.Tensor,
    default_frames: torch.Tensor,
) -> Rigid:
    """Backbone frames + torsions -> global frames of the 8 rigid groups (Algorithm 24).

    Args:
        r: `[*, L]` backbone-to-global frames.
        alpha: `[*, L, 7, 2]` (sin, cos) of omega, phi, psi, chi1..chi4.
        aatype: `[*, L]` residue indices (20 = unknown).
        default_frames: `[21, 8, 4, 4]` each group's frame relative to its parent
            (`residue_constants.restype_rigid_group_default_frame`).
    Returns:
        `[*, L, 8]` frames of the groups in global coordinates.
    """
    alpha = alpha.float()
    # [*, L, 8] default frames, each relative to its parent group
    default = Rigid.from_tensor_4x4(default_frames.float()[aatype])

    # The backbone group gets a zero rotation: (sin, cos) = (0, 1).
    # [*, L, 8, 2]
    bb = alpha.new_tensor([0.0, 1.0]).expand(*alpha.shape[:-2], 1, 2)
    alpha = torch.cat([bb, alpha], dim=-2)
    sin, cos = alpha.unbind(dim=-1)

    # Rotation about the x-axis by each torsion angle; the sign convention follows the
    # original AlphaFold code, not the supplement's index layout.
    # [*, L, 8, 3, 3]
    zero, one = torch.zeros_like(sin), torch.ones_like(sin)
    rot_x = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], dim=-1)
    rot_x = rot_x.unflatten(-1, (3, 3))
    frames = default.compose(Rigid(Rotation(rot_mats=rot_x), None))

    # chi2..chi4 are defined relative to the previous chi group: chain them onto the backbone.
    chi1_to_bb = frames[..., 4]
    chi2_to_bb = chi1_to_bb.compose(frames[..., 5])
    chi3_to_bb = chi2_to_bb.compose(frames[..., 6])
    chi4_to_bb = chi3_to_bb.compose(frames[..., 7])
    # [*, L, 8]
    to_bb = Rigid.cat(
        [
            frames[..., :5],
            chi2_to_bb.unsqueeze(-1),
            chi3_to_bb.unsqueeze(-1),
            chi4_to_bb.unsqueeze(-1),
        ],
        dim=-1,
    )
    return r[..., None].compose(to_bb)


def frames_and_literature_positions_to_atom14_pos(
    r: Rigid,
    aatype: torch.Tensor,
    default_frames: torch.Tensor,
    group_idx: torch.Tensor,
    atom_mask: torch.Tensor,
    lit_positions: torch.Tensor,
) -> torch.Tensor:
    """Place each atom14 slot: its group's global frame applied to its literature position.

    Args:
        r: `[*, L, 8]` global frames of the rigid groups.
        aatype: `[*, L]` residue indices.
        default_frames: `[21, 8, 4, 4]` (only its group count is used, as a check).
        group_idx: `[21, 14]` rigid group of each atom14 slot.
        atom_mask: `[21, 14]` 1 where the slot holds an atom.
        lit_positions: `[21, 14, 3]` positions in the group frame (Angstrom).
    Returns:
        `[*, L, 14, 3]` fp32 positions, zero in empty slots.
    """
    if r.shape[-1] != default_frames.shape[-3]:
        raise ValueError(f"expected {default_frames.shape[-3]} group frames, got {r.shape[-1]}")
    # [*, L, 14]
    groups = group_idx[aatype].long()
    # Pick each atom's group frame by gathering (exact; the reference sums a one-hot).
    rot = r.get_rots().get_rot_mats()
    trans = r.get_trans()
    # [*, L, 14, 3, 3] and [*, L, 14, 3]
    rot = torch.take_along_dim(rot, groups[..., None, None], dim=-3)
    trans = torch.take_along_dim(trans, groups[..., None], dim=-2)
    atom_frames = Rigid(Rotation(rot_mats=rot), trans)

    # [*, L, 14, 3]
    positions = atom_frames.apply(lit_positions.float()[aatype])
    return positions * atom_mask.float()[aatype][..., None]


def make_atom14_masks(aatype: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-residue index maps and existence masks for the atom14 and atom37 layouts.

    Args:
        aatype: `[*, L]` residue indices (20 = unknown: no atoms).
    Returns:
        A dict with the reference's keys:
        `residx_atom14_to_atom37` `[*, L, 14]` int64, `residx_atom37_to_atom14`
        `[*, L, 37]` int64, `atom14_atom_exists` `[*, L, 14]` fp32 and
        `atom37_atom_exists` `[*, L, 37]` fp32.
    """
    device = aatype.device
    idx = aatype.long()

    def table(array, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(array, dtype=dtype, device=device)[idx]

    return {
        "residx_atom14_to_atom37": table(rc.restype_atom14_to_atom37, torch.int64),
        "residx_atom37_to_atom14": table(rc.restype_atom37_to_atom14, torch.int64),
        "atom14_atom_exists": table(rc.restype_atom14_mask, torch.float32),
        "atom37_atom_exists": table(rc.restype_atom37_mask, torch.float32),
    }


def atom14_to_atom37(atom14: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Scatter atom14 data `[*, L, 14, C]` into the atom37 layout `[*, L, 37, C]`.

    `batch` is the dict from `make_atom14_masks`; atoms a residue does not have are zero.
    """
    index = batch["residx_atom37_to_atom14"]
    # [*, L, 37, C]
    atom37 = torch.take_along_dim(atom14, index[..., None], dim=-2)
    return atom37 * batch["atom37_atom_exists"][..., None].to(atom37.dtype)
