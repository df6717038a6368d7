"""Geometry against the reference port: residue tables, Rigid/Rotation, torsions to atoms.

`transformers` is the test oracle (its openfold_utils); our code never imports it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.models.esm.openfold_utils import data_transforms as ref_dt
from transformers.models.esm.openfold_utils import feats as ref_feats
from transformers.models.esm.openfold_utils import residue_constants as ref_rc
from transformers.models.esm.openfold_utils import rigid_utils as ref_ru

from esmpipe.models.esmfold import geometry
from esmpipe.models.esmfold import residue_constants as rc
from esmpipe.models.esmfold.rigid import Rigid, Rotation

ATOL = 1e-5
REPO_ROOT = Path(__file__).resolve().parents[3]


def close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)


def random_quats(*shape: int) -> torch.Tensor:
    q = torch.randn(*shape, 4)
    return q / q.norm(dim=-1, keepdim=True)


def random_rigids(*shape: int) -> tuple[Rigid, ref_ru.Rigid]:
    """The same random transforms as ours and as the reference's (matrix format)."""
    rot = ref_ru.quat_to_rot(random_quats(*shape))
    trans = torch.randn(*shape, 3) * 5
    return (
        Rigid(Rotation(rot_mats=rot), trans),
        ref_ru.Rigid(ref_ru.Rotation(rot_mats=rot), trans),
    )


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- residue constants -------------------------------------------------------------


def test_residue_constants_import_without_torch() -> None:
    code = (
        "import sys; import esmpipe.models.esmfold.residue_constants as rc; "
        "assert 'torch' not in sys.modules, 'residue_constants imported torch'; "
        "assert rc.restype_rigid_group_default_frame.shape == (21, 8, 4, 4)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


@pytest.mark.parametrize(
    "name",
    [
        "restypes",
        "restypes_with_x",
        "restype_order",
        "restype_order_with_x",
        "restype_num",
        "unk_restype_index",
        "restype_1to3",
        "restype_3to1",
        "resnames",
        "atom_types",
        "atom_order",
        "atom_type_num",
        "restype_name_to_atom14_names",
        "residue_atoms",
        "chi_angles_atoms",
        "chi_angles_mask",
        "rigid_group_atom_positions",
    ],
)
def test_residue_tables_equal_reference(name: str) -> None:
    assert getattr(rc, name) == getattr(ref_rc, name)


@pytest.mark.parametrize(
    "name",
    [
        "restype_atom14_to_rigid_group",
        "restype_atom14_mask",
        "restype_atom37_mask",
        "restype_atom14_rigid_group_positions",
        "restype_rigid_group_default_frame",
    ],
)
def test_residue_arrays_equal_reference(name: str) -> None:
    ours, ref = getattr(rc, name), getattr(ref_rc, name)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_restype_order_is_the_folding_order() -> None:
    assert "".join(rc.restypes) == "ARNDCQEGHILKMFPSTWYV"
    assert rc.restypes_with_x[20] == "X" and rc.unk_restype_index == 20
    assert len(rc.atom_types) == 37 and rc.atom_order["OXT"] == 36


# --- Rotation / Rigid --------------------------------------------------------------


def test_quaternion_conversions_match_reference() -> None:
    q = random_quats(5, 3)
    close(Rotation(quats=q).get_rot_mats(), ref_ru.quat_to_rot(q))
    rot = ref_ru.quat_to_rot(q)
    ours = Rotation(rot_mats=rot).get_quats()
    ref = ref_ru.rot_to_quat(rot)
    # A quaternion and its negation are the same rotation; eigh fixes no sign.
    sign = torch.sign((ours * ref).sum(-1, keepdim=True))
    close(ours * sign, ref)
    close(ours * sign, q * torch.sign((q * ref).sum(-1, keepdim=True)))


def test_compose_q_update_vec_matches_reference() -> None:
    q = random_quats(4, 6)
    t = torch.randn(4, 6, 3)
    update = torch.randn(4, 6, 6) * 0.3
    ours = Rigid(Rotation(quats=q), t).compose_q_update_vec(update)
    ref = ref_ru.Rigid(ref_ru.Rotation(quats=q), t).compose_q_update_vec(update)
    close(ours.to_tensor_7(), ref.to_tensor_7())
    close(ours.get_rots().get_rot_mats(), ref.get_rots().get_rot_mats())


def test_rigid_ops_match_reference() -> None:
    (a, ra), (b, rb) = random_rigids(3, 5), random_rigids(3, 5)
    pts = torch.randn(3, 5, 3) * 4
    close(a.apply(pts), ra.apply(pts))
    close(a.invert_apply(pts), ra.invert_apply(pts))
    close(a.compose(b).to_tensor_4x4(), ra.compose(rb).to_tensor_4x4())
    close(a.invert().to_tensor_4x4(), ra.invert().to_tensor_4x4())
    close(a.invert().apply(a.apply(pts)), pts)
    close(a.scale_translation(10.0).get_trans(), ra.scale_translation(10.0).get_trans())

    m = torch.randn(3, 5, 4, 4)
    close(Rigid.from_tensor_4x4(m).to_tensor_4x4(), ref_ru.Rigid.from_tensor_4x4(m).to_tensor_4x4())

    q = random_quats(3, 5)
    t7 = torch.cat([q, torch.randn(3, 5, 3)], dim=-1)
    close(Rigid.from_tensor_7(t7).to_tensor_7(), ref_ru.Rigid.from_tensor_7(t7).to_tensor_7())

    p1, p2, p3 = torch.randn(3, 7, 3).unbind(0)
    close(
        Rigid.from_3_points(p1, p2, p3).to_tensor_4x4(),
        ref_ru.Rigid.from_3_points(p1, p2, p3).to_tensor_4x4(),
    )


def test_rigid_behaves_like_a_tensor() -> None:
    (a, ra), (b, rb) = random_rigids(2, 4, 8), random_rigids(2, 4, 8)
    assert a.shape == (2, 4, 8)
    for index in [(0,), (..., 3), (slice(None), None, 1), (..., None)]:
        close(a[index].to_tensor_4x4(), ra[index].to_tensor_4x4())
    for dim in [0, 1, -1]:
        close(a.unsqueeze(dim).to_tensor_4x4(), ra.unsqueeze(dim).to_tensor_4x4())
        ref_cat = ref_ru.Rigid.cat([ra, rb], dim)
        close(Rigid.cat([a, b], dim).to_tensor_4x4(), ref_cat.to_tensor_4x4())
    one_hot = torch.nn.functional.one_hot(torch.randint(0, 8, (2, 4)), 8).float()
    ours = (a * one_hot).map_tensor_fn(lambda x: x.sum(dim=-1))
    ref = (ra * one_hot).map_tensor_fn(lambda x: x.sum(dim=-1))
    close(ours.to_tensor_4x4(), ref.to_tensor_4x4())
    picked = a[torch.arange(2)[:, None], torch.arange(4), one_hot.argmax(-1)]
    close(ours.to_tensor_4x4(), picked.to_tensor_4x4())


def test_rigid_is_fp32_from_low_precision_inputs() -> None:
    q = random_quats(3).to(torch.bfloat16)
    r = Rigid(Rotation(quats=q), torch.randn(3, 3, dtype=torch.float16))
    assert r.get_rots().dtype == torch.float32 and r.dtype == torch.float32
    pts = torch.randn(3, 3, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert r.apply(pts).dtype == torch.float32
        assert r.invert_apply(pts).dtype == torch.float32
        assert r.compose(r).to_tensor_4x4().dtype == torch.float32
        update = torch.randn(3, 6, dtype=torch.bfloat16)
        assert r.compose_q_update_vec(update).dtype == torch.float32


def test_stop_rot_gradient_detaches_rotations_only() -> None:
    q = random_quats(4).requires_grad_(True)
    t = torch.randn(4, 3, requires_grad=True)
    r = Rigid(Rotation(quats=q), t).stop_rot_gradient()
    assert not r.get_rots().requires_grad
    r.apply(torch.randn(4, 3)).sum().backward()
    assert q.grad is None and t.grad is not None


# --- torsions, frames, atoms -------------------------------------------------------


def random_aatype(*shape: int) -> torch.Tensor:
    aatype = torch.randint(0, 21, shape)
    aatype.view(-1)[0] = 20  # always include the unknown residue
    return aatype


def frames_and_atom14(
    r: Rigid, alpha: torch.Tensor, aatype: torch.Tensor
) -> tuple[Rigid, torch.Tensor]:
    """Our rigid-group frames and atom14 positions from backbone frames and torsions."""
    frames = torch.tensor(rc.restype_rigid_group_default_frame)
    all_frames = geometry.torsion_angles_to_frames(r, alpha, aatype, frames)
    pos = geometry.frames_and_literature_positions_to_atom14_pos(
        all_frames,
        aatype,
        frames,
        torch.tensor(rc.restype_atom14_to_rigid_group),
        torch.tensor(rc.restype_atom14_mask),
        torch.tensor(rc.restype_atom14_rigid_group_positions),
    )
    return all_frames, pos


def test_torsion_angles_to_frames_matches_reference() -> None:
    aatype = random_aatype(2, 11)
    ours_r, ref_r = random_rigids(2, 11)
    alpha = torch.nn.functional.normalize(torch.randn(2, 11, 7, 2), dim=-1)
    frames = torch.tensor(ref_rc.restype_rigid_group_default_frame)
    ours = geometry.torsion_angles_to_frames(ours_r, alpha, aatype, frames)
    ref = ref_feats.torsion_angles_to_frames(ref_r, alpha, aatype, frames)
    assert ours.shape == (2, 11, 8)
    close(ours.to_tensor_4x4(), ref.to_tensor_4x4())


def test_atom14_positions_match_reference() -> None:
    aatype = random_aatype(2, 11)
    ours_r, ref_r = random_rigids(2, 11, 8)
    tables = [
        torch.tensor(ref_rc.restype_rigid_group_default_frame),
        torch.tensor(ref_rc.restype_atom14_to_rigid_group),
        torch.tensor(ref_rc.restype_atom14_mask),
        torch.tensor(ref_rc.restype_atom14_rigid_group_positions),
    ]
    ours = geometry.frames_and_literature_positions_to_atom14_pos(ours_r, aatype, *tables)
    ref = ref_feats.frames_and_literature_positions_to_atom14_pos(ref_r, aatype, *tables)
    assert ours.shape == (2, 11, 14, 3) and ours.dtype == torch.float32
    close(ours, ref)
    assert (ours[aatype == 20] == 0).all()


def test_backbone_atoms_sit_at_literature_positions() -> None:
    # Identity backbone frames: N, CA, C are exactly the group-0 literature positions.
    aatype = torch.arange(20)[None]
    r = Rigid.identity((1, 20), fmt="rot_mat")
    alpha = torch.nn.functional.normalize(torch.randn(1, 20, 7, 2), dim=-1)
    all_frames, pos = frames_and_atom14(r, alpha, aatype)
    lit = torch.tensor(rc.restype_atom14_rigid_group_positions)[:20, :3]
    close(pos[0, :, :3], lit)
    # The CA-C bond length does not depend on torsions.
    ca_c = (pos[0, :, 2] - pos[0, :, 1]).norm(dim=-1)
    assert ((ca_c - 1.525).abs() < 0.01).all()


def test_atom14_masks_and_atom37_match_reference() -> None:
    aatype = random_aatype(3, 13)
    ours = geometry.make_atom14_masks(aatype)
    ref = ref_dt.make_atom14_masks({"aatype": aatype})
    assert set(ours) == {
        "residx_atom14_to_atom37",
        "residx_atom37_to_atom14",
        "atom14_atom_exists",
        "atom37_atom_exists",
    }
    for key, value in ours.items():
        assert value.shape == ref[key].shape, key
        assert value.dtype == ref[key].dtype, key
        torch.testing.assert_close(value, ref[key], rtol=0, atol=0)

    atom14 = torch.randn(3, 13, 14, 3)
    close(geometry.atom14_to_atom37(atom14, ours), ref_feats.atom14_to_atom37(atom14, ref))
    atom37 = geometry.atom14_to_atom37(atom14, ours)
    # atom14 -> atom37 -> atom14 round trip for the atoms that exist
    back = torch.take_along_dim(atom37, ours["residx_atom14_to_atom37"][..., None], dim=-2)
    exists = ours["atom14_atom_exists"].bool()
    close(back[exists], atom14[exists])


def test_geometry_is_fp32_under_autocast() -> None:
    aatype = random_aatype(1, 6)
    r, _ = random_rigids(1, 6)
    alpha = torch.randn(1, 6, 7, 2, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        all_frames, pos = frames_and_atom14(r, alpha, aatype)
    assert all_frames.to_tensor_4x4().dtype == torch.float32
    assert pos.dtype == torch.float32
