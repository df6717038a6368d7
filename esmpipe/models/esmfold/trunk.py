"""The ESMFold folding trunk: relative positions, triangular blocks, recycling, structure module.

One trunk iteration adds a relative-position embedding to the pair state, runs
`num_blocks` triangular self-attention blocks, and folds the result with the
structure module. Recycling feeds the last iteration's sequence and pair states
(layer-normed) and a distogram of its predicted C-beta atoms back into the next.

Early stop of recycling (opt-in, `set_early_stop_tolerance`; off by default, so
results equal the reference's): after each recycle the trunk compares the new
C-alpha positions with the previous pass's and stops once they moved by less
than the tolerance, as ColabFold's `recycle_early_stop_tolerance`. The change is
measured on the C-alpha distance matrix (rotation- and translation-free, since
the structure module's frame is arbitrary between passes): the root mean square
over real residue pairs of the change in CA-CA distance, in Angstrom. In a batch
every protein must have converged (recycling is batch-wide); the passes run are
returned as `recycles` (recycles, i.e. passes - 1). Early stop is an inference
setting: the pass it stops at ran without gradients.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from esmpipe.models.esmfold.config import TrunkConfig
from esmpipe.models.esmfold.structure_module import StructureModule
from esmpipe.models.esmfold.tri_self_attn_block import TriangularSelfAttentionBlock

# Recycled distogram: 15 bins of C-beta distance, edges from 3.375 to 21.375 Angstrom
# (AlphaFold2 supplement, Algorithm 32), bin 0 meaning "closer than 3.375" or padding.
RECYCLE_BINS = 15
RECYCLE_MIN_BIN = 3.375
RECYCLE_MAX_BIN = 21.375


class RelativePosition(nn.Module):
    """Embedding of clipped residue-index differences; index 0 is reserved for padded pairs."""

    def __init__(self, position_bins: int, pairwise_state_dim: int):
        super().__init__()
        self.bins = position_bins
        self.embedding = nn.Embedding(2 * position_bins + 2, pairwise_state_dim)

    def forward(
        self, residue_index: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Inputs: residue_index [B, L] (long), mask [B, L]. Output: [B, L, L, C_z]."""
        if residue_index.dtype != torch.long:
            raise ValueError(f"residue_index must be torch.long, got {residue_index.dtype}")
        # [B, L, L]: entry (i, j) is index_j - index_i, shifted to 1..2*bins+1.
        diff = residue_index[:, None, :] - residue_index[:, :, None]
        diff = diff.clamp(-self.bins, self.bins) + self.bins + 1
        if mask is not None:
            pair = (mask[:, None, :] * mask[:, :, None]).bool()
            diff = diff.masked_fill(~pair, 0)
        return self.embedding(diff)


def cbeta_distogram_bins(
    backbone: torch.Tensor,
    num_bins: int = RECYCLE_BINS,
    min_bin: float = RECYCLE_MIN_BIN,
    max_bin: float = RECYCLE_MAX_BIN,
) -> torch.Tensor:
    """Bin pairwise distances of virtual C-beta atoms.

    Inputs: backbone [B, L, 3, 3], the N, CA, C coordinates.
    Output: [B, L, L] long bin indices in [0, num_bins).
    """
    # Squared edges compared with squared distances: no sqrt needed.
    edges = torch.linspace(min_bin, max_bin, num_bins - 1, device=backbone.device) ** 2
    n, ca, c = backbone.unbind(dim=-2)
    b = ca - n
    c = c - ca
    a = torch.cross(b, c, dim=-1)
    # Ideal C-beta placement from the backbone (constants of AlphaFold2's pseudo-beta).
    cb = -0.58273431 * a + 0.56802827 * b - 0.54067466 * c + ca
    # [B, L, L, 1]
    d2 = (cb[..., None, :, :] - cb[..., :, None, :]).pow(2).sum(dim=-1, keepdim=True)
    return (d2 > edges).sum(dim=-1)


def ca_change(ca: torch.Tensor, previous: torch.Tensor, mask: torch.Tensor) -> float:
    """Largest over the batch of the RMS change (Angstrom) of the CA-CA distance matrix.

    Inputs: ca, previous [B, L, 3]; mask [B, L] (1 for residues). Padded pairs are left out.
    """
    pair = (mask[:, :, None] * mask[:, None, :]).to(ca.dtype)  # [B, L, L]
    delta = torch.cdist(ca, ca) - torch.cdist(previous, previous)
    per_protein = ((delta**2 * pair).sum((1, 2)) / pair.sum((1, 2)).clamp(min=1)).sqrt()
    return float(per_protein.max())


class FoldingTrunk(nn.Module):
    """Triangular self-attention blocks with recycling, then the structure module.

    `chunk_size` (from the config, or `set_chunk_size`) runs pair updates over
    rows in chunks: activation memory then grows as L^2 instead of L^3, with
    the same result up to float rounding.
    """

    def __init__(self, config: TrunkConfig):
        super().__init__()
        self.config = config
        c_s = config.sequence_state_dim
        c_z = config.pairwise_state_dim
        sm = config.structure_module

        self.pairwise_positional_embedding = RelativePosition(config.position_bins, c_z)
        self.blocks = nn.ModuleList(
            TriangularSelfAttentionBlock(config) for _ in range(config.num_blocks)
        )
        self.recycle_bins = RECYCLE_BINS
        self.recycle_s_norm = nn.LayerNorm(c_s)
        self.recycle_z_norm = nn.LayerNorm(c_z)
        self.recycle_disto = nn.Embedding(RECYCLE_BINS, c_z)
        with torch.no_grad():
            # Bin 0 (no structure yet, or padding) adds nothing.
            self.recycle_disto.weight[0].zero_()

        self.structure_module = StructureModule(sm)
        self.trunk2sm_s = nn.Linear(c_s, sm.sequence_dim)
        self.trunk2sm_z = nn.Linear(c_z, sm.pairwise_dim)
        self.chunk_size = config.chunk_size
        self.early_stop_tolerance: float | None = None

    def set_early_stop_tolerance(self, tolerance: float | None) -> None:
        """Stop recycling once CA positions change by less than `tolerance` Angstrom
        between passes (see the module docstring); None (the default) runs every pass."""
        if tolerance is not None and not tolerance >= 0:
            raise ValueError(f"early stop tolerance must be >= 0 or None, got {tolerance}")
        self.early_stop_tolerance = tolerance

    def set_chunk_size(self, chunk_size: int | None) -> None:
        """Rows of the pair state processed at once by the pair updates (None: all rows)."""
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive or None, got {chunk_size}")
        self.chunk_size = chunk_size

    def num_iterations(self, num_recycles: int | None) -> int:
        """Trunk passes for `num_recycles`.

        NOTE: as in the reference (facebookresearch/esm and transformers), an
        explicit `num_recycles` gives `num_recycles + 1` passes, but None gives
        `config.max_recycles` passes (4 for esmfold_v1), not `max_recycles + 1`.
        Kept so that results equal the reference's for the same call. With
        `max_recycles = 0`, None gives one pass (the reference would fail).
        """
        if num_recycles is None:
            return max(1, self.config.max_recycles)
        if num_recycles < 0:
            raise ValueError(f"num_recycles must be >= 0, got {num_recycles}")
        return num_recycles + 1

    def _iteration(
        self, s: torch.Tensor, z: torch.Tensor, residx: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = z + self.pairwise_positional_embedding(residx, mask=mask)
        for block in self.blocks:
            s, z = block(s, z, mask=mask, chunk_size=self.chunk_size)
        return s, z

    def forward(
        self,
        seq_feats: torch.Tensor,
        pair_feats: torch.Tensor,
        true_aa: torch.Tensor,
        residx: torch.Tensor,
        mask: torch.Tensor,
        num_recycles: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Inputs:
            seq_feats: [B, L, C_s] initial sequence state.
            pair_feats: [B, L, L, C_z] initial pair state.
            true_aa: [B, L] residue types (AlphaFold2 order, 20 = unknown).
            residx: [B, L] long residue indices.
            mask: [B, L], 1 for residues, 0 for padding.
            num_recycles: see `num_iterations`.
        Output:
            the structure module's dict (frames, positions, ... stacked over its
            blocks as [num_blocks, B, L, ...]) plus s_s [B, L, C_s], s_z [B, L, L, C_z]
            and recycles (a long scalar): the passes run minus one.
        """
        iterations = self.num_iterations(num_recycles)
        s_0, z_0 = seq_feats, pair_feats
        recycle_s = torch.zeros_like(s_0)
        recycle_z = torch.zeros_like(z_0)
        recycle_bins = torch.zeros(z_0.shape[:-1], dtype=torch.long, device=z_0.device)

        structure: dict[str, torch.Tensor] = {}
        s_s, s_z = s_0, z_0
        tolerance = self.early_stop_tolerance
        previous_ca: torch.Tensor | None = None
        recycles = iterations - 1
        for i in range(iterations):
            # Only the last pass carries gradients, as in AlphaFold2's recycling.
            last = i == iterations - 1
            with contextlib.nullcontext() if last else torch.no_grad():
                recycle_s = self.recycle_s_norm(recycle_s.detach())
                recycle_z = self.recycle_z_norm(recycle_z.detach())
                recycle_z = recycle_z + self.recycle_disto(recycle_bins.detach())

                s_s, s_z = self._iteration(s_0 + recycle_s, z_0 + recycle_z, residx, mask)
                structure = self.structure_module(
                    {"single": self.trunk2sm_s(s_s), "pair": self.trunk2sm_z(s_z)},
                    true_aa,
                    mask.to(s_s.dtype),
                )
                recycle_s, recycle_z = s_s, s_z
                # [B, L, 3, 3]: N, CA, C of the last structure-module block.
                recycle_bins = cbeta_distogram_bins(structure["positions"][-1][:, :, :3])
            if tolerance is not None and not last:
                ca = structure["positions"][-1][:, :, 1].float()  # [B, L, 3]
                if previous_ca is not None and ca_change(ca, previous_ca, mask) < tolerance:
                    recycles = i
                    break
                previous_ca = ca

        structure["s_s"] = s_s
        structure["recycles"] = torch.tensor(recycles)
        structure["s_z"] = s_z
        return structure
