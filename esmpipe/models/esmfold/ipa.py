"""Invariant point attention (AlphaFold2 supplement, Algorithm 22).

Attention over residues whose logits combine three terms, each weighted by sqrt(1/3):
scalar query-key products, a pair bias from `z`, and distances between query and key
points placed in each residue's current frame. The output gathers scalar values,
value points (brought back into the query's local frame, plus their norms) and the
pair representation, and projects them back to `c_s`.

Parameter names equal the checkpoint keys under `trunk.structure_module.ipa.`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from esmpipe.models.esmfold.config import StructureModuleConfig
from esmpipe.models.esmfold.rigid import Rigid


class InvariantPointAttention(nn.Module):
    """Algorithm 22.

    NOTE: as in the released AlphaFold/openfold source (not the supplement), the input
    projections carry biases.
    """

    def __init__(self, config: StructureModuleConfig) -> None:
        super().__init__()
        c_s, c_z = config.sequence_dim, config.pairwise_dim
        self.c = config.ipa_dim
        self.n_heads = config.num_heads_ipa
        self.n_qk_points = config.num_qk_points
        self.n_v_points = config.num_v_points
        self.inf = config.inf
        self.eps = config.epsilon

        h, c = self.n_heads, self.c
        self.linear_q = nn.Linear(c_s, h * c)
        self.linear_kv = nn.Linear(c_s, 2 * h * c)
        self.linear_q_points = nn.Linear(c_s, h * self.n_qk_points * 3)
        self.linear_kv_points = nn.Linear(c_s, h * (self.n_qk_points + self.n_v_points) * 3)
        self.linear_b = nn.Linear(c_z, h)
        # gamma^h of Algorithm 22 line 7, through softplus; zero-initialised like the reference
        self.head_weights = nn.Parameter(torch.zeros(h))
        self.linear_out = nn.Linear(h * (c_z + c + self.n_v_points * 4), c_s)

    def _points(self, x: torch.Tensor, r: Rigid, n_points: int) -> torch.Tensor:
        """Project to `n_points` points per head and place them in the global frame.

        The projection's output is laid out as [all x | all y | all z], which is the
        layout the checkpoint weights were trained with.
        """
        # [B, L, 3, H * P] -> [B, L, H * P, 3]
        pts = x.unflatten(-1, (3, -1)).transpose(-1, -2)
        pts = r[..., None].apply(pts)
        # [B, L, H, P, 3]
        return pts.unflatten(-2, (self.n_heads, n_points))

    def pair_bias(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The logits' terms that depend only on the pair and the mask, `[B, H, L, L]` fp32.

        w_L * linear_b(z) plus the padding mask. The structure module's blocks
        share these weights and the pair, so it computes this once for all of them.
        """
        # [B, L, L, H] in the caller's precision, like the other projections.
        b = self.linear_b(z)
        with torch.autocast(z.device.type, enabled=False):
            # [B, 1, L, L]
            square_mask = (mask[:, :, None] * mask[:, None, :]).float()[:, None]
            bias = math.sqrt(1.0 / 3) * b.float().permute(0, 3, 1, 2)
            return bias + self.inf * (square_mask - 1.0)

    def forward(
        self,
        s: torch.Tensor,
        z: torch.Tensor,
        r: Rigid,
        mask: torch.Tensor,
        pair_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Update for the single representation.

        Args:
            s: `[B, L, C_s]` single representation.
            z: `[B, L, L, C_z]` pair representation.
            r: `[B, L]` current backbone frames (translations in nm-scaled units).
            mask: `[B, L]` 1 for residues, 0 for padding (padded keys get no weight).
            pair_bias: `self.pair_bias(z, mask)` when the caller has it already.
        Returns:
            `[B, L, C_s]`.
        """
        h, c = self.n_heads, self.c
        # [B, L, H, C]
        q = self.linear_q(s).unflatten(-1, (h, c))
        # [B, L, H, 2C] -> 2 x [B, L, H, C]
        k, v = self.linear_kv(s).unflatten(-1, (h, 2 * c)).split(c, dim=-1)

        # [B, L, H, P_q, 3]
        q_pts = self._points(self.linear_q_points(s), r, self.n_qk_points)
        # [B, L, H, P_q + P_v, 3]
        kv_pts = self._points(self.linear_kv_points(s), r, self.n_qk_points + self.n_v_points)
        k_pts, v_pts = kv_pts.split([self.n_qk_points, self.n_v_points], dim=-2)

        if pair_bias is None:
            pair_bias = self.pair_bias(z, mask)

        # NOTE: the logits are formed in fp32 whatever the autocast dtype (the reference
        # does this only for fp16): the point distances are fp32 geometry already, and
        # the -inf mask (1e5) does not fit in fp16.
        with torch.autocast(s.device.type, enabled=False):
            # Algorithm 22 line 7: w_L * (q.k / sqrt(c) + b - gamma^h * w_C / 2 *
            # sum_p |q_p - k_p|^2), with w_L = sqrt(1/3). NOTE: the point term is
            # expanded, |q_p - k_p|^2 = |q_p|^2 - 2 q_p.k_p + |k_p|^2, so that the
            # scalar and the point products are one matmul over C + 3 * P_q features
            # instead of [B, L, L, H, P_q] differences (two thirds of the structure
            # module's time); the |q_p|^2 term is the same for every key of a row, and
            # softmax over the keys does not see it, so it is left out.
            w_c = math.sqrt(2.0 / (9 * self.n_qk_points))
            w_l = math.sqrt(1.0 / 3)
            # [H]: the weight of sum_p |q_p - k_p|^2 in the logits.
            coef = 0.5 * w_l * w_c * F.softplus(self.head_weights.float())
            # [B, L, H, 3 * P_q]
            q_flat, k_flat = q_pts.float().flatten(-2), k_pts.float().flatten(-2)
            # [B, L, H, C + 3 * P_q]
            q_scalar = q.float() * math.sqrt(1.0 / (3 * c))
            q_feats = torch.cat([q_scalar, 2 * coef[:, None] * q_flat], -1)
            k_feats = torch.cat([k.float(), k_flat], -1)
            # [B, H, L, L]
            a = torch.matmul(q_feats.transpose(1, 2), k_feats.permute(0, 2, 3, 1))
            a += pair_bias
            # [B, H, 1, L]: -coef * |k_p|^2, the keys' part of the distance.
            a -= (coef * (k_flat * k_flat).sum(-1)).transpose(1, 2)[:, :, None, :]
            a = torch.softmax(a, dim=-1)

            # Value points: weighted in the global frame, then back to each query's frame.
            # [B, H, L, L] x [B, H, L, P_v * 3] -> [B, L, H, P_v, 3]
            o_pt = torch.matmul(a, v_pts.permute(0, 2, 1, 3, 4).flatten(-2))
            o_pt = o_pt.unflatten(-1, (self.n_v_points, 3)).transpose(1, 2)
            o_pt = r[..., None, None].invert_apply(o_pt)
            # [B, L, H * P_v]
            o_pt_norm = torch.sqrt((o_pt**2).sum(dim=-1) + self.eps).flatten(-2)
            # [B, L, H * P_v, 3]
            o_pt = o_pt.flatten(-3, -2)

        a = a.to(v.dtype)
        # [B, H, L, L] x [B, H, L, C] -> [B, L, H * C]
        o = torch.matmul(a, v.transpose(-2, -3)).transpose(-2, -3).flatten(-2)
        # [B, L, H, L] x [B, L, L, C_z] -> [B, L, H * C_z]
        o_pair = torch.matmul(a.transpose(-2, -3), z.to(a.dtype)).flatten(-2)

        feats = [o, *o_pt.unbind(dim=-1), o_pt_norm, o_pair]
        return self.linear_out(torch.cat([f.to(z.dtype) for f in feats], dim=-1))
