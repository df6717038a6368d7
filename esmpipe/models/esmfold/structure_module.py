"""The structure module (AlphaFold2 supplement, Algorithm 20).

Starting from identity backbone frames ("black hole" initialisation), each of
`num_blocks` iterations updates the single representation with invariant point
attention and a transition, moves the frames by a predicted quaternion/translation
update (Algorithm 23), predicts torsion angles with a small resnet, and turns frames
and torsions into atom14 coordinates (Algorithm 24). The weights are shared across
iterations.

Module and parameter names equal the checkpoint keys under `trunk.structure_module.`;
the residue-constant buffers are non-persistent, as in the reference, so they are
never part of a checkpoint.

Precision: frames, torsion-to-frame geometry, angles and positions are fp32 even under
autocast (see `rigid.py`); the linear layers follow the caller's precision.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from esmpipe.models.esmfold import residue_constants as rc
from esmpipe.models.esmfold.config import StructureModuleConfig
from esmpipe.models.esmfold.geometry import (
    frames_and_literature_positions_to_atom14_pos,
    torsion_angles_to_frames,
)
from esmpipe.models.esmfold.ipa import InvariantPointAttention
from esmpipe.models.esmfold.rigid import Rigid, Rotation

# Buffer name -> residue table; float tables as fp32, the group index as int64.
_TABLES = {
    "default_frames": rc.restype_rigid_group_default_frame.astype(np.float32),
    "group_idx": rc.restype_atom14_to_rigid_group.astype(np.int64),
    "atom_mask": rc.restype_atom14_mask.astype(np.float32),
    "lit_positions": rc.restype_atom14_rigid_group_positions.astype(np.float32),
}
# Outputs with one entry per block, stacked in front.
_PER_BLOCK_OUTPUTS = (
    "frames",
    "sidechain_frames",
    "unnormalized_angles",
    "angles",
    "positions",
    "states",
)
_TABLE_DTYPES = {name: torch.from_numpy(array).dtype for name, array in _TABLES.items()}


class StructureModuleTransitionLayer(nn.Module):
    """One residual three-layer MLP of the transition (Algorithm 20 lines 8-9)."""

    def __init__(self, c_s: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(c_s, c_s)
        self.linear_2 = nn.Linear(c_s, c_s)
        self.linear_3 = nn.Linear(c_s, c_s)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """`[B, L, C_s]` -> `[B, L, C_s]`."""
        x = F.relu(self.linear_1(s))
        x = F.relu(self.linear_2(x))
        return s + self.linear_3(x)


class StructureModuleTransition(nn.Module):
    """The transition: residual MLP layers, dropout, layer norm (Algorithm 20 lines 8-9)."""

    def __init__(self, config: StructureModuleConfig) -> None:
        super().__init__()
        c_s = config.sequence_dim
        self.layers = nn.ModuleList(
            StructureModuleTransitionLayer(c_s) for _ in range(config.num_transition_layers)
        )
        self.dropout = nn.Dropout(config.dropout_rate)
        self.layer_norm = nn.LayerNorm(c_s)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """`[B, L, C_s]` -> `[B, L, C_s]`."""
        for layer in self.layers:
            s = layer(s)
        return self.layer_norm(self.dropout(s))


class BackboneUpdate(nn.Module):
    """Algorithm 23 lines 1-2: the 6-vector (quaternion b, c, d; translation) per residue."""

    def __init__(self, c_s: int) -> None:
        super().__init__()
        self.linear = nn.Linear(c_s, 6)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """`[B, L, C_s]` -> `[B, L, 6]`."""
        return self.linear(s)


class AngleResnetBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(c, c)
        self.linear_2 = nn.Linear(c, c)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """`[B, L, C]` -> `[B, L, C]`."""
        return a + self.linear_2(F.relu(self.linear_1(F.relu(a))))


class AngleResnet(nn.Module):
    """Torsion angle prediction (Algorithm 20 lines 11-14).

    NOTE: the ReLUs on the inputs are not in the supplement's pseudocode but are in
    the released source the weights were trained with.
    """

    def __init__(self, config: StructureModuleConfig) -> None:
        super().__init__()
        c_s, c = config.sequence_dim, config.resnet_dim
        self.n_angles = config.num_angles
        self.eps = config.epsilon
        self.linear_in = nn.Linear(c_s, c)
        self.linear_initial = nn.Linear(c_s, c)
        self.layers = nn.ModuleList(AngleResnetBlock(c) for _ in range(config.num_resnet_blocks))
        self.linear_out = nn.Linear(c, self.n_angles * 2)

    def forward(
        self, s: torch.Tensor, s_initial: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Angles from the current and the initial single representation.

        Args:
            s: `[B, L, C_s]` current single representation.
            s_initial: `[B, L, C_s]` single representation entering the module.
        Returns:
            unnormalized and unit-normalised (sin, cos) pairs, each `[B, L, 7, 2]`, fp32.
        """
        a = self.linear_in(F.relu(s)) + self.linear_initial(F.relu(s_initial))
        for layer in self.layers:
            a = layer(a)
        # [B, L, 7 * 2] -> [B, L, 7, 2]
        unnormalized = self.linear_out(F.relu(a)).float().unflatten(-1, (self.n_angles, 2))
        norm = torch.sqrt((unnormalized**2).sum(dim=-1, keepdim=True).clamp(min=self.eps))
        return unnormalized, unnormalized / norm


class StructureModule(nn.Module):
    """Algorithm 20: single + pair representation -> frames, torsions and atom14 positions."""

    def __init__(self, config: StructureModuleConfig) -> None:
        super().__init__()
        self.config = config
        c_s, c_z = config.sequence_dim, config.pairwise_dim

        self.layer_norm_s = nn.LayerNorm(c_s)
        self.layer_norm_z = nn.LayerNorm(c_z)
        self.linear_in = nn.Linear(c_s, c_s)
        self.ipa = InvariantPointAttention(config)
        self.ipa_dropout = nn.Dropout(config.dropout_rate)
        self.layer_norm_ipa = nn.LayerNorm(c_s)
        self.transition = StructureModuleTransition(config)
        self.bb_update = BackboneUpdate(c_s)
        self.angle_resnet = AngleResnet(config)

        # Residue geometry tables, never in the checkpoint (persistent=False), with the
        # names of the reference's lazily created buffers.
        for name, array in _TABLES.items():
            self.register_buffer(name, torch.as_tensor(array), persistent=False)

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """(Re)build the residue tables exactly, in fp32/int64, on the buffers' device.

        Needed after building on the meta device: buffers that are not in the
        checkpoint get empty storage and must be recomputed, not loaded.
        """
        for name, array in _TABLES.items():
            device = getattr(self, name).device
            setattr(self, name, torch.as_tensor(array).to(device))

    def _apply(
        self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
    ) -> StructureModule:
        # NOTE: `model.half()` / `.to(bfloat16)` would round the geometry tables (the
        # reference builds them in the model's dtype). Rebuild them exactly in fp32 on
        # the new device instead, so that geometry stays fp32 whatever the weights are.
        super()._apply(fn, recurse)
        if any(getattr(self, n).dtype != dtype for n, dtype in _TABLE_DTYPES.items()):
            self.reset_buffers()
        return self

    def forward(
        self,
        evoformer_output_dict: dict[str, torch.Tensor],
        aatype: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run all iterations of the structure module.

        Args:
            evoformer_output_dict: `{"single": s [B, L, C_s], "pair": z [B, L, L, C_z]}`.
            aatype: `[B, L]` residue indices (`ARNDCQEGHILKMFPSTWYV`, 20 = unknown).
            mask: `[B, L]` 1 for residues, 0 for padding; all ones when None.
        Returns:
            A dict with one entry per iteration stacked in front (n = num_blocks):
            `frames` `[n, B, L, 7]` (quaternion, translation in Angstrom),
            `sidechain_frames` `[n, B, L, 8, 4, 4]`, `unnormalized_angles` and `angles`
            `[n, B, L, 7, 2]`, `positions` `[n, B, L, 14, 3]` (Angstrom), `states`
            `[n, B, L, C_s]`; and `single` `[B, L, C_s]`, the final single representation.
            Frames, angles and positions are fp32.
        """
        s = evoformer_output_dict["single"]
        z = evoformer_output_dict["pair"]
        assert s.dim() == 3 and z.dim() == 4, "expected s [B, L, C_s] and z [B, L, L, C_z]"
        if mask is None:
            mask = s.new_ones(s.shape[:-1])

        s = self.layer_norm_s(s)
        z = self.layer_norm_z(z)
        s_initial = s
        s = self.linear_in(s)

        scale = self.config.trans_scale_factor
        # [B, L] identity frames. Translations stay in the internal unit (nm); times
        # trans_scale_factor they are Angstrom, the unit of every output.
        rigids = Rigid.identity(s.shape[:-1], device=s.device, fmt="quat")
        outputs: dict[str, list[torch.Tensor]] = {k: [] for k in _PER_BLOCK_OUTPUTS}
        # NOTE: the blocks share the IPA weights and the pair, so its pair bias is
        # computed once here (the reference recomputes it in every block).
        pair_bias = self.ipa.pair_bias(z, mask)
        for _ in range(self.config.num_blocks):
            s = s + self.ipa(s, z, rigids, mask, pair_bias=pair_bias)
            s = self.layer_norm_ipa(self.ipa_dropout(s))
            s = self.transition(s)

            rigids = rigids.compose_q_update_vec(self.bb_update(s))
            # Side chains are built from rotation matrices, as in AlphaFold.
            # [B, L]
            backbone_to_global = Rigid(
                Rotation(rot_mats=rigids.get_rots().get_rot_mats()), rigids.get_trans() * scale
            )
            # [B, L, 7, 2]
            unnormalized_angles, angles = self.angle_resnet(s, s_initial)
            # [B, L, 8]
            all_frames_to_global = torsion_angles_to_frames(
                backbone_to_global, angles, aatype, self.default_frames
            )
            # [B, L, 14, 3]
            positions = frames_and_literature_positions_to_atom14_pos(
                all_frames_to_global,
                aatype,
                self.default_frames,
                self.group_idx,
                self.atom_mask,
                self.lit_positions,
            )

            outputs["frames"].append(rigids.scale_translation(scale).to_tensor_7())
            outputs["sidechain_frames"].append(all_frames_to_global.to_tensor_4x4())
            outputs["unnormalized_angles"].append(unnormalized_angles)
            outputs["angles"].append(angles)
            outputs["positions"].append(positions)
            outputs["states"].append(s)

            # Rotations pass no gradient from one iteration to the next (Algorithm 20 line 20).
            rigids = rigids.stop_rot_gradient()

        result = {k: torch.stack(v) for k, v in outputs.items()}
        result["single"] = s
        return result
